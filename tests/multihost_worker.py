"""One process of a (possibly multi-process) training run, launched by tests/test_multihost.py.

Usage: python tests/multihost_worker.py CONFIG_JSON WORKDIR RECORD_JSON
CONFIG_JSON holds field overrides for configs/base.py (nested dicts for sub-configs). The
process joins a multi-process job through SBSD_COORDINATOR / SBSD_NUM_PROCESSES /
SBSD_PROCESS_ID (sbsd_jax.runtime.distributed.maybe_initialize_distributed), trains with
train_and_evaluate, and writes RECORD_JSON: which global batch rows this process read, a
fingerprint of every host-local batch it produced and the shape of every global batch built
from them, so the test can check each host read only its share and that shares held by
several hosts (a tensor axis across hosts) were not counted twice.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pathlib
import sys
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(overrides: dict[str, Any]) -> Any:
    spec = importlib.util.spec_from_file_location("sbsd_base_config", REPO / "configs" / "base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for name, value in overrides.items():
        if isinstance(value, dict):
            for sub_name, sub_value in value.items():
                config[name][sub_name] = sub_value
        else:
            config[name] = value
    return config


class RecordingIterator:
    """Wraps the trainer's iterator and fingerprints each host-local batch it hands out."""

    def __init__(self, inner: Any, record: dict[str, Any]) -> None:
        self._inner = inner
        self._record = record
        record["host_rows"] = inner.host_rows.tolist()
        record["rows_per_batch"] = inner.rows_per_batch
        record["batches"] = []

    def __iter__(self) -> RecordingIterator:
        return self

    def __next__(self) -> Any:
        batch = next(self._inner)
        tokens = batch["encoder_input_tokens"]
        self._record["batches"].append(
            {
                "num_rows": int(tokens.shape[0]),
                "sha1": hashlib.sha1(tokens.tobytes()).hexdigest(),
            }
        )
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def main(config_json: str, workdir: str, record_path: str) -> None:
    import jax

    from sbsd_jax.data import pipeline
    from sbsd_jax.train import partitioning
    from sbsd_jax.train.loop import train_and_evaluate

    config = load_config(json.loads(pathlib.Path(config_json).read_text()))
    record: dict[str, Any] = {}
    make_iterator = pipeline.make_train_iterator

    def recording_make_train_iterator(*args: Any, **kwargs: Any) -> RecordingIterator:
        return RecordingIterator(make_iterator(*args, **kwargs), record)

    pipeline.make_train_iterator = recording_make_train_iterator
    to_global = partitioning.host_local_to_global
    global_shapes: list[list[int]] = []

    def recording_host_local_to_global(*args: Any, **kwargs: Any) -> Any:
        batch = to_global(*args, **kwargs)
        global_shapes.append(list(batch["encoder_input_tokens"].shape))
        return batch

    partitioning.host_local_to_global = recording_host_local_to_global
    summary = train_and_evaluate(config, workdir)
    record.update(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        device_count=jax.device_count(),
        local_device_count=jax.local_device_count(),
        summary=summary.describe(),
        global_batch_shapes=global_shapes,
    )
    pathlib.Path(record_path).write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:4])
