"""Distilling step-by-step on jsonl: the paper's recipe (see base.py).

Your own data: {train,valid,test}.jsonl under --config.data_dir with id/input/label/rationale.
Run: `python -m sbsd_jax.main --config=configs/jsonl.py --workdir=/tmp/jsonl`
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections


def _base_config() -> ml_collections.ConfigDict:
    """base.py next to this file, loaded by path so the config works from any directory."""
    path = pathlib.Path(__file__).with_name("base.py")
    spec = importlib.util.spec_from_file_location("sbsd_configs_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config() -> ml_collections.ConfigDict:
    config = _base_config()
    config.dataset = "jsonl"
    config.data_source = "jsonl"
    config.label_type = "gt"
    config.data_dir = ""  # required: --config.data_dir=/path/to/jsonl_dir
    return config
