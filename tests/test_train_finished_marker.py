"""<workdir>/DONE: written when a run has trained every step, absent while it is unfinished
(stopped by SIGTERM, or started again with more steps). What `sbsd_jax.cloud watch` stops on."""

from __future__ import annotations

import json
import pathlib
import random

import pytest

from sbsd_jax.experiments.config_files import load_config_file
from sbsd_jax.runtime.preemption import PreemptionWatcher
from sbsd_jax.train import loop

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _tiny_run_config(data_dir: pathlib.Path, steps: int):
    config = load_config_file(CONFIGS / "base.py")
    config.update(
        dataset="jsonl",
        data_source="jsonl",
        data_dir=str(data_dir),
        label_type="gt",
        method="standard",
        model="t5_tiny",
        max_input_length=16,
        max_target_length=8,
        batch_size=4,
        num_train_steps=steps,
        log_every=1,
        eval_every=1000,
        checkpoint_every=1000,
        eval_batch_size=4,
        eval_max_decode_length=4,
        eval_splits=(),  # no decoding: this is about the end of training
    )
    config.model_overrides.vocab_size = 384
    config.mesh.update(data=1, fsdp=1, tensor=1)
    return config


@pytest.fixture
def data_dir(tmp_path) -> pathlib.Path:
    folder = tmp_path / "data"
    folder.mkdir()
    rng = random.Random(0)
    for split, count in (("train", 16), ("valid", 4), ("test", 4)):
        rows = []
        for index in range(count):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            rows.append({"id": f"{split}-{index}", "input": f"{a}+{b}", "label": str(a + b)})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


class _SigtermAt(PreemptionWatcher):
    """A watcher that receives SIGTERM once step `at` has been reached."""

    at: int | None = None

    def should_stop(self, step: int) -> bool:
        if self.at is not None and step >= self.at:
            self.request_stop()
        return super().should_stop(step)


@pytest.mark.slow
def test_done_is_written_at_the_end_and_only_there(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "PreemptionWatcher", _SigtermAt)
    workdir = tmp_path / "run"
    marker = workdir / loop.FINISHED_MARKER
    workdir.mkdir()
    # Left by an earlier, shorter run in this workdir: this one has more steps to go.
    marker.write_text('{"final_step": 1, "num_train_steps": 1}\n')

    _SigtermAt.at = 2  # preempted at step 2 of 4: not finished
    summary = loop.train_and_evaluate(_tiny_run_config(data_dir, 4), str(workdir))
    assert summary.preempted and summary.final_step == 2
    assert not marker.exists()

    _SigtermAt.at = None  # resumed to the end
    summary = loop.train_and_evaluate(_tiny_run_config(data_dir, 4), str(workdir))
    assert not summary.preempted and summary.final_step == 4
    assert json.loads(marker.read_text()) == {
        "final_step": 4,
        "num_train_steps": 4,
        "best_step": None,
        "exported_to": None,
        "exported_step": None,
    }
