"""A training run to launch: the trainer's command line, whose workdir says when it is done."""

from __future__ import annotations

import dataclasses
import json

# What sbsd_jax.train.loop writes into the workdir as its very last act (loop.FINISHED_MARKER;
# tests/test_cloud_launcher.py checks that both say the same). Not imported: this package
# must not load the trainer.
FINISHED_MARKER = "DONE"


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """`python -m sbsd_jax.main --config=CONFIG --workdir=WORKDIR OVERRIDES...`.

    config is relative to the repository root (the workers run from their copy of it)."""

    config: str
    workdir: str
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.workdir:
            raise ValueError("--workdir is required (e.g. gs://my-bucket/runs/cqa)")
        bad = [arg for arg in self.overrides if not arg.startswith("--config.")]
        if bad:
            raise ValueError(
                f"training arguments after -- must be --config.field=value, got {bad[0]!r}"
            )

    def trainer_args(self) -> list[str]:
        """The trainer's arguments; the config is needed here only (status and copy need just
        the workdir)."""
        if not self.config:
            raise ValueError("--config is required (e.g. configs/cqa.py)")
        return [f"--config={self.config}", f"--workdir={self.workdir}", *self.overrides]

    @property
    def in_bucket(self) -> bool:
        return self.workdir.startswith("gs://")

    @property
    def finished_marker(self) -> str:
        return self.workdir.rstrip("/") + "/" + FINISHED_MARKER

    def override(self, field: str) -> str | None:
        """The value of the last --config.<field>=... override, None when not given."""
        prefix = f"--config.{field}="
        values = [arg[len(prefix) :] for arg in self.overrides if arg.startswith(prefix)]
        return values[-1] if values else None

    def is_finished_by(self, marker_text: str) -> bool:
        """Whether a DONE file's text says this job is done: it is valid, and it reached the
        step count this job asks for (--config.num_train_steps, when overridden)."""
        try:
            record = json.loads(marker_text)
            final_step = int(record["final_step"])
        except (ValueError, KeyError, TypeError):
            return False
        wanted = self.override("num_train_steps")
        return wanted is None or not wanted.isdigit() or final_step >= int(wanted)
