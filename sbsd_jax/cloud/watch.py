"""Keeping a run going on spot or queued capacity.

Until the workdir holds DONE, each round: read the slice's state; absent or dead (PREEMPTED,
SUSPENDED, ...): delete what is left and create (or queue) it again; READY: ship the code and
run the same training command, which resumes from the newest checkpoint in the bucket. It
stops at DONE or at a limit (creations, runs, failures in a row, hours).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import pathlib
import queue
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from sbsd_jax.cloud import gcloud
from sbsd_jax.cloud import tpu as steps
from sbsd_jax.cloud.gcloud import DEAD_STATES, READY_STATES, TpuSlice
from sbsd_jax.cloud.job import TrainJob
from sbsd_jax.cloud.runner import LauncherError, Runner

T = TypeVar("T")
R = TypeVar("R")
_ATTEMPTS = 10  # failed looks in a row (gcloud describe / storage cat) before giving up


@dataclasses.dataclass(frozen=True)
class WatchLimits:
    max_creations: int = 10  # creations (and re-queues) of the slice, the first included
    max_runs: int = 20  # training starts
    max_failures: int = 3  # training failures in a row on a slice that stayed up
    max_hours: float = 0.0  # 0: no time limit
    poll_seconds: float = 60.0  # between looks at a slice that is being created or queued


@dataclasses.dataclass
class _Tally:
    creations: int = 0
    runs: int = 0
    failures: int = 0


def watch(
    runner: Runner,
    tpu: TpuSlice,
    job: TrainJob,
    limits: WatchLimits,
    *,
    root: pathlib.Path,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Runs `job` on `tpu` until it has finished; returns its DONE record.
    Raises LauncherError at a limit (the slice is then left as it is)."""
    if not job.in_bucket:
        raise LauncherError(
            f"watch needs a gs:// --workdir (got {job.workdir}): a resumed run must find the "
            "checkpoints of the slice that was taken away"
        )
    job.trainer_args()  # a job that cannot start fails now, not after a slice was created
    tally, started, status = _Tally(), clock(), 0
    ask = functools.partial(_patiently, runner, poll_seconds=limits.poll_seconds, sleep=sleep)
    state = ask(steps.slice_state, tpu)
    while True:
        record = ask(steps.finished_record, job)
        if record is not None:
            runner.note(f"finished: {job.workdir} (step {record.get('final_step')})")
            return record
        if limits.max_hours and clock() - started > 3600 * limits.max_hours:
            raise LauncherError(
                f"stopped after --max_hours={limits.max_hours:g}: {job.workdir} is not "
                f"finished; {tpu.name} is left {state or 'absent'}"
            )
        condition = gcloud.slice_condition(state)
        if condition == "gone":
            _create_again(runner, tpu, state, tally, limits, sleep)
        elif condition == "waiting":
            runner.note(f"{tpu.name}: {state}; looking again in {limits.poll_seconds:g}s")
            sleep(limits.poll_seconds)
        else:
            if tally.runs >= limits.max_runs:
                raise LauncherError(
                    f"training started {tally.runs} times (--max_runs) and {job.workdir} "
                    "is not finished"
                )
            tally.runs += 1
            runner.note(f"run {tally.runs} on {tpu.name}: {job.workdir}")
            status = steps.run(runner, tpu, job, root)
        state = ask(steps.slice_state, tpu)
        if condition == "ready":
            _count_failure(runner, tpu, status, state, tally, limits, sleep)


def _patiently(
    runner: Runner,
    question: Callable[[Runner, T], R],
    subject: T,
    *,
    poll_seconds: float,
    sleep: Callable[[float], None],
) -> R:
    """A look at the slice or the bucket, asked again after poll_seconds when gcloud fails for
    a moment (network, an auth token being refreshed), up to _ATTEMPTS times in a row."""
    for _ in range(_ATTEMPTS - 1):
        try:
            return question(runner, subject)
        except LauncherError as error:
            runner.note(f"{error}; asking again in {poll_seconds:g}s")
            sleep(poll_seconds)
    return question(runner, subject)


def _create_again(
    runner: Runner,
    tpu: TpuSlice,
    state: str | None,
    tally: _Tally,
    limits: WatchLimits,
    sleep: Callable[[float], None],
) -> None:
    if tally.creations >= limits.max_creations:
        raise LauncherError(
            f"{tpu.name} was created {tally.creations} times (--max_creations) and the run "
            "is not finished"
        )
    tally.creations += 1
    try:
        if state is not None:
            runner.note(f"{tpu.name} is {state}: deleting it to create it again")
            steps.delete(runner, tpu)
        steps.create(runner, tpu)
    except LauncherError as error:  # e.g. no spot capacity in the zone right now
        runner.note(f"{error}; trying again in {limits.poll_seconds:g}s")
        sleep(limits.poll_seconds)


def _count_failure(
    runner: Runner,
    tpu: TpuSlice,
    status: int,
    state: str | None,
    tally: _Tally,
    limits: WatchLimits,
    sleep: Callable[[float], None],
) -> None:
    """A run that failed while its slice stayed up is the run's fault (bad config, crash):
    after max_failures in a row, stop. One that lost its slice is preemption: no fault."""
    if status == 0 or state not in READY_STATES:
        tally.failures = 0
        return
    tally.failures += 1
    if tally.failures >= limits.max_failures:
        raise LauncherError(
            f"training failed {tally.failures} times in a row (exit status {status}) while "
            f"{tpu.name} stayed {state}; see `logs`"
        )
    runner.note(f"training exited with status {status}; trying again in {limits.poll_seconds:g}s")
    sleep(limits.poll_seconds)


def plan(runner: Runner, tpu: TpuSlice, job: TrainJob, root: pathlib.Path) -> None:
    """A dry run of watch: every command of a round, in order, each under its condition."""
    runner.note(f"watch {job.workdir} on {tpu.name}, round after round:")
    runner.note("1. stop when the run is finished (this prints its DONE record)")
    runner.run(gcloud.storage_cat(job.finished_marker))
    runner.note("2. the slice's state")
    runner.run(gcloud.describe_state(tpu))
    runner.note(f"3. absent or {'/'.join(sorted(DEAD_STATES))}: delete what is left, create again")
    runner.run(gcloud.delete(tpu))
    runner.run(gcloud.create(tpu))
    runner.note(f"4. {'/'.join(sorted(READY_STATES))}: ship the code and train (same command)")
    steps.run(runner, tpu, job, root)


def watch_all(
    runner: Runner,
    slices: Sequence[TpuSlice],
    jobs: Sequence[TrainJob],
    limits: WatchLimits,
    *,
    root: pathlib.Path,
    delete_when_done: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict]:
    """Several jobs (sweep cells) on one slice after another, or on several slices at once:
    each slice takes the next unfinished job when it is free. Returns the DONE records."""
    for job in jobs:
        job.trainer_args()  # every cell can start (has a config) before anything is created
    if runner.dry_run:
        for index, job in enumerate(jobs):
            tpu = slices[index % len(slices)]
            if len(jobs) > 1:
                runner.note(f"job {index + 1} of {len(jobs)}, on the first free slice")
            plan(runner, tpu, job, root)
        if delete_when_done:
            for tpu in slices:
                runner.run(gcloud.delete(tpu))
        return []
    pending: queue.Queue[TrainJob] = queue.Queue()
    for job in jobs:
        pending.put(job)
    records: list[dict] = []

    def work(tpu: TpuSlice) -> None:
        while True:
            try:
                job = pending.get_nowait()
            except queue.Empty:
                break
            records.append(watch(runner, tpu, job, limits, root=root, sleep=sleep))
        if delete_when_done and steps.slice_state(runner, tpu) is not None:
            steps.delete(runner, tpu)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(slices)) as pool:
        futures = [pool.submit(work, tpu) for tpu in slices]
    for future in futures:
        future.result()  # the first failure, raised here
    return records
