"""Test-wide set-up: 8 fake CPU devices for sharding tests, TensorFlow kept off accelerators,
one compilation cache for the session."""

import atexit
import os
import shutil
import tempfile

from sbsd_jax.runtime.xla_flags import apply_default_xla_flags

# Must happen before JAX initialises its backends.
# LLVM optimisation level 0: the suite compiles several hundred tiny programs whose run time is
# microseconds; optimising them cost a sixth of the suite's CPU time. Every verdict holds
# at any level: bitwise comparisons are between programs compiled the same way, and the other
# comparisons (sharded vs one device, scanned vs unrolled, ours vs transformers) allow the
# rounding noise measured under these same flags (tests/rounding_noise.py).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
# The flags `python -m sbsd_jax.main` adds for itself: a program this process compiles is the
# program a training subprocess compiles (one cache entry, the same numbers).
apply_default_xla_flags()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# compute_dtype='auto' would pick bfloat16 on AMD CPUs with AVX512-BF16 and float32 elsewhere:
# tests (and the processes they start) run the same float32 programs on every host kind.
os.environ.setdefault("SBSD_CPU_AUTO_DTYPE", "float32")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Many tests compile the same tiny programs again: every process a resume, corruption, SIGTERM
# or multi-host test starts (tests/tiny_run.py gives them one config), and each test that
# builds the same model. JAX's persistent cache, fresh for each session (so the suite's time is
# that of a cold start) and inherited by those processes and by pytest-xdist's workers,
# compiles each such program once. An entry is keyed by the program's HLO, the compile options
# and flags (the device count among them), the jaxlib version and the backend, so a hit is the
# executable that compiling would give: it cannot change what a test computes. The size limit
# turns on the file lock that two processes compiling the same program at once need.
# Only programs that took 0.1 s or more to compile are kept: with the size limit, every write
# reads the access time of every entry (jax._src.lru_cache), and the thousands of one-op
# programs that eager code compiles in milliseconds made each write cost more than the compile
# it saves (the architecture tests took 67 s instead of 30 s beside 3,000 entries). A tiny
# training process still finds its init, train step and decoders there (14 s warm, 22 s cold).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="sbsd-jax-test-compile-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_collection_modifyitems(items) -> None:
    """Files with slow tests first: pytest-xdist hands out whole files in collection order,
    and a long file handed out last runs on one worker while the other has nothing left."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: files stay whole
