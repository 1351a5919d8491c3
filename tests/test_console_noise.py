"""Library start-up chatter stays off the user's console, and nothing a user needs goes with it.

The end-to-end check (a real `python -m sbsd_jax.main` whose stderr is exactly our one line)
is in test_bad_input_corpus.py; these pin the two mechanisms: JAX_PLATFORMS=cpu only where no
other backend can exist, and TensorFlow's import-time C++ lines sent to the log.
"""

from __future__ import annotations

import fnmatch
import logging
import os

import pytest

from sbsd_jax.data import tensorflow_runtime
from sbsd_jax.runtime.jax_platforms import only_cpu_can_exist, skip_absent_accelerators


def cpu_only(environ=None, *, chips=0, files=()):
    return only_cpu_can_exist(
        {} if environ is None else environ,
        tpu_chips=lambda: chips,
        device_files=lambda pattern: fnmatch.filter(files, pattern),
    )


def test_a_host_without_accelerators_gets_the_cpu_only():
    assert cpu_only()


@pytest.mark.parametrize(
    "files",
    [("/dev/nvidia0",), ("/dev/nvidiactl",), ("/dev/kfd",), ("/dev/accel0",), ("/dev/vfio/12",)],
)
def test_any_accelerator_device_file_leaves_the_choice_to_jax(files):
    assert not cpu_only(files=files)


def test_tpu_chips_on_pci_or_an_unknown_count_leave_the_choice_to_jax():
    assert not cpu_only(chips=4)
    assert not cpu_only(chips=-1)  # JAX's helper moved: assume a TPU may be there


@pytest.mark.parametrize(
    "variable",
    ["JAX_PLATFORMS", "JAX_FORCE_TPU_INIT", "TPU_LIBRARY_PATH", "PJRT_NAMES_AND_LIBRARY_PATHS"],
)
def test_the_users_own_platform_settings_win(variable):
    assert not cpu_only({variable: "x"})


def test_skip_absent_accelerators_sets_jax_platforms_exactly_when_only_the_cpu_can_exist():
    environ = {"HOME": "/nowhere"}
    expected = only_cpu_can_exist(dict(environ))
    assert skip_absent_accelerators(environ) is expected
    assert environ.get("JAX_PLATFORMS") == ("cpu" if expected else None)
    chosen = {"JAX_PLATFORMS": "cuda"}
    assert not skip_absent_accelerators(chosen) and chosen == {"JAX_PLATFORMS": "cuda"}


TF_STARTUP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796188601.015738    5984 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results.\n"
    "I0000 00:00:1796188601.017109    5984 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.\n"
    "E0000 00:00:1796188602.879220    5984 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
)


def test_tensorflow_start_up_lines_go_to_the_log_and_other_lines_to_stderr(capfd, caplog):
    capfd.readouterr()
    with (
        caplog.at_level(logging.INFO, logger=tensorflow_runtime.__name__),
        tensorflow_runtime._native_stderr_to_log(),
    ):
        os.write(2, TF_STARTUP.encode())
        os.write(2, b"E0000 something else went wrong: keep me\n")
    assert capfd.readouterr().err == "E0000 something else went wrong: keep me\n"
    logged = [record.getMessage() for record in caplog.records]
    assert len(logged) == 4 and all(m.startswith("tensorflow start-up: ") for m in logged)
    assert "cuInit" in logged[-1]


def test_lines_written_before_an_import_error_still_reach_stderr(capfd):
    capfd.readouterr()
    with pytest.raises(ImportError), tensorflow_runtime._native_stderr_to_log():
        os.write(2, b"libfoo.so: cannot open shared object file\n")
        raise ImportError("no tensorflow")
    assert capfd.readouterr().err == "libfoo.so: cannot open shared object file\n"
