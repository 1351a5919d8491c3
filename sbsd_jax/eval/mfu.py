"""Measured model FLOPs utilisation of a training run: logged step times against the formula.

The train loop logs `train_step_seconds` in metrics.jsonl: wall seconds per step over each log
window, with the window that compiled the step, evaluations and checkpoint saves left out. The
measured step time is the median over those windows (robust to a window a save or the host's
load stretched); the model FLOPs of one step come from sbsd_jax.model.flops at the config's
full lengths (the compiled step's fixed shapes, packed or not); MFU divides them by what the
run's chips could compute meanwhile at peak:

* a TPU or GPU listed in flops.CHIP_PEAKS: its published dense bf16 FLOP/s (the convention
  of PaLM's and MaxText's MFU, also for a float32 run);
* a CPU, which has no published figure, or an unlisted chip: the best of a few jitted square
  matmuls in the run's compute dtype (float32 accumulation) measured by this process on this
  device, the yardstick the decoding benchmark uses. The peak and the step times then come
  from the same host only if the report runs where the training ran (the end of
  sbsd_jax.main does; the line says which).

Written as mfu.json in the run directory, printed laid out as `python -m sbsd_jax.aot`'s roofline.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from sbsd_jax.model import flops
from sbsd_jax.model.config import T5Config
from sbsd_jax.model.decoder_only.config import DecoderConfig
from sbsd_jax.runtime.run_storage import read_json_rows
from sbsd_jax.settings.spec import RunSpec

STEP_SECONDS_METRIC = "train_step_seconds"
MFU_FILE = "mfu.json"


@dataclasses.dataclass(frozen=True)
class TrainStepShape:
    """What decides one train step's model FLOPs besides the model (the compiled shapes)."""

    method: str
    batch_size: int  # global, in examples (gradient accumulation splits it, adds nothing)
    max_input_length: int
    max_target_length: int
    row_length: int = 0  # decoder-only students: slots per row (0: encoder-decoder)

    @classmethod
    def of_run(cls, spec: RunSpec) -> TrainStepShape:
        """The shapes the run's train step compiles for."""
        batching = spec.batching
        return cls(
            method=spec.step.method,
            batch_size=batching.batch_size,
            max_input_length=batching.max_input_length,
            max_target_length=batching.max_target_length,
            row_length=batching.row_length,
        )

    def model_flops(self, model_config: T5Config | DecoderConfig) -> int:
        """One optimizer step's model FLOPs (all chips) by formula."""
        rows = flops.train_step_rows(self.method, self.batch_size)
        if isinstance(model_config, DecoderConfig):
            return flops.causal_lm_train_step_flops(model_config, rows, self.row_length)
        return flops.train_step_flops(
            model_config, rows, self.max_input_length, self.max_target_length
        )


@dataclasses.dataclass(frozen=True)
class PeakFlops:
    """The per-chip FLOP/s MFU divides by, and where the figure comes from."""

    flops_per_second: float
    source: str


@dataclasses.dataclass(frozen=True)
class MeasuredMFU:
    model_flops: float  # one step, all chips, by formula
    step_seconds: float  # median over the logged windows
    windows: int  # log windows with a step time
    chips: int
    device: str
    examples_per_step: int
    peak_flops_per_chip: float
    peak_source: str

    @property
    def mfu(self) -> float:
        return flops.mfu(self.model_flops, self.step_seconds, self.chips, self.peak_flops_per_chip)

    def table(self) -> str:
        per_chip = self.model_flops / self.chips
        examples_per_second = self.examples_per_step / self.chips / self.step_seconds
        return "\n".join(
            [
                f"{'model FLOPs per step (formula)':<38} {flops_text(self.model_flops):>12} "
                f"({flops_text(per_chip)} per chip, {self.chips} x {self.device})",
                f"{'chip peak':<38} {flops_text(self.peak_flops_per_chip, 'FLOP/s'):>12} "
                f"({self.peak_source})",
                f"{'measured':<38} {1e3 * self.step_seconds:9.1f} ms per step (median of "
                f"{self.windows} log windows): MFU {100 * self.mfu:.1f}%, "
                f"{examples_per_second:.1f} examples/s per chip",
            ]
        )

    def to_json(self) -> str:
        payload = dataclasses.asdict(self) | {"mfu": self.mfu}
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"


def flops_text(value: float, unit: str = "FLOP") -> str:
    """4.1e14 -> '410.00 TFLOP', 2.4e10 -> '24.00 GFLOP': small students stay readable."""
    scale, prefix = (1e12, "T") if value >= 1e12 else (1e9, "G")
    return f"{value / scale:.2f} {prefix}{unit}"


def median_step_seconds(rows: Sequence[Mapping[str, Any]]) -> tuple[float, int] | None:
    """(median seconds per step, windows) over the rows that log a positive step time."""
    times = [
        float(row[STEP_SECONDS_METRIC])
        for row in rows
        if isinstance(row.get(STEP_SECONDS_METRIC), int | float) and row[STEP_SECONDS_METRIC] > 0
    ]
    return (statistics.median(times), len(times)) if times else None


def read_metrics_rows(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """metrics.jsonl's rows; a line a crash left half written, or damaged bytes, is skipped."""
    return read_json_rows(epath.Path(workdir) / "metrics.jsonl")


def matmul_peak_flops(
    dtype: str = "float32", size: int = 2048, repeats: int = 5, device: Any = None
) -> float:
    """Best of `repeats` jitted [size, size] @ [size, size] products (float32 accumulation,
    as the model's dots), in FLOP/s, on `device` (default: the first)."""
    import jax
    import jax.numpy as jnp

    device = device or jax.devices()[0]
    a = jax.device_put(jnp.ones((size, size), dtype), device)
    product = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    product(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


@functools.cache
def _measured_peak(compute_dtype: str, size: int, device: Any) -> float:
    """Once per process and device: every run a sweep or test process finishes divides by it."""
    return matmul_peak_flops(compute_dtype, size, device=device)


def device_peak(device: Any, compute_dtype: str, chip: str | None = None) -> PeakFlops:
    """Published bf16 peak of `chip` (default: the chip of `device`'s kind), else a matmul
    measured on `device` in `compute_dtype`."""
    chip = chip or flops.chip_for(device.device_kind)
    if chip is not None:
        peak = flops.CHIP_PEAKS[chip]
        return PeakFlops(peak.bf16_tflops * 1e12, f"published bf16 dense peak of {chip}")
    size = 2048 if device.platform == "cpu" else 8192
    measured = _measured_peak(compute_dtype, size, device)
    return PeakFlops(
        measured,
        f"no published peak: best {compute_dtype} {size}^3 matmul measured now on this "
        f"{device.platform} device",
    )


def measure(
    shape: TrainStepShape,
    model_config: T5Config | DecoderConfig,
    rows: Sequence[Mapping[str, Any]],
    *,
    chips: int,
    device: str,
    peak: PeakFlops,
) -> MeasuredMFU | None:
    """MFU of a run's steps of `shape` from its metrics rows; None without step times."""
    timing = median_step_seconds(rows)
    if timing is None:
        return None
    model_flops = shape.model_flops(model_config)
    return MeasuredMFU(
        model_flops=float(model_flops),
        step_seconds=timing[0],
        windows=timing[1],
        chips=chips,
        device=device,
        examples_per_step=shape.batch_size,
        peak_flops_per_chip=peak.flops_per_second,
        peak_source=peak.source,
    )


def write_report(workdir: str | os.PathLike[str], report: MeasuredMFU) -> epath.Path:
    path = epath.Path(workdir) / MFU_FILE
    path.write_text(report.to_json(), encoding="utf-8")
    return path
