"""The one place TensorFlow is imported: hidden from GPUs/TPUs so it never grabs accelerator
memory that JAX needs (TF is only used for input pipelines: TFDS, SeqIO, tf.data).

Importing TensorFlow 2.21 writes C++ log lines straight to file descriptor 2 before its own
logging is set up (so TF_CPP_MIN_LOG_LEVEL cannot hide them): `oneDNN custom operations are
on`, `Could not find cuda drivers on your machine`, `failed call to cuInit` on a CPU-only host.
They are about TensorFlow's own kernels and devices, which the input pipeline does not use, so
they go to the log (INFO; `--verbosity=0` shows them); any other line written meanwhile is
passed on to stderr unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

_tensorflow: ModuleType | None = None

_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|cudart_stub\.cc|Could not find cuda drivers"
    r"|cuda_platform\.cc|failed call to cuInit"
    r"|cpu_feature_guard\.cc|To enable the following instructions"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning"
)


@contextlib.contextmanager
def _native_stderr_to_log() -> Iterator[None]:
    """Captures fd 2 for the block; known TF start-up lines go to the log, others to stderr."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): nothing to tidy
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if _NOISE.search(line):
                    logging.getLogger(__name__).info("tensorflow start-up: %s", line)
                else:
                    print(line, file=sys.stderr)


def import_tensorflow() -> ModuleType:
    """`tensorflow`, with GPU and TPU devices made invisible to it before it runs any op."""
    global _tensorflow
    if _tensorflow is not None:
        return _tensorflow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TF only tokenises here: its oneDNN kernels gain nothing and, at the first int64 op, print
    # an ERROR-level line ("oneDNN supports DT_INT64 only on platforms with AVX-512") that
    # TF_CPP_MIN_LOG_LEVEL=2 lets through.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    with _native_stderr_to_log():
        import tensorflow as tf

        for device_type in ("GPU", "TPU"):
            # RuntimeError: TF already initialised its devices (imported and used elsewhere
            # first); ValueError: no such device type in this build. Either way there is
            # nothing to hide.
            with contextlib.suppress(RuntimeError, ValueError):
                tf.config.set_visible_devices([], device_type)
    _tensorflow = tf
    return tf
