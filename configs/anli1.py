"""Distilling step-by-step on anli1: the paper's recipe (see base.py).

ANLI round 1 (Nie et al., 2020): adversarial 3-way NLI, formatted like e-SNLI.
Run: `python -m sbsd_jax.main --config=configs/anli1.py --workdir=/tmp/anli1`
"""

from __future__ import annotations

import ml_collections

from sbsd_jax.experiments.config_files import load_sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = load_sibling_config(__file__)
    config.dataset = "anli1"
    config.data_source = "paper"
    return config
