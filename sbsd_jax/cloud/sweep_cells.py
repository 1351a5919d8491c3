"""A sweep on TPU: the cells that `python -m sbsd_jax.experiments.sweep ... --dry_run` prints,
one `python -m sbsd_jax.main ...` line each, read back as training jobs (one launch per cell)."""

from __future__ import annotations

import shlex

from sbsd_jax.cloud.job import TrainJob

_TRAINER = ["python", "-m", "sbsd_jax.main"]


def jobs_from_sweep_commands(text: str, source: str = "<sweep commands>") -> list[TrainJob]:
    """One job per command line (blank lines and # comments skipped). Raises ValueError naming
    the line for anything else, and for a workdir that is not gs:// (a cell must resume on
    whichever slice runs it next)."""
    jobs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{source}:{number}"
        try:
            argv = shlex.split(line)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        if argv[: len(_TRAINER)] != _TRAINER:
            raise ValueError(f"{where}: not a `python -m sbsd_jax.main ...` command: {line[:80]}")
        config = workdir = ""
        overrides = []
        for arg in argv[len(_TRAINER) :]:
            if arg.startswith("--config="):
                config = arg.removeprefix("--config=")
            elif arg.startswith("--workdir="):
                workdir = arg.removeprefix("--workdir=")
            else:
                overrides.append(arg)
        try:
            job = TrainJob(config, workdir, tuple(overrides))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        if not job.in_bucket:
            raise ValueError(
                f"{where}: --workdir={workdir} is not gs://...; print the sweep with "
                "--workdir_root=gs://<bucket>/<folder>"
            )
        jobs.append(job)
    if not jobs:
        raise ValueError(f"{source}: no `python -m sbsd_jax.main` commands in it")
    return jobs
