"""Interrupted runs end where an uninterrupted one ends: resume in a new process, SIGKILL, SIGTERM.

Every run is `python -m sbsd_jax.main` in a subprocess on a tiny T5 and fixture data (8 fake CPU
devices, fsdp over all of them). The reference trains NUM_STEPS steps without interruption; the
others are stopped and resumed, and their final train state (params, optimizer state, step)
must be bitwise equal to the reference's.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess

import numpy as np
import pytest
from tiny_run import REPO, main_command, run_env, write_tiny_run

from sbsd_jax.runtime.preemption import PreemptionWatcher
from sbsd_jax.train.checkpointing import read_state_arrays

NUM_STEPS = 24
CHECKPOINT_EVERY = 4
# Generous: under a loaded CI host (or pytest-xdist) a run takes several times its usual time.
RUN_TIMEOUT_S = 600


class Runs:
    """Starts `python -m sbsd_jax.main` on the fixture config (the session's compile cache)."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.config = write_tiny_run(
            root,
            {
                "model_overrides.dropout_rate": 0.1,  # dropout keys must survive a resume too
                "num_train_steps": NUM_STEPS,
                "log_every": 1,
                "checkpoint_every": CHECKPOINT_EVERY,
            },
        )
        self.env = run_env()

    def command(self, workdir: pathlib.Path, *overrides: str) -> list[str]:
        return main_command(self.config, workdir, *overrides)

    def run(self, workdir: pathlib.Path, *overrides: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(workdir, *overrides),
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    def start_and_signal(
        self, workdir: pathlib.Path, signum: int, at_step: int, *overrides: str
    ) -> tuple[int, str]:
        """Starts a full run and sends `signum` once its progress line for `at_step` appears.

        Returns (exit status, stdout)."""
        process = subprocess.Popen(
            self.command(workdir, *overrides),
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            for line in process.stderr:
                if line.startswith(f"step {at_step}/"):
                    process.send_signal(signum)
                    break
            stdout, _ = process.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        return process.returncode, stdout


def _committed_steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _assert_states_bitwise_equal(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> None:
    assert sorted(left) == sorted(right)
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        np.testing.assert_array_equal(left[name], right[name], err_msg=name, strict=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("resume"))


@pytest.fixture(scope="module")
def reference_state(runs: Runs) -> dict[str, np.ndarray]:
    """The final state of an uninterrupted NUM_STEPS run."""
    workdir = runs.root / "uninterrupted"
    runs.run(workdir)
    return read_state_arrays(workdir / "checkpoints" / str(NUM_STEPS))


@pytest.mark.slow
def test_restoring_in_a_new_process_continues_bit_for_bit(runs, reference_state):
    workdir = runs.root / "two_processes"
    runs.run(workdir, "--config.num_train_steps=10")  # saves at 4, 8 and (last step) 10
    assert _committed_steps(workdir)[-1] == 10
    result = runs.run(workdir)
    assert "Resuming from step 10" in result.stdout
    final = read_state_arrays(workdir / "checkpoints" / str(NUM_STEPS))
    assert int(final["step"]) == NUM_STEPS
    _assert_states_bitwise_equal(final, reference_state)


@pytest.mark.slow
def test_after_sigkill_only_steps_since_the_last_checkpoint_are_lost(runs, reference_state):
    workdir = runs.root / "killed"
    status, _ = runs.start_and_signal(workdir, signal.SIGKILL, at_step=13)
    assert status == -signal.SIGKILL
    last = _committed_steps(workdir)[-1]
    # Killed after step 13: the checkpoint of step 8 is committed (Orbax finishes a save
    # before it starts the next, at 12); the run was stopped well before its end.
    assert 8 <= last < NUM_STEPS and last % CHECKPOINT_EVERY == 0
    # What a save interrupted by the kill leaves behind is never taken for a checkpoint.
    (workdir / "checkpoints" / f"{NUM_STEPS - 1}.orbax-checkpoint-tmp-1234" / "state").mkdir(
        parents=True
    )
    result = runs.run(workdir)
    assert f"Resuming from step {last}" in result.stdout
    final = read_state_arrays(workdir / "checkpoints" / str(NUM_STEPS))
    _assert_states_bitwise_equal(final, reference_state)
    # The steps after the checkpoint ran twice but are logged once.
    logged = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]
    assert logged == list(range(1, NUM_STEPS + 1))


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(runs):
    workdir = runs.root / "preempted"
    status, stdout = runs.start_and_signal(workdir, signal.SIGTERM, at_step=6)
    assert status == 0
    assert "Stopped by SIGTERM at step" in stdout
    stopped_at = int(stdout.split("Stopped by SIGTERM at step ")[1].split("/")[0])
    assert 6 <= stopped_at < NUM_STEPS
    assert _committed_steps(workdir)[-1] == stopped_at
    metadata = json.loads(
        (workdir / "checkpoints" / str(stopped_at) / "data" / "metadata").read_text()
    )
    assert metadata["epoch"] * 40 + metadata["position"] == stopped_at * 8  # examples consumed


EVALUATING = (
    "--config.eval_splits=('valid', 'test')",
    "--config.eval_every=6",
    "--config.decode_rationales=True",
)


@pytest.mark.slow
def test_sigterm_during_evaluation_checkpoints_at_once_and_the_resume_evaluates_first(
    runs, reference_state
):
    workdir = runs.root / "preempted_in_evaluation"
    # The progress line of step 6 is printed just before step 6's evaluation starts.
    status, stdout = runs.start_and_signal(workdir, signal.SIGTERM, 6, *EVALUATING)
    assert status == 0
    assert "Stopped by SIGTERM at step 6/" in stdout
    assert _committed_steps(workdir)[-1] == 6
    metadata = json.loads((workdir / "checkpoints" / "6" / "_CHECKPOINT_METADATA").read_text())
    assert metadata["custom_metadata"]["evaluation_pending"] is True  # besides the checksums
    assert not any("valid_accuracy" in line for line in (workdir / "metrics.jsonl").open())

    runs.run(workdir, *EVALUATING)
    evaluations = [
        row["step"]
        for row in map(json.loads, (workdir / "metrics.jsonl").open())
        if "valid_accuracy" in row
    ]
    assert evaluations == [6, 12, 18, 24]
    assert (workdir / "predictions" / "test_step_6.jsonl").is_file()
    final = read_state_arrays(workdir / "checkpoints" / str(NUM_STEPS))
    _assert_states_bitwise_equal(final, reference_state)  # decoding never touches training


@pytest.mark.slow
def test_resuming_with_another_model_shape_is_refused_naming_arrays_and_fields(runs, tmp_path):
    workdir = tmp_path / "finished"
    shutil.copytree(runs.root / "uninterrupted", workdir)
    saved_config = (workdir / "config.json").read_text()
    result = subprocess.run(
        runs.command(workdir, "--config.model_overrides.d_ff=48"),
        cwd=REPO,
        env=runs.env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == 2
    assert "was written for a different model or optimizer than this run's config" in result.stderr
    assert "checkpoint shape (64, 128), this run (64, 48)" in result.stderr
    assert "model_overrides.d_ff: None -> 48" in result.stderr
    assert "Traceback" not in result.stderr
    assert (workdir / "config.json").read_text() == saved_config  # the record is kept


def test_sigterm_only_sets_a_flag_and_the_previous_handler_comes_back():
    previous = signal.getsignal(signal.SIGTERM)
    with PreemptionWatcher() as watcher:
        assert not watcher.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the test process keeps running
        assert watcher.should_stop(2)
    assert signal.getsignal(signal.SIGTERM) is previous
