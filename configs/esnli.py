"""Distilling step-by-step on esnli: the paper's recipe (see base.py).

e-SNLI (Camburu et al., 2018): 3-way NLI; the inputs are "premise</s> hypothesis".
Run: `python -m sbsd_jax.main --config=configs/esnli.py --workdir=/tmp/esnli`
"""

from __future__ import annotations

import ml_collections

from sbsd_jax.experiments.config_files import load_sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = load_sibling_config(__file__)
    config.dataset = "esnli"
    config.data_source = "paper"
    return config
