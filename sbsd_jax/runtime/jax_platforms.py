"""JAX_PLATFORMS=cpu on a host that has no accelerator JAX could use, before JAX starts.

With JAX_PLATFORMS unset, JAX initialises every backend it has a plugin for. libtpu (installed
for the ahead-of-time TPU compile, `sbsd_jax.aot`) then starts on a machine without TPU chips
and prints a dozen lines of its own to stderr (`Failed to find host bounds for accelerator
type`, `unexpected worker hostname`, a bare `=== Source Location Trace: ===`) before JAX falls
back to the CPU quietly. None of it concerns the user, and the CPU is the only backend that can
exist there, so entry points call `skip_absent_accelerators()` first. It changes nothing when
the user set JAX_PLATFORMS, when any accelerator device is visible (TPU chips on PCI or
/dev/accel* / /dev/vfio, NVIDIA or AMD GPU device files), when a plugin that this check does not
know is installed, or when a plugin is named in PJRT_NAMES_AND_LIBRARY_PATHS.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable, MutableMapping

# GPU plugins whose hardware the device-file checks below detect.
_KNOWN_PLUGIN_PREFIXES = ("cuda", "rocm", "xla_cuda", "xla_rocm")
_ACCELERATOR_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd", "/dev/accel*")
_FORCING_VARIABLES = (
    "JAX_PLATFORMS",
    "JAX_PLATFORM_NAME",
    "JAX_FORCE_TPU_INIT",
    "TPU_LIBRARY_PATH",
    "PJRT_NAMES_AND_LIBRARY_PATHS",
)


def _tpu_chips_on_pci() -> int:
    """JAX's own count of TPU chips (kept current with the installed JAX); -1 if unknown."""
    try:
        from jax._src import hardware_utils

        return hardware_utils.num_available_tpu_chips_and_device_id()[0]
    except Exception:  # a private helper: if it moves, assume a TPU may be there
        return -1


def _unknown_plugins() -> list[str]:
    """Installed JAX plugins other than the CUDA/ROCm ones (entry points and jax_plugins.*)."""
    names = [entry.name for entry in importlib.metadata.entry_points(group="jax_plugins")]
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and spec.submodule_search_locations:
        names += [module.name for module in pkgutil.iter_modules(spec.submodule_search_locations)]
    return [name for name in names if not name.startswith(_KNOWN_PLUGIN_PREFIXES)]


def only_cpu_can_exist(
    environ: MutableMapping[str, str] | None = None,
    *,
    tpu_chips: Callable[[], int] = _tpu_chips_on_pci,
    device_files: Callable[[str], list[str]] = glob.glob,
) -> bool:
    """True when nothing on this host could give JAX a backend other than the CPU."""
    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in _FORCING_VARIABLES):
        return False
    if any(device_files(pattern) for pattern in (*_ACCELERATOR_FILES, "/dev/vfio/[0-9]*")):
        return False
    return tpu_chips() == 0 and not _unknown_plugins()


def skip_absent_accelerators(environ: MutableMapping[str, str] | None = None) -> bool:
    """Sets JAX_PLATFORMS=cpu where `only_cpu_can_exist`; returns whether it did. Call before
    JAX initialises a backend (jax reads the variable when it is imported, so this also sets
    jax.config when jax is imported already)."""
    environ = os.environ if environ is None else environ
    if not only_cpu_can_exist(environ):
        return False
    environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules and environ is os.environ:  # imported by the TPU check, say
        sys.modules["jax"].config.update("jax_platforms", "cpu")
    return True
