"""SIGTERM stops training within two steps of the signal, whatever the log interval.

A real `python -m sbsd_jax.main` process with a log interval longer than the run (so no metrics
fetch ever synchronises the host with the devices) gets SIGTERM while training. The loop says
which step had completed when the signal came and which step it checkpointed; the difference is
the number of steps the devices ran after the signal. Without a bound on the steps in flight
the host dispatches far ahead of the devices and that number is in the tens.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import pytest
from tiny_run import REPO, main_command, run_env, write_tiny_run

from sbsd_jax.runtime.preemption import PreemptionWatcher
from sbsd_jax.train import loop
from sbsd_jax.train.checkpointing import read_state_arrays

START_STEP = 0
MIN_STEPS_BEFORE_SIGNAL = 3


@pytest.mark.slow
def test_the_checkpoint_lands_within_two_steps_of_the_signal(tmp_path):
    config = write_tiny_run(
        tmp_path,
        {
            "num_train_steps": 100000,
            "checkpoint_every": 100000,
            "log_every": 100000,
            "batch_size": 32,
            # No dropout: its threefry bits double the step's compile, and masks are not what
            # this test is about.
            "model_overrides.dropout_rate": 0.0,
        },
    )
    workdir = tmp_path / "run"
    # "training from step 0" comes once the step is compiled; the signal comes once a few
    # dozen steps have had time to run.
    process = subprocess.Popen(
        main_command(config, workdir),
        cwd=REPO,
        env=run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in process.stderr:
            if line.startswith(f"training from step {START_STEP};"):
                break
        time.sleep(4.0)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr[-3000:]
    found = re.search(r"SIGTERM after step (\d+): checkpointed step (\d+), exiting", stderr)
    assert found, stderr[-3000:]
    at_signal, checkpointed = int(found.group(1)), int(found.group(2))
    assert at_signal >= START_STEP + MIN_STEPS_BEFORE_SIGNAL, (
        f"the signal came after only {at_signal - START_STEP} steps: not a test of the bound"
    )
    assert 1 <= checkpointed - at_signal <= 2, (at_signal, checkpointed)
    saved = read_state_arrays(workdir / "checkpoints" / str(checkpointed))
    assert int(saved["step"]) == checkpointed


def test_each_dispatch_waits_for_the_step_before_the_last(monkeypatch):
    """After step n is dispatched the loop waits for step n-1 (not n: the next batch's
    preparation and dispatch overlap the running step) and tells the watcher it completed."""
    waited: list[int] = []
    monkeypatch.setattr(jax, "block_until_ready", lambda x: waited.append(int(x)) or x)
    watcher = PreemptionWatcher()
    in_flight: list[jax.Array] = []
    for step in (1, 2, 3, 4):
        loop._bound_steps_in_flight(in_flight, {"loss": jnp.asarray(step)}, step, watcher)
        assert len(in_flight) == 1  # only the step just dispatched may still be running
    assert waited == [1, 2, 3]
    watcher.request_stop()
    assert watcher.signal_step == 3
