"""A tiny training run for subprocess tests: fixture data, a config file, the command and env.

`python -m sbsd_jax.main` on a tiny T5 (no decoding unless asked), 8 fake CPU devices inherited
from conftest; every run under one root shares a JAX compilation cache.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

_CONFIG = """
import importlib.util

def get_config():
    spec = importlib.util.spec_from_file_location("sbsd_base_config", {base!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.dataset = "jsonl"
    config.data_source = "jsonl"
    config.data_dir = {data_dir!r}
    config.label_type = "gt"
    config.method = "step_by_step"
    config.model = "t5_tiny"
    config.model_overrides.vocab_size = 384
    config.max_input_length = 32
    config.max_target_length = 16
    config.batch_size = 8
    config.learning_rate = 1e-3
    config.lr_schedule = "constant"
    config.eval_every = 100000
    config.eval_splits = ()
    config.eval_batch_size = 8
    config.eval_max_decode_length = 4
{fields}
    return config
"""


def write_tiny_run(root: pathlib.Path, **fields: object) -> pathlib.Path:
    """Writes fixture data and a config (base fields plus `fields`) under `root`; its path."""
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    for split, count in (("train", 40), ("valid", 8), ("test", 8)):
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
    lines = "\n".join(f"    config.{name} = {value!r}" for name, value in fields.items())
    config_path = root / "tiny_config.py"
    config_path.write_text(
        _CONFIG.format(base=str(REPO / "configs" / "base.py"), data_dir=str(data_dir), fields=lines)
    )
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


def run_env(root: pathlib.Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        **extra,
    )
    return env
