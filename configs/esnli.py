"""Distilling step-by-step on esnli: the paper's recipe (see base.py).

e-SNLI (Camburu et al., 2018): 3-way NLI; the inputs are "premise</s> hypothesis".
Run: `python -m sbsd_jax.main --config=configs/esnli.py --workdir=/tmp/esnli`
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
    config.dataset = "esnli"
    config.data_source = "paper"
    return config
