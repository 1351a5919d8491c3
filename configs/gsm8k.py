"""Distilling step-by-step on gsm8k: the paper's recipe (see base.py).

GSM8K (Cobbe et al., 2021): grade-school maths; rationales are the worked solutions, labels numbers.
Run (Hugging Face `openai/gsm8k` from the hub; offline, --config.hf_name=<save_to_disk folder>):
  python -m sbsd_jax.main --config=configs/gsm8k.py --workdir=runs/gsm8k \
      --config.vocabulary=/path/to/spiece.model --config.init_checkpoint=google/t5-v1_1-base
"""

from __future__ import annotations

import ml_collections

from sbsd_jax.experiments.config_files import load_sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = load_sibling_config(__file__)
    config.dataset = "gsm8k"
    config.data_source = "hf"
    config.label_type = "gt"
    return config
