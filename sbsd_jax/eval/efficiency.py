"""What a student costs at inference: size, greedy-decoding latency and throughput, memory.

Measured on the device the process runs on, with the inputs of a real split (the label task's
inputs, encoded and padded as the evaluator does), so the figures are those of decoding that
split: latency is one example per call (batch 1), throughput one full batch per call, each
after a warm-up call that compiles. Memory has two sources: XLA's memory analysis of the
compiled batch decode (parameters, inputs, outputs and temporaries; static, any backend) and,
where the device keeps statistics (GPU, TPU), its peak bytes in use over the process's life.
Written as `efficiency.json` in the run directory; `summary_lines` go into the run summary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
from etils import epath

from sbsd_jax.eval.evaluator import GenerateFn, batches, padded_length

EFFICIENCY_FILE = "efficiency.json"


@dataclasses.dataclass(frozen=True)
class EfficiencyReport:
    parameters: int
    device: str
    compute_dtype: str
    input_length: int
    max_decode_length: int
    latency_examples: int
    latency_seconds_per_example: float  # one example a call, mean over latency_examples calls
    latency_batch_size: int  # rows per latency call: 1, or the mesh's data x fsdp (pad rows)
    throughput_batch_size: int
    throughput_examples_per_second: float  # median over the timed calls
    compiled_decode_bytes: int | None  # XLA memory analysis of the batch decode, per device
    device_peak_bytes: int | None  # device memory_stats peak_bytes_in_use; None on CPU
    device_peak_note: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def summary_lines(self) -> list[str]:
        def mib(value: int | None) -> str:
            return "n/a" if value is None else f"{value / 2**20:.1f} MiB"

        return [
            f"efficiency on {self.device} ({self.compute_dtype}): {self.parameters:,} parameters; "
            f"greedy decoding of up to {self.max_decode_length} tokens from "
            f"{self.input_length}-token inputs: {1e3 * self.latency_seconds_per_example:.1f} ms "
            f"per example at batch {self.latency_batch_size}, "
            f"{self.throughput_examples_per_second:.1f} examples/s at batch "
            f"{self.throughput_batch_size}",
            f"  inference memory: compiled decode {mib(self.compiled_decode_bytes)} per device "
            f"(XLA memory analysis), device peak {mib(self.device_peak_bytes)}"
            + (f" ({self.device_peak_note})" if self.device_peak_note else ""),
        ]


def _timed(generate: GenerateFn, tokens: np.ndarray, max_decode_length: int) -> float:
    start = time.perf_counter()
    np.asarray(generate(tokens, max_decode_length))
    return time.perf_counter() - start


def _device_peak_bytes() -> tuple[int | None, str]:
    import jax

    stats = jax.local_devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None, "this device keeps no memory statistics"
    return int(stats["peak_bytes_in_use"]), "peak over the process, training included if any"


def measure(
    generate: GenerateFn,
    token_rows: Sequence[Sequence[int]],
    *,
    parameters: int,
    compute_dtype: str,
    max_input_length: int,
    max_decode_length: int,
    batch_size: int,
    latency_batch_size: int = 1,
    latency_examples: int = 8,
    repeats: int = 3,
    compiled_bytes: Callable[[np.ndarray], int | None] | None = None,
) -> EfficiencyReport:
    """Times `generate` on encoded inputs `token_rows` (EOS included, as the evaluator makes).

    A batch is filled by cycling through the rows when the split has fewer than batch_size.
    Latency calls hold one example; a mesh that splits the batch over several devices cannot
    decode one row, so there they hold latency_batch_size rows, one real and the rest pad.
    `compiled_bytes(tokens)` returns XLA's bytes for decoding that batch (None: unknown).
    """
    import jax

    if not token_rows:
        raise ValueError("efficiency: no inputs to decode")
    length = padded_length([len(r) for r in token_rows], max_input_length)
    singles = [
        next(batches([row], latency_batch_size, length))[0] for row in token_rows[:latency_examples]
    ]
    _timed(generate, singles[0], max_decode_length)  # compile
    latency = statistics.mean(_timed(generate, t, max_decode_length) for t in singles)

    cycled = [token_rows[i % len(token_rows)] for i in range(batch_size)]
    full, _ = next(batches(cycled, batch_size, length))
    _timed(generate, full, max_decode_length)  # compile
    seconds = statistics.median(_timed(generate, full, max_decode_length) for _ in range(repeats))
    peak, note = _device_peak_bytes()
    device = jax.local_devices()[0]
    return EfficiencyReport(
        parameters=int(parameters),
        device=f"{device.platform}:{device.device_kind}",
        compute_dtype=compute_dtype,
        input_length=length,
        max_decode_length=max_decode_length,
        latency_examples=len(singles),
        latency_seconds_per_example=latency,
        latency_batch_size=latency_batch_size,
        throughput_batch_size=batch_size,
        throughput_examples_per_second=batch_size / seconds,
        compiled_decode_bytes=compiled_bytes(full) if compiled_bytes else None,
        device_peak_bytes=peak,
        device_peak_note=note,
    )


def write_report(workdir: str | os.PathLike[str], report: EfficiencyReport) -> epath.Path:
    path = epath.Path(workdir) / EFFICIENCY_FILE
    path.write_text(report.to_json(), encoding="utf-8")
    return path


def read_report(path: str | os.PathLike[str]) -> EfficiencyReport:
    return EfficiencyReport(**json.loads(epath.Path(path).read_text(encoding="utf-8")))
