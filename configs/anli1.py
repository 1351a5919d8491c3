"""Distilling step-by-step on anli1: the paper's recipe (see base.py).

ANLI round 1 (Nie et al., 2020): adversarial 3-way NLI, formatted like e-SNLI.
Run (the paper authors' datasets/ folder, a T5 checkpoint and its SentencePiece model):
  python -m sbsd_jax.main --config=configs/anli1.py --workdir=runs/anli1 \
      --config.data_dir=datasets --config.vocabulary=/path/to/spiece.model \
      --config.init_checkpoint=google/t5-v1_1-base
"""

from __future__ import annotations

import ml_collections

from sbsd_jax.experiments.config_files import load_sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = load_sibling_config(__file__)
    config.dataset = "anli1"
    config.data_source = "paper"
    return config
