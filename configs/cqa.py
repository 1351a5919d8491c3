"""Distilling step-by-step on cqa: the paper's recipe (see base.py).

CommonsenseQA (Talmor et al., 2019): 5-way multiple choice, teacher rationales from PaLM.
Run (the paper authors' datasets/ folder, a T5 checkpoint and its SentencePiece model):
  python -m sbsd_jax.main --config=configs/cqa.py --workdir=runs/cqa \
      --config.data_dir=datasets --config.vocabulary=/path/to/spiece.model \
      --config.init_checkpoint=google/t5-v1_1-base
"""

from __future__ import annotations

import ml_collections

from sbsd_jax.experiments.config_files import load_sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = load_sibling_config(__file__)
    config.dataset = "cqa"
    config.data_source = "paper"
    return config
