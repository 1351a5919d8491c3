"""What `compute_dtype='auto'` means on this machine: bfloat16 where it was measured faster.

Accelerators multiply bfloat16 natively, so 'auto' is bfloat16 there. On CPUs it depends on the
chip, measured with benchmarks/train_throughput.py (T5 v1.1-small, 2 cores, 2026-12):
- AMD EPYC Zen 4 (family 25) with AVX512-BF16: bfloat16 16.4 vs float32 7.8 examples/s;
- Intel Xeon with AVX512-BF16 and no AMX: bfloat16 3.16 vs float32 3.86 examples/s (slower).
So on a CPU 'auto' is bfloat16 only for an AMD chip with AVX512-BF16 (Zen 4 and later), and
float32 everywhere else, including Intel chips with AMX, where nobody has measured it yet. An
explicit `--config.compute_dtype` is never changed; the environment variable
SBSD_CPU_AUTO_DTYPE=float32 (or bfloat16) replaces the detection, e.g. so that a test suite
runs the same programs on every host.
"""

from __future__ import annotations

import functools
import os
import pathlib

ACCELERATOR_PLATFORMS: tuple[str, ...] = ("tpu", "gpu", "cuda", "rocm")
CPUINFO = pathlib.Path("/proc/cpuinfo")
CPU_DTYPE_ENV = "SBSD_CPU_AUTO_DTYPE"
CPU_DTYPES: tuple[str, ...] = ("bfloat16", "float32")


def cpu_prefers_bfloat16(cpuinfo: str) -> bool:
    """True for /proc/cpuinfo text of an AMD CPU whose flags include avx512_bf16."""
    vendor, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return vendor == "AuthenticAMD" and "avx512_bf16" in flags


@functools.cache
def _this_cpu_prefers_bfloat16() -> bool:
    try:
        return cpu_prefers_bfloat16(CPUINFO.read_text())
    except OSError:  # not Linux, or /proc hidden: nothing known, keep float32
        return False


def auto_compute_dtype(platform: str, cpuinfo: str | None = None) -> str:
    """'bfloat16' or 'float32' for `platform` (JAX's backend name): on a CPU from
    $SBSD_CPU_AUTO_DTYPE when set, else from `cpuinfo` (default: this machine's
    /proc/cpuinfo)."""
    if platform in ACCELERATOR_PLATFORMS:
        return "bfloat16"
    if platform != "cpu":
        return "float32"
    chosen = os.environ.get(CPU_DTYPE_ENV)
    if chosen:
        if chosen not in CPU_DTYPES:
            raise ValueError(f"{CPU_DTYPE_ENV}={chosen!r}: choose one of {', '.join(CPU_DTYPES)}")
        return chosen
    prefers = _this_cpu_prefers_bfloat16() if cpuinfo is None else cpu_prefers_bfloat16(cpuinfo)
    return "bfloat16" if prefers else "float32"
