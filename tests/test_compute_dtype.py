"""compute_dtype='auto' picks bfloat16 on accelerators and on the CPUs where bf16 measured faster
(AMD with AVX512-BF16), float32 on every other CPU; explicit settings are never changed."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from sbsd_jax.runtime import compute_dtype
from sbsd_jax.settings import from_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
COMMON_FLAGS = "fpu vme sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni"


def cpuinfo(vendor: str, *flags: str, processors: int = 2) -> str:
    """/proc/cpuinfo text as Linux writes it: one block per logical processor."""
    block = (
        f"processor\t: {{i}}\nvendor_id\t: {vendor}\nflags\t\t: {COMMON_FLAGS} {' '.join(flags)}\n"
    )
    return "\n".join(block.format(i=i) for i in range(processors))


AMD_ZEN4_AVX512_BF16 = cpuinfo("AuthenticAMD", "avx512_bf16", "avx512vbmi")  # this project's host
AMD_ZEN3 = cpuinfo("AuthenticAMD", "sse4a")  # AVX2 only
INTEL_AVX512_BF16_NO_AMX = cpuinfo("GenuineIntel", "avx512_bf16")  # where bf16 measured slower
INTEL_AMX = cpuinfo("GenuineIntel", "avx512_bf16", "amx_bf16", "amx_tile")  # not measured


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch):
    monkeypatch.delenv(compute_dtype.CPU_DTYPE_ENV, raising=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (AMD_ZEN4_AVX512_BF16, "bfloat16"),
        (AMD_ZEN3, "float32"),
        (INTEL_AVX512_BF16_NO_AMX, "float32"),
        (INTEL_AMX, "float32"),
        ("", "float32"),
        ("vendor_id : AuthenticAMD\n", "float32"),  # no flags line: nothing known
    ],
)
def test_on_a_cpu_auto_is_bfloat16_only_for_amd_with_avx512_bf16(text, expected):
    assert compute_dtype.auto_compute_dtype("cpu", text) == expected


@pytest.mark.parametrize("platform", ["tpu", "gpu", "cuda", "rocm"])
def test_on_accelerators_auto_is_bfloat16_whatever_the_host_cpu(platform):
    assert compute_dtype.auto_compute_dtype(platform, INTEL_AVX512_BF16_NO_AMX) == "bfloat16"


def test_the_environment_variable_replaces_the_detection(monkeypatch):
    monkeypatch.setenv(compute_dtype.CPU_DTYPE_ENV, "float32")
    assert compute_dtype.auto_compute_dtype("cpu", AMD_ZEN4_AVX512_BF16) == "float32"
    monkeypatch.setenv(compute_dtype.CPU_DTYPE_ENV, "bfloat16")
    assert compute_dtype.auto_compute_dtype("cpu", INTEL_AVX512_BF16_NO_AMX) == "bfloat16"
    assert compute_dtype.auto_compute_dtype("tpu") == "bfloat16"  # CPUs only
    monkeypatch.setenv(compute_dtype.CPU_DTYPE_ENV, "fp8")
    with pytest.raises(ValueError, match="SBSD_CPU_AUTO_DTYPE='fp8': choose one of bfloat16"):
        compute_dtype.auto_compute_dtype("cpu", AMD_ZEN4_AVX512_BF16)


def base_config(dtype: str):
    spec = importlib.util.spec_from_file_location("base_config", CONFIGS / "base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.compute_dtype = dtype
    return config


@pytest.mark.parametrize(
    ("text", "expected"), [(AMD_ZEN4_AVX512_BF16, "bfloat16"), (INTEL_AMX, "float32")]
)
def test_the_trainer_reads_this_machines_cpuinfo_for_auto_only(
    monkeypatch, tmp_path, text, expected
):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    monkeypatch.setattr(compute_dtype, "CPUINFO", path)
    compute_dtype._this_cpu_prefers_bfloat16.cache_clear()
    try:
        assert from_config.model_spec(base_config("auto")).config_for("cpu").dtype == expected
        for explicit in ("float32", "bfloat16", "float16"):
            model = from_config.model_spec(base_config(explicit)).config_for("cpu")
            assert model.dtype == explicit
        path.unlink()  # no /proc/cpuinfo (not Linux): float32
        compute_dtype._this_cpu_prefers_bfloat16.cache_clear()
        assert from_config.model_spec(base_config("auto")).config_for("cpu").dtype == "float32"
    finally:
        compute_dtype._this_cpu_prefers_bfloat16.cache_clear()
