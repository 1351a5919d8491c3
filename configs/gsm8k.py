"""Distilling step-by-step on gsm8k: the paper's recipe (see base.py).

GSM8K (Cobbe et al., 2021): grade-school maths; rationales are the worked solutions, labels numbers.
Run: `python -m sbsd_jax.main --config=configs/gsm8k.py --workdir=/tmp/gsm8k`
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
    config.dataset = "gsm8k"
    config.data_source = "hf"
    config.label_type = "gt"
    return config
