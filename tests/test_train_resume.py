"""Interrupted runs end where an uninterrupted one ends: resume in a new process, SIGKILL, SIGTERM.

Every run trains a tiny T5 on fixture data (8 fake CPU devices, fsdp over all of them). The
reference trains NUM_STEPS steps without interruption in this process (which compiles what a
subprocess compiles: conftest gives it the trainer's XLA flags). The others are stopped in a
`python -m sbsd_jax.main` subprocess (SIGTERM, SIGKILL), or start from a damaged checkpoint,
and resume in a new process (the SIGTERM case) or in this one; their final train state
(params, optimizer state, step) must be bitwise equal to the reference's. Runs that several
tests look at are module fixtures; a test that changes a run's workdir works on a copy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess

import numpy as np
import pytest
from test_checkpoint_corruption import array_data_file, damage
from tiny_run import REPO, main_command, run_env, write_tiny_run

from sbsd_jax.experiments.config_files import load_config_file
from sbsd_jax.runtime.preemption import PreemptionWatcher
from sbsd_jax.train.checkpointing import read_state_arrays
from sbsd_jax.train.loop import FINISHED_MARKER, train_and_evaluate

# Not a multiple of CHECKPOINT_EVERY: the final checkpoint every test reads exists only because
# the last step is always saved.
NUM_STEPS = 10
CHECKPOINT_EVERY = 4
TRAIN_EXAMPLES, BATCH_SIZE = 40, 8  # tiny_run's defaults
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

    def run(
        self, workdir: pathlib.Path, *overrides: str, expect: int = 0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(workdir, *overrides),
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert result.returncode == expect, result.stderr[-3000:]
        return result

    def run_in_this_process(self, workdir: pathlib.Path, **fields: object) -> None:
        """The run (`fields` over the config file) in the test process: what it prints goes
        to capsys."""
        config = load_config_file(str(self.config))
        config.update(fields)
        train_and_evaluate(config, str(workdir))

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


@dataclasses.dataclass(frozen=True)
class Preempted:
    """A run stopped by SIGTERM: its workdir (never changed afterwards), exit status, stdout."""

    workdir: pathlib.Path
    status: int
    stdout: str

    @property
    def stopped_at(self) -> int:
        return int(self.stdout.split("Stopped by SIGTERM at step ")[1].split("/")[0])


def _committed_steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _final_state(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    return read_state_arrays(workdir / "checkpoints" / str(NUM_STEPS))


def _assert_states_bitwise_equal(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> None:
    assert sorted(left) == sorted(right)
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        np.testing.assert_array_equal(left[name], right[name], err_msg=name, strict=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("resume"))


@pytest.fixture(scope="module")
def uninterrupted(runs: Runs) -> pathlib.Path:
    """The workdir of an uninterrupted NUM_STEPS run (checkpoints 8 and NUM_STEPS kept)."""
    workdir = runs.root / "uninterrupted"
    runs.run_in_this_process(workdir)
    return workdir


@pytest.fixture(scope="module")
def reference_state(uninterrupted: pathlib.Path) -> dict[str, np.ndarray]:
    """The final state of the uninterrupted run."""
    return _final_state(uninterrupted)


@pytest.fixture(scope="module")
def preempted(runs: Runs) -> Preempted:
    """A run sent SIGTERM once its progress line for step 6 appears, in a workdir that holds
    the DONE marker of an earlier, shorter run."""
    workdir = runs.root / "preempted"
    workdir.mkdir()
    (workdir / FINISHED_MARKER).write_text('{"final_step": 1, "num_train_steps": 1}\n')
    status, stdout = runs.start_and_signal(workdir, signal.SIGTERM, at_step=6)
    return Preempted(workdir, status, stdout)


@pytest.fixture(scope="module")
def resumed(runs: Runs, preempted: Preempted) -> tuple[pathlib.Path, str]:
    """(workdir, stdout) of the preempted run (a copy) started again in a new process."""
    workdir = runs.root / "resumed"
    shutil.copytree(preempted.workdir, workdir)
    return workdir, runs.run(workdir).stdout


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(preempted):
    assert preempted.status == 0
    assert "Stopped by SIGTERM at step" in preempted.stdout
    stopped_at = preempted.stopped_at
    assert 6 <= stopped_at < NUM_STEPS
    assert _committed_steps(preempted.workdir)[-1] == stopped_at
    metadata = json.loads(
        (preempted.workdir / "checkpoints" / str(stopped_at) / "data" / "metadata").read_text()
    )
    examples_consumed = metadata["epoch"] * TRAIN_EXAMPLES + metadata["position"]
    assert examples_consumed == stopped_at * BATCH_SIZE


@pytest.mark.slow
def test_restoring_in_a_new_process_continues_bit_for_bit(preempted, resumed, reference_state):
    workdir, stdout = resumed
    assert f"Resuming from step {preempted.stopped_at} " in stdout
    final = _final_state(workdir)
    assert int(final["step"]) == NUM_STEPS
    _assert_states_bitwise_equal(final, reference_state)


@pytest.mark.slow
def test_done_is_written_at_the_end_and_only_there(preempted, resumed):
    """<workdir>/DONE: absent while a run is unfinished (stopped by SIGTERM, or started again
    with more steps: the marker an earlier, shorter run left is gone), written when it has
    trained every step. What `sbsd_jax.cloud watch` stops on."""
    assert not (preempted.workdir / FINISHED_MARKER).exists()
    workdir, _ = resumed
    assert json.loads((workdir / FINISHED_MARKER).read_text()) == {
        "final_step": NUM_STEPS,
        "num_train_steps": NUM_STEPS,
        "best_step": None,
        "exported_to": None,
        "exported_step": None,
    }


@pytest.mark.slow
def test_after_sigkill_only_steps_since_the_last_checkpoint_are_lost(runs, reference_state, capsys):
    workdir = runs.root / "killed"
    status, _ = runs.start_and_signal(workdir, signal.SIGKILL, at_step=9)
    assert status == -signal.SIGKILL
    last = _committed_steps(workdir)[-1]
    # Killed after step 9: the checkpoint of step 4 is committed (Orbax finishes a save
    # before it starts the next, at 8); the run was stopped before its end.
    assert 4 <= last < NUM_STEPS and last % CHECKPOINT_EVERY == 0
    # What a save interrupted by the kill leaves behind is never taken for a checkpoint.
    (workdir / "checkpoints" / f"{NUM_STEPS - 1}.orbax-checkpoint-tmp-1234" / "state").mkdir(
        parents=True
    )
    capsys.readouterr()
    runs.run_in_this_process(workdir)
    assert f"Resuming from step {last} " in capsys.readouterr().out
    _assert_states_bitwise_equal(_final_state(workdir), reference_state)
    # The steps after the checkpoint ran twice but are logged once.
    logged = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]
    assert logged == list(range(1, NUM_STEPS + 1))


EVAL_EVERY = 3  # evaluations at 3, 6, 9 and the last step; checkpoints at 4, 8 and 10
EVALUATING_FIELDS = {
    "eval_splits": ("valid", "test"),
    "eval_every": EVAL_EVERY,
    "decode_rationales": True,
}
EVALUATING = tuple(f"--config.{name}={value!r}" for name, value in EVALUATING_FIELDS.items())


@pytest.mark.slow
def test_sigterm_during_evaluation_checkpoints_at_once_and_the_resume_evaluates_first(
    runs, reference_state
):
    workdir = runs.root / "preempted_in_evaluation"
    # The progress line of step 3 is printed just before step 3's evaluation starts.
    status, stdout = runs.start_and_signal(workdir, signal.SIGTERM, EVAL_EVERY, *EVALUATING)
    assert status == 0
    assert f"Stopped by SIGTERM at step {EVAL_EVERY}/" in stdout
    assert _committed_steps(workdir)[-1] == EVAL_EVERY  # not a checkpoint_every step
    metadata = json.loads(
        (workdir / "checkpoints" / str(EVAL_EVERY) / "_CHECKPOINT_METADATA").read_text()
    )
    assert metadata["custom_metadata"]["evaluation_pending"] is True  # besides the checksums
    assert not any("valid_accuracy" in line for line in (workdir / "metrics.jsonl").open())

    runs.run_in_this_process(workdir, **EVALUATING_FIELDS)
    evaluations = [
        row["step"]
        for row in map(json.loads, (workdir / "metrics.jsonl").open())
        if "valid_accuracy" in row
    ]
    assert evaluations == [3, 6, 9, NUM_STEPS]
    assert (workdir / "predictions" / f"test_step_{EVAL_EVERY}.jsonl").is_file()
    _assert_states_bitwise_equal(_final_state(workdir), reference_state)  # decoding never trains


@pytest.mark.slow
def test_resuming_with_another_model_shape_is_refused_naming_arrays_and_fields(
    runs, uninterrupted, tmp_path
):
    workdir = tmp_path / "finished"
    shutil.copytree(uninterrupted, workdir)
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


@pytest.mark.slow
def test_resume_skips_a_damaged_newest_checkpoint_and_ends_bitwise_equal(
    runs, uninterrupted, reference_state, tmp_path, capsys
):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    older = _committed_steps(workdir)[-2]
    damaged = array_data_file(workdir / "checkpoints" / str(NUM_STEPS))
    damage(damaged, "zeroed")  # restores without an error: only the checksum tells
    damaged_bytes = damaged.read_bytes()

    capsys.readouterr()
    runs.run_in_this_process(workdir)
    printed = capsys.readouterr().out
    assert f"Skipped checkpoint step {NUM_STEPS} ({workdir}/checkpoints/{NUM_STEPS})" in printed
    assert f"Resuming from step {older} " in printed
    # The steps after the older checkpoint, trained again, end where the reference ended.
    _assert_states_bitwise_equal(_final_state(workdir), reference_state)
    moved = workdir / "corrupt_checkpoints" / str(NUM_STEPS)
    relative = damaged.relative_to(workdir / "checkpoints" / str(NUM_STEPS))
    assert (moved / relative).read_bytes() == damaged_bytes  # kept as it was


@pytest.mark.slow
def test_a_run_whose_checkpoints_all_fail_stops_with_a_short_message(runs, uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    older, newest = _committed_steps(workdir)
    # A truncated manifest fails one of many asynchronous reads: the others, still in flight,
    # fail again unawaited and must not reach the console (tens of tracebacks, before).
    with (workdir / "checkpoints" / str(newest) / "state" / "manifest.ocdbt").open("r+b") as f:
        f.truncate(10)
    (workdir / "checkpoints" / str(older) / "data" / "metadata").unlink()

    result = runs.run(workdir, expect=1)
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr
    assert "never retrieved" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if "checkpoint" in line]
    assert ours[0].startswith("sbsd_jax.main: CorruptCheckpointError: no checkpoint in"), ours
    assert f"checkpoint step {newest}" in result.stderr and "manifest" in result.stderr
    assert f"checkpoint step {older}" in result.stderr
    assert _committed_steps(workdir) == [older, newest]  # nothing moved or deleted


def test_sigterm_only_sets_a_flag_and_the_previous_handler_comes_back():
    previous = signal.getsignal(signal.SIGTERM)
    with PreemptionWatcher() as watcher:
        assert not watcher.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the test process keeps running
        assert watcher.should_stop(2)
    assert signal.getsignal(signal.SIGTERM) is previous
