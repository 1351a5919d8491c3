"""The steps on one slice: create, run (ship the code, train on every worker), logs, status,
copy, delete, and the two questions watch asks: what state is the slice in, is the run done."""

from __future__ import annotations

import json
import os
import pathlib
import posixpath
import shlex
import tempfile

from sbsd_jax.cloud import gcloud
from sbsd_jax.cloud.gcloud import TpuSlice
from sbsd_jax.cloud.job import TrainJob
from sbsd_jax.cloud.runner import LauncherError, Runner, error_line

REMOTE_DIR = "~/sbsd-jax"  # each worker's copy of the repository (its .venv is kept)
REMOTE_TARBALL = "/tmp/sbsd-jax.tgz"
TRAIN_LOG = "~/sbsd-jax-train.log"  # launch/tpu_worker.sh appends the trainer's output here
_CODE_FOLDERS = ("sbsd_jax", "configs", "launch")  # replaced whole on every run
# Not shipped: git, the local environment, caches, and `copy`'s default destination.
_PACK_EXCLUDES = (".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "tpu_runs")


def repo_root() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parents[2]


def pack_command(root: os.PathLike[str] | str, tarball: str) -> list[str]:
    """The repository as a tarball: code, configs and any data folder in it; no git, no venv."""
    excludes = [f"--exclude={pattern}" for pattern in _PACK_EXCLUDES]
    return ["tar", "-C", os.fspath(root), *excludes, "-czf", tarball, "."]


def local_tarball(tpu: TpuSlice) -> str:
    return os.path.join(tempfile.gettempdir(), f"sbsd-jax-{tpu.name}.tgz")


def worker_command(job: TrainJob) -> str:
    """What every worker runs: replace its copy of the code (the code folders first, so no
    stale module survives; .venv and anything a run wrote there, such as an export, stay) and
    start launch/tpu_worker.sh with the trainer's arguments."""
    code = " ".join(f"{REMOTE_DIR}/{folder}" for folder in _CODE_FOLDERS)
    refresh = f"mkdir -p {REMOTE_DIR} && rm -rf {code} && tar -C {REMOTE_DIR} -xzf {REMOTE_TARBALL}"
    return f"{refresh} && bash {REMOTE_DIR}/launch/tpu_worker.sh {shlex.join(job.trainer_args())}"


def create(runner: Runner, tpu: TpuSlice) -> None:
    kind = "queueing" if tpu.queued else "creating"
    runner.note(f"{kind} {tpu.name}: {tpu.accelerator_type}{' spot' if tpu.spot else ''}")
    runner.run(gcloud.create(tpu))


def delete(runner: Runner, tpu: TpuSlice) -> None:
    runner.note(f"deleting {tpu.name}")
    runner.run(gcloud.delete(tpu))


def slice_state(runner: Runner, tpu: TpuSlice) -> str | None:
    """The node's (or queued resource's) state, None when it does not exist."""
    result = runner.run(gcloud.describe_state(tpu), capture=True, check=False)
    if result.returncode == 0:
        return result.stdout.strip() or "UNKNOWN"
    if "NOT_FOUND" in result.stderr or "was not found" in result.stderr:
        return None
    raise LauncherError(f"cannot read the state of {tpu.name}: {error_line(result.stderr)}")


def finished_record(runner: Runner, job: TrainJob) -> dict | None:
    """The run's DONE record (final step, best step, export) when it has finished, else None.
    Read with `gcloud storage cat`, the one tool a launcher has for a gs:// workdir."""
    if job.in_bucket:
        result = runner.run(gcloud.storage_cat(job.finished_marker), capture=True, check=False)
        if result.returncode != 0:
            if "matched no objects" in result.stderr or "No URLs matched" in result.stderr:
                return None
            raise LauncherError(f"cannot read {job.finished_marker}: {error_line(result.stderr)}")
        text = result.stdout
    else:
        try:
            text = pathlib.Path(job.finished_marker).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
    return json.loads(text) if job.is_finished_by(text) else None


def run(runner: Runner, tpu: TpuSlice, job: TrainJob, root: pathlib.Path) -> int:
    """Ships the code to every worker and trains there, in the foreground (the workers' output
    streams here); returns the exit status (255: ssh lost the slice, e.g. preempted)."""
    if not job.in_bucket:
        runner.note(
            f"warning: --workdir={job.workdir} is on the workers' own disks, lost with the "
            "slice; a gs:// workdir survives preemption"
        )
    command = worker_command(job)  # first: a job without a config fails before any upload
    tarball = local_tarball(tpu)
    runner.run(pack_command(root, tarball))
    shipped = runner.run(gcloud.scp_to_workers(tpu, tarball, REMOTE_TARBALL), check=False)
    if shipped.returncode != 0:
        return shipped.returncode
    return runner.run(gcloud.ssh(tpu, command), check=False).returncode


def logs(runner: Runner, tpu: TpuSlice, *, all_workers: bool = False, lines: int = 100) -> int:
    """Follows the training log of worker 0 (or of all workers); Ctrl-C stops following."""
    command = f"tail -n {int(lines)} -F {TRAIN_LOG}"
    worker = "all" if all_workers else "0"
    return runner.run(gcloud.ssh(tpu, command, worker=worker), check=False).returncode


def status(runner: Runner, tpu: TpuSlice, job: TrainJob | None) -> list[str]:
    """One line for the slice, one for the run (when a workdir is given)."""
    state = slice_state(runner, tpu)
    lines = [f"{tpu.name} ({tpu.zone}): {state or 'absent'}"]
    if job is not None:
        record = finished_record(runner, job)
        if record is None:
            lines.append(f"{job.workdir}: not finished")
        else:
            lines.append(f"{job.workdir}: finished at step {record.get('final_step')}")
    return [] if runner.dry_run else lines


def copy(runner: Runner, tpu: TpuSlice, job: TrainJob, dest: str) -> str:
    """The run's files without its checkpoints (metrics, predictions, TensorBoard, config,
    DONE) from the workdir, and the exported student (--config.export_hf_dir, written on
    worker 0's disk) from worker 0, into dest/<workdir's last folder>; returns that folder."""
    target = os.path.join(dest, posixpath.basename(job.workdir.rstrip("/")))
    runner.run(["mkdir", "-p", target])
    if job.in_bucket:
        runner.run(gcloud.storage_rsync(job.workdir, target, exclude=("checkpoints/.*",)))
    else:  # a workdir on worker 0's disk, checkpoints and all
        runner.run(gcloud.scp_from_worker(tpu, _on_worker(job.workdir) + "/.", target))
    export = job.override("export_hf_dir")
    if export:
        runner.run(gcloud.scp_from_worker(tpu, _on_worker(export), target + "/"))
    return target


def _on_worker(path: str) -> str:
    """A trainer path as the workers see it: relative ones are under their repository copy."""
    return path if path.startswith(("/", "~")) else f"{REMOTE_DIR}/{path}"
