"""Chain-of-thought fine-tuning of Phi-3-mini with QLoRA: the Phi-3 seed's recipe.

A GPT-4o-mini-style CoT SFT: each training sequence is `Q: <question>\nA: <rationale> <answer
cue> <label>` (method cot, plain template), Phi-3-mini-4k (3.8B) as a 4-bit NF4 base with
LoRA rank 8, alpha 16 on every attention and MLP projection (tiles of 64 input channels per
scale), 1024-token rows, full rematerialisation. Only the adapters (about 12M parameters) and
their Adam moments are trained and checkpointed; the export merges them into the base.
Evaluation decodes the question's prompt and reads the label after the answer cue.
Run (downloads microsoft/Phi-3-mini-4k-instruct: weights and tokenizer):
  python -m sbsd_jax.main --config=configs/phi3_mini_cot_qlora.py --workdir=runs/phi3_cot
GSM8K's worked solutions are the rationales by default; to train on a teacher's (e.g. the
GPT-4o-mini outputs of `python -m sbsd_jax.teacher`):
  --config.rationale_source=teacher --config.rationale_dir=<teacher run folder>
Memory check for a TPU slice without renting it:
  python -m sbsd_jax.aot --config=configs/phi3_mini_cot_qlora.py --topology=v5e:2x4
"""

from __future__ import annotations

import ml_collections

from sbsd_jax.experiments.config_files import load_sibling_config

HUB_ID = "microsoft/Phi-3-mini-4k-instruct"


def get_config() -> ml_collections.ConfigDict:
    config = load_sibling_config(__file__)
    config.dataset = "gsm8k"
    config.data_source = "hf"
    config.label_type = "gt"
    config.rationale_source = "human"
    config.method = "cot"

    config.model = "phi_3_mini_4k"
    config.init_checkpoint = HUB_ID  # loaded when the run starts, never by the tests
    config.vocabulary = HUB_ID  # its Hugging Face tokenizer
    config.decoder_template = "plain"
    config.remat_policy = "full"
    config.scan_layers = True

    config.lora.enabled = True
    config.lora.rank = 8
    config.lora.alpha = 16.0
    config.lora.dropout = 0.0
    config.lora.base_qtype = "nf4"
    config.lora.tile_size = 64

    config.max_input_length = 512  # the question's prompt (evaluation)
    config.max_target_length = 512
    config.decoder_row_length = 1024  # prompt + rationale + answer + EOS
    config.pack = True
    config.batch_size = 16

    config.optimizer = "adamw"
    config.learning_rate = 2e-4  # QLoRA's (Dettmers et al., 2023) for adapters
    config.lr_schedule = "linear_warmup_cosine"
    config.warmup_steps = 50
    config.num_train_steps = 1_000
    config.eval_every = 250
    config.eval_batch_size = 16
    config.eval_max_decode_length = 384  # rationale, cue and answer
    return config
