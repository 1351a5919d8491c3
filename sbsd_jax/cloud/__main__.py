r"""Launch on Cloud TPU or GPU machines: `python -m sbsd_jax.cloud STEP [flags] [-- TRAINING]`.

TRAINING is the trainer's own overrides, `--config.field=value ...`, after a `--`.
A slice is named by --name and --zone (and --project, else gcloud's default):

  create    --accelerator_type=v4-32 [--spot | --preemptible] [--queued] [--runtime_version=...]
  run       --config=configs/cqa.py --workdir=gs://BUCKET/runs/cqa [-- TRAINING]
  logs      [--all_workers] [--lines=100]            follow the training log (Ctrl-C stops)
  status    [--workdir=gs://...]                     the slice's state; finished or not
  copy      --workdir=gs://... [--dest=DIR]          run files (no checkpoints) + exported student
  delete
  watch     the create and run flags: until the workdir holds DONE, re-create (or re-queue)
            a preempted or deleted slice and run the same command again; --sweep_file and
            --slices=N run every cell of a sweep, N slices at a time; --delete_when_done
  slurm     --nodes=4 --gpus_per_node=8 [--partition --time --account] --config --workdir
  gpu_host  --config --workdir [--gpus=0,1,2,3]      one process, all the host's GPUs

--dry_run, on every step, prints each command exactly as it would run it (shell-quoted, a
script with # comments) and runs none.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from sbsd_jax.cloud import gpu, sweep_cells, tpu, watch
from sbsd_jax.cloud.gcloud import TpuSlice
from sbsd_jax.cloud.job import TrainJob
from sbsd_jax.cloud.runner import LauncherError, Runner

FLAGS = flags.FLAGS
EXIT_USAGE = 2


def _define_flags() -> None:
    """Defined only when run as a program (importing the package claims no flag names)."""
    define = flags
    define.DEFINE_bool("dry_run", False, "Print every command (shell-quoted); run none.")
    define.DEFINE_string("name", None, "TPU VM / queued resource name (--slices: a prefix).")
    define.DEFINE_string("zone", None, "Zone of the slice, e.g. us-central2-b.")
    define.DEFINE_string("project", "", "Google Cloud project (default: gcloud's).")
    define.DEFINE_string("accelerator_type", "", "e.g. v4-32, v5litepod-8, v5p-32, v6e-8.")
    define.DEFINE_string("runtime_version", "", "TPU software version (default per type).")
    define.DEFINE_bool("spot", False, "Spot capacity: much cheaper, can be taken away.")
    define.DEFINE_bool("preemptible", False, "The older preemptible kind (tpu-vm only).")
    define.DEFINE_bool("queued", False, "Create through a queued resource (waits for capacity).")
    define.DEFINE_string("valid_until_duration", "", "--queued: give up waiting after, e.g. 6h.")
    define.DEFINE_string("config", None, "Trainer config, relative to the repository root.")
    define.DEFINE_string("workdir", None, "Run directory; gs://... on TPU (survives the slice).")
    define.DEFINE_string("sweep_file", None, "`sbsd_jax.experiments.sweep --dry_run` output, or -.")
    define.DEFINE_integer("slices", 1, "watch --sweep_file: slices at once (NAME-0, NAME-1, ...).")
    define.DEFINE_bool("all_workers", False, "logs: every worker, not only worker 0.")
    define.DEFINE_integer("lines", 100, "logs: lines of history before following.")
    define.DEFINE_string("dest", "tpu_runs", "copy: local folder to copy into.")
    define.DEFINE_integer("max_creations", 10, "watch: slice creations, the first included.")
    define.DEFINE_integer("max_runs", 20, "watch: training starts per job.")
    define.DEFINE_integer("max_failures", 3, "watch: failures in a row on a healthy slice.")
    define.DEFINE_float("max_hours", 0.0, "watch: stop after this long (0: no limit).")
    define.DEFINE_float("poll_seconds", 60.0, "watch: seconds between looks at a pending slice.")
    define.DEFINE_bool("delete_when_done", False, "watch: delete the slice(s) after the last job.")
    define.DEFINE_integer("nodes", 1, "slurm: nodes (one JAX process each).")
    define.DEFINE_integer("gpus_per_node", 8, "slurm: GPUs per node.")
    define.DEFINE_string("partition", "", "slurm: partition.")
    define.DEFINE_string("time", "", "slurm: time limit, e.g. 24:00:00.")
    define.DEFINE_string("account", "", "slurm: account to charge.")
    define.DEFINE_string("gpus", "", "gpu_host: CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3 (default all).")
    define.DEFINE_bool("install", True, "slurm, gpu_host: set up .venv with CUDA jax first.")


def _slice(name: str | None = None) -> TpuSlice:
    return TpuSlice(
        name=name or FLAGS.name or "",
        zone=FLAGS.zone or "",
        accelerator_type=FLAGS.accelerator_type,
        runtime_version=FLAGS.runtime_version,
        project=FLAGS.project,
        spot=FLAGS.spot,
        preemptible=FLAGS.preemptible,
        queued=FLAGS.queued,
        valid_until_duration=FLAGS.valid_until_duration,
    )


def _job(training: Sequence[str]) -> TrainJob:
    return TrainJob(FLAGS.config or "", FLAGS.workdir or "", tuple(training))


def _jobs(training: Sequence[str]) -> list[TrainJob]:
    """The one job of the flags, or one per cell of --sweep_file."""
    if FLAGS.sweep_file is None:
        return [_job(training)]
    if training or FLAGS.config or FLAGS.workdir:
        raise ValueError("--sweep_file brings each cell's --config, --workdir and overrides")
    if FLAGS.sweep_file == "-":
        return sweep_cells.jobs_from_sweep_commands(sys.stdin.read(), "<stdin>")
    try:
        with open(FLAGS.sweep_file, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ValueError(f"--sweep_file: {error}") from error
    return sweep_cells.jobs_from_sweep_commands(text, FLAGS.sweep_file)


def _no_training_args(training: Sequence[str]) -> None:
    if training:
        raise ValueError(f"this step takes no training arguments, got {' '.join(training)}")


def _create(runner: Runner, training: Sequence[str]) -> int:
    _no_training_args(training)
    tpu.create(runner, _slice())
    return 0


def _run(runner: Runner, training: Sequence[str]) -> int:
    status = 0
    for job in _jobs(training):  # a sweep: its cells one after another
        status = tpu.run(runner, _slice(), job, tpu.repo_root())
        if status != 0:
            raise LauncherError(f"training exited with status {status} ({job.workdir})")
    return status


def _logs(runner: Runner, training: Sequence[str]) -> int:
    _no_training_args(training)
    return tpu.logs(runner, _slice(), all_workers=FLAGS.all_workers, lines=FLAGS.lines)


def _status(runner: Runner, training: Sequence[str]) -> int:
    job = _job(training) if FLAGS.workdir else None
    for line in tpu.status(runner, _slice(), job):
        print(line)
    return 0


def _copy(runner: Runner, training: Sequence[str]) -> int:
    for job in _jobs(training):
        target = tpu.copy(runner, _slice(), job, FLAGS.dest)
        if not runner.dry_run:
            print(f"copied {job.workdir} to {target}")
    return 0


def _delete(runner: Runner, training: Sequence[str]) -> int:
    _no_training_args(training)
    tpu.delete(runner, _slice())
    return 0


def _watch(runner: Runner, training: Sequence[str]) -> int:
    jobs = _jobs(training)
    base = _slice()
    if FLAGS.slices < 1:
        raise ValueError(f"--slices must be >= 1, got {FLAGS.slices}")
    slices = (
        [base]
        if FLAGS.slices == 1
        else [dataclasses.replace(base, name=f"{base.name}-{i}") for i in range(FLAGS.slices)]
    )
    limits = watch.WatchLimits(
        max_creations=FLAGS.max_creations,
        max_runs=FLAGS.max_runs,
        max_failures=FLAGS.max_failures,
        max_hours=FLAGS.max_hours,
        poll_seconds=FLAGS.poll_seconds,
    )
    records = watch.watch_all(
        runner, slices, jobs, limits, root=tpu.repo_root(), delete_when_done=FLAGS.delete_when_done
    )
    if not runner.dry_run:
        print(f"{len(records)} of {len(jobs)} runs finished")
    return 0


def _run_commands(runner: Runner, commands: Sequence[gpu.Command]) -> int:
    for argv, env in commands:
        runner.run(argv, env=env, cwd=str(tpu.repo_root()))
    return 0


def _slurm(runner: Runner, training: Sequence[str]) -> int:
    request = gpu.SlurmRequest(
        nodes=FLAGS.nodes,
        gpus_per_node=FLAGS.gpus_per_node,
        partition=FLAGS.partition,
        time_limit=FLAGS.time,
        account=FLAGS.account,
    )
    root = tpu.repo_root()
    install = gpu.install_commands(root) if FLAGS.install else []
    return _run_commands(
        runner, [*install, (gpu.sbatch_command(request, _job(training), root), {})]
    )


def _gpu_host(runner: Runner, training: Sequence[str]) -> int:
    root = tpu.repo_root()
    install = gpu.install_commands(root) if FLAGS.install else []
    train = gpu.train_command(_job(training), root, gpus=FLAGS.gpus)
    return _run_commands(runner, [*install, train])


STEPS: dict[str, Callable[[Runner, Sequence[str]], int]] = {
    "create": _create,
    "run": _run,
    "logs": _logs,
    "status": _status,
    "copy": _copy,
    "delete": _delete,
    "watch": _watch,
    "slurm": _slurm,
    "gpu_host": _gpu_host,
}


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2 or argv[1] not in STEPS:
        given = f" (got {argv[1]!r})" if len(argv) > 1 else ""
        print(
            f"sbsd_jax.cloud: the first argument is the step: {', '.join(STEPS)}{given}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    step, training = argv[1], argv[2:]
    runner = Runner(dry_run=FLAGS.dry_run)
    try:
        return STEPS[step](runner, training)
    except ValueError as error:  # a flag or file the user can fix
        print(f"sbsd_jax.cloud {step}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except LauncherError as error:
        print(f"sbsd_jax.cloud {step}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sbsd_jax.cloud {step}: interrupted; the slice is left as it is", file=sys.stderr)
        return 130


if __name__ == "__main__":
    _define_flags()
    app.run(main)
