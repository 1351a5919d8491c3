"""Distilling step-by-step on anli1: the paper's recipe (see base.py).

ANLI round 1 (Nie et al., 2020): adversarial 3-way NLI, formatted like e-SNLI.
Run: `python -m sbsd_jax.main --config=configs/anli1.py --workdir=/tmp/anli1`
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
    config.dataset = "anli1"
    config.data_source = "paper"
    return config
