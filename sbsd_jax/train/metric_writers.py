"""Where training and evaluation numbers go: metrics.jsonl, TensorBoard, and the console.

Only process 0 writes files. `metrics.jsonl` has one JSON object per logged step
({"step": n, "train_loss": ..., ...}) so a run can be read back without TensorBoard; the event
files live under <workdir>/tensorboard. TensorFlow (behind clu's SummaryWriter) is imported
through `sbsd_jax.data.tensorflow_runtime.import_tensorflow`, which keeps it off the
accelerators JAX owns.

Run files go through `etils.epath`, so a workdir may be a local folder or any URL epath serves
(gs://, s3://, ...; the same paths Orbax checkpoints to). Object stores have no append (and a
rename is a copy): there metrics.jsonl is rewritten whole (see `MetricsLogger.write`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from etils import epath

from sbsd_jax.runtime.run_storage import is_url, read_json_rows

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _plain(value: Any) -> float | int | str:
    if isinstance(value, int | str):
        return value
    return float(value)


def _row_step(line: str) -> int | None:
    """The step of a metrics.jsonl row; None for a blank or partly written (crashed) line."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class MetricsLogger:
    """Appends scalars to metrics.jsonl and TensorBoard (process 0 only; others do nothing).

    `workdir` is a local folder or a URL (gs://...). Locally rows are appended; an object store
    cannot append, so there each write reads metrics.jsonl and uploads it again with the new
    row (one download and one upload of the whole file per log interval: a few MB after tens
    of thousands of rows). Each upload replaces the object whole, so a crash never leaves a
    half-written row there.
    """

    def __init__(
        self, workdir: str | os.PathLike[str], *, is_primary: bool, tensorboard: bool = True
    ) -> None:
        self.workdir = epath.Path(workdir)
        self.is_primary = is_primary
        self.metrics_path = self.workdir / METRICS_FILE
        self.tensorboard_dir = self.workdir / TENSORBOARD_DIR
        self._remote = is_url(self.workdir)
        self._summary_writer: Any = None
        if is_primary:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from sbsd_jax.data.tensorflow_runtime import import_tensorflow

                import_tensorflow()
                from clu import metric_writers

                # TensorFlow's gfile, behind clu's writer, handles gs:// itself.
                self._summary_writer = metric_writers.SummaryWriter(str(self.tensorboard_dir))

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.is_primary or not values:
            return
        scalars = {name: _plain(value) for name, value in values.items()}
        row = json.dumps({"step": int(step), **scalars}) + "\n"
        if self._remote:
            self.metrics_path.write_text(self._read_rows() + row, encoding="utf-8")
        else:
            with self.metrics_path.open("a", encoding="utf-8") as handle:
                handle.write(row)
        if self._summary_writer is not None:
            numeric = {k: v for k, v in scalars.items() if isinstance(v, int | float)}
            self._summary_writer.write_scalars(int(step), numeric)

    def _read_rows(self) -> str:
        """metrics.jsonl as it is, ending in a newline ('' when absent), for a rewrite."""
        try:
            text = self.metrics_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return text if not text or text.endswith("\n") else text + "\n"

    def discard_after(self, step: int) -> int:
        """Drops the metrics.jsonl rows of steps after `step` (a resumed run redoes those steps
        and logs them again) and any line a crash left half written; returns how many were
        dropped. The TensorBoard event files are left as they are."""
        if not self.is_primary or not self.metrics_path.exists():
            return 0
        text = self.metrics_path.read_bytes().decode("utf-8", errors="replace")
        lines = text.splitlines(keepends=True)  # damaged bytes: an unparseable line, dropped
        row_steps = [_row_step(line) for line in lines]
        kept = [
            line
            for line, row_step in zip(lines, row_steps, strict=True)
            if row_step is not None and row_step <= step
        ]
        if len(kept) < len(lines):
            if self._remote:
                # An object upload is atomic (a rename would be a copy): write in place.
                self.metrics_path.write_text("".join(kept), encoding="utf-8")
            else:
                temporary = self.metrics_path.with_suffix(".jsonl.tmp")
                temporary.write_text("".join(kept), encoding="utf-8")
                os.replace(temporary, self.metrics_path)
        return len(lines) - len(kept)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        if self._summary_writer is not None:
            self._summary_writer.write_hparams(dict(hparams))

    def flush(self) -> None:
        if self._summary_writer is not None:
            self._summary_writer.flush()

    def close(self) -> None:
        if self._summary_writer is not None:
            self._summary_writer.close()
            self._summary_writer = None


def read_metrics(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of <workdir>/metrics.jsonl, oldest first (a local folder or a URL); a line a
    crash left half written, or damaged bytes, is skipped (a resumed run drops it)."""
    return read_json_rows(epath.Path(workdir) / METRICS_FILE)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressBar:
    """One console line per log interval: step, a bar, steps/s, ETA and the train losses.

    On a terminal the line is redrawn in place; in a log file each update is its own line.
    """

    def __init__(
        self, total_steps: int, *, start_step: int = 0, stream: TextIO | None = None
    ) -> None:
        self.total_steps = max(1, total_steps)
        self.stream = stream or sys.stderr
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self._rate = float("nan")

    def update(self, step: int, values: Mapping[str, float] | None = None) -> str:
        now = time.perf_counter()
        if step > self._last_step and now > self._last_time:
            self._rate = (step - self._last_step) / (now - self._last_time)
        self._last_step, self._last_time = step, now
        remaining = (self.total_steps - step) / self._rate if self._rate > 0 else float("nan")
        width = 24
        filled = int(width * min(step, self.total_steps) / self.total_steps)
        bar = "#" * filled + "." * (width - filled)
        shown = ""
        if values:
            shown = " " + " ".join(f"{k}={float(v):.4g}" for k, v in values.items())
        line = (
            f"step {step}/{self.total_steps} [{bar}] {self._rate:.2f} steps/s "
            f"ETA {_duration(remaining)}{shown}"
        )
        if self._interactive:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        return line

    def reset_clock(self, step: int) -> None:
        """Excludes evaluation / checkpoint pauses from the step rate."""
        self._last_step, self._last_time = step, time.perf_counter()

    def message(self, text: str) -> None:
        """A line that must not be overwritten by the bar (evaluation summaries)."""
        if self._interactive:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        self.stream.flush()


def eval_summary(step: int, split: str, values: Mapping[str, float], seconds: float) -> str:
    """The one-line summary printed after each evaluation."""
    prefix = f"{split}_"
    parts = [
        f"{name.removeprefix(prefix)}={value:.4f}"
        for name, value in values.items()
        if name.startswith(prefix) and not name.endswith(("num_examples", "eval_seconds"))
    ]
    count = int(values.get(f"{prefix}num_examples", 0))
    return f"eval step {step} {split} ({count} examples, {seconds:.1f}s): " + " ".join(parts)
