"""Distilling step-by-step on svamp: the paper's recipe (see base.py).

SVAMP (Patel et al., 2021): arithmetic word problems; the label is an equation, scored by value.
Run (the paper authors' datasets/ folder, a T5 checkpoint and its SentencePiece model):
  python -m sbsd_jax.main --config=configs/svamp.py --workdir=runs/svamp \
      --config.data_dir=datasets --config.vocabulary=/path/to/spiece.model \
      --config.init_checkpoint=google/t5-v1_1-base
"""

from __future__ import annotations

import ml_collections

from sbsd_jax.experiments.config_files import load_sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = load_sibling_config(__file__)
    config.dataset = "svamp"
    config.data_source = "paper"
    return config
