"""SIGTERM handling: a preempted spot VM gets a SIGTERM and some seconds before it dies.

The signal handler only sets a flag; the train loop asks `should_stop(step)` after each step
(and `should_stop_now()` between evaluation batches), saves a checkpoint at that step and exits
with status 0. The loop keeps at most two steps in flight on the devices (it tells the watcher
each step that has completed), so the stop lands within two steps of the signal. On several
hosts every process must stop at the same step (the save is a collective), so the decision is
shared: JAX's preemption sync point (the coordination service sees the notice on any host) or,
failing that, a cross-host max of the local flags every `sync_every` steps.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import jax
import numpy as np


class PreemptionWatcher:
    """Turns SIGTERM into a flag; restores the previous handler on `close()`.

    sync_every: with several processes, how often (in steps) the hosts compare flags when
      JAX's preemption sync point is unavailable; 1 (the loop's choice) keeps the stop within
      two steps of the signal, at one small all-gather per step.
    """

    def __init__(self, *, sync_every: int = 1) -> None:
        self.sync_every = max(1, sync_every)
        self._requested = threading.Event()
        self._previous: Any = None
        self._installed = False
        self._completed_step = 0
        self._signal_step: int | None = None

    def note_completed(self, step: int) -> None:
        """The train loop's word that `step` has finished on the devices."""
        self._completed_step = step

    @property
    def signal_step(self) -> int | None:
        """The last step known to have completed when the stop was first requested (a lower
        bound of the device's progress then); None while no stop was requested."""
        return self._signal_step

    def install(self) -> PreemptionWatcher:
        # Signal handlers can only be set from the main thread (tests may run elsewhere).
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
            self._installed = True
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        self.request_stop()

    def request_stop(self) -> None:
        """What the handler does; also lets tests and callers ask for a clean stop."""
        if self._signal_step is None:
            self._signal_step = self._completed_step
        self._requested.set()

    @property
    def stop_requested_locally(self) -> bool:
        return self._requested.is_set()

    def should_stop(self, step: int) -> bool:
        """Whether every process should checkpoint at `step` and exit (same answer on all)."""
        if jax.process_count() == 1:
            return self._requested.is_set()
        try:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                return True
        except RuntimeError:
            pass  # no preemption service (e.g. not started by jax.distributed); use the flags
        if step % self.sync_every:
            return False
        return self._requested_on_any_process()

    def should_stop_now(self) -> bool:
        """Whether to stop between two evaluation batches (same answer on every process).

        Evaluation can outlast a preemption notice (~30 s on a spot VM), so it asks before each
        batch. Every process decodes the same batches, so with several processes each call is
        one small all-gather of the local flags."""
        if jax.process_count() == 1:
            return self._requested.is_set()
        return self._requested_on_any_process()

    def _requested_on_any_process(self) -> bool:
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self._requested.is_set()))
        return bool(np.any(flags))

    def close(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def __enter__(self) -> PreemptionWatcher:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
