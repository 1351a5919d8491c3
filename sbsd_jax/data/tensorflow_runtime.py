"""The one place TensorFlow is imported: hidden from GPUs/TPUs so it never grabs accelerator
memory that JAX needs (TF is only used for input pipelines: TFDS, SeqIO, tf.data)."""

from __future__ import annotations

import contextlib
import os
from types import ModuleType

_tensorflow: ModuleType | None = None


def import_tensorflow() -> ModuleType:
    """`tensorflow`, with GPU and TPU devices made invisible to it before it runs any op."""
    global _tensorflow
    if _tensorflow is not None:
        return _tensorflow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    for device_type in ("GPU", "TPU"):
        # RuntimeError: TF already initialised its devices (imported and used elsewhere first);
        # ValueError: no such device type in this build. Either way there is nothing to hide.
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.set_visible_devices([], device_type)
    _tensorflow = tf
    return tf
