"""Tiny training runs for the trainer's tests: fixture data, a config file, the command and env.

One 'a plus b' JSONL dataset and one tiny T5 config shared by every test that trains through
`python -m sbsd_jax.main` (or a worker process): `python -m sbsd_jax.main` on a tiny T5, no
decoding unless asked, 8 fake CPU devices inherited from conftest. Every process gets the
session's JAX compilation cache (conftest.py), so runs of the same shapes compile once.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import sys
from collections.abc import Mapping

REPO = pathlib.Path(__file__).resolve().parents[1]

# Config fields over configs/base.py; a dotted name sets a field of a sub-config.
TINY_FIELDS: dict[str, object] = {
    "dataset": "jsonl",
    "data_source": "jsonl",
    "label_type": "gt",
    "method": "step_by_step",
    "model": "t5_tiny",
    "model_overrides.vocab_size": 384,  # byte vocabulary: 259 ids
    "max_input_length": 32,
    "max_target_length": 16,
    "batch_size": 8,
    "learning_rate": 1e-3,
    "lr_schedule": "constant",  # so a run to step k continues exactly into a run to n
    "eval_every": 100000,
    "eval_splits": (),  # no decoding unless a test asks for it
    "eval_batch_size": 8,
    "eval_max_decode_length": 4,
}

_CONFIG = """
import importlib.util

def get_config():
    spec = importlib.util.spec_from_file_location("sbsd_base_config", {base!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
{lines}
    return config
"""


def write_tiny_data(data_dir: pathlib.Path, *, train_examples: int = 40, seed: int = 1) -> None:
    """train/valid/test.jsonl of 'a plus b' questions with rationales (8 valid, 8 test)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for split, count in (("train", train_examples), ("valid", 8), ("test", 8)):
        with (data_dir / f"{split}.jsonl").open("w") as handle:
            for index in range(count):
                a, b = rng.randint(1, 9), rng.randint(1, 9)
                row = {
                    "id": f"{split}-{index}",
                    "input": f"{a} plus {b}",
                    "label": str(a + b),
                    "rationale": f"{a} + {b} = {a + b}",
                }
                handle.write(json.dumps(row) + "\n")


def tiny_fields(data_dir: pathlib.Path, fields: Mapping[str, object] = ()) -> dict[str, object]:
    """TINY_FIELDS on the data in `data_dir`, then `fields` (dotted names for sub-configs)."""
    return {**TINY_FIELDS, "data_dir": str(data_dir), **dict(fields)}


def write_tiny_run(
    root: pathlib.Path,
    fields: Mapping[str, object] = (),
    *,
    train_examples: int = 40,
    seed: int = 1,
) -> pathlib.Path:
    """Writes fixture data and a config file (TINY_FIELDS, then `fields`) under `root`; the
    config's path."""
    data_dir = root / "data"
    write_tiny_data(data_dir, train_examples=train_examples, seed=seed)
    lines = "\n".join(
        f"    config.{name} = {value!r}" for name, value in tiny_fields(data_dir, fields).items()
    )
    config_path = root / "tiny_config.py"
    config_path.write_text(_CONFIG.format(base=str(REPO / "configs" / "base.py"), lines=lines))
    return config_path


def main_command(config: pathlib.Path, workdir: pathlib.Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sbsd_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        *overrides,
    ]


def run_env(**extra: str) -> dict[str, str]:
    """This process's environment (conftest's devices and compilation cache) plus `extra`."""
    return {**os.environ, **extra}


def xla_flags(device_count: int | None) -> str:
    """The session's XLA_FLAGS (conftest) with its fake CPU device count set to `device_count`
    (None: JAX's default of one)."""
    kept = [
        flag
        for flag in os.environ.get("XLA_FLAGS", "").split()
        if not flag.startswith("--xla_force_host_platform_device_count=")
    ]
    if device_count is not None:
        kept.append(f"--xla_force_host_platform_device_count={device_count}")
    return " ".join(kept)
