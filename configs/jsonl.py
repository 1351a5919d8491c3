"""Distilling step-by-step on jsonl: the paper's recipe (see base.py).

Your own data: {train,valid,test}.jsonl under --config.data_dir with id/input/label/rationale.
Run:
  python -m sbsd_jax.main --config=configs/jsonl.py --workdir=runs/mine \
      --config.data_dir=/path/to/jsonl_dir --config.vocabulary=/path/to/spiece.model \
      --config.init_checkpoint=google/t5-v1_1-base
"""

from __future__ import annotations

import ml_collections

from sbsd_jax.experiments.config_files import load_sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = load_sibling_config(__file__)
    config.dataset = "jsonl"
    config.data_source = "jsonl"
    config.label_type = "gt"
    config.data_dir = ""  # required: --config.data_dir=/path/to/jsonl_dir
    return config
