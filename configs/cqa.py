"""Distilling step-by-step on cqa: the paper's recipe (see base.py).

CommonsenseQA (Talmor et al., 2019): 5-way multiple choice, teacher rationales from PaLM.
Run: `python -m sbsd_jax.main --config=configs/cqa.py --workdir=/tmp/cqa`
"""

from __future__ import annotations

import ml_collections

from sbsd_jax.experiments.config_files import load_sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = load_sibling_config(__file__)
    config.dataset = "cqa"
    config.data_source = "paper"
    return config
