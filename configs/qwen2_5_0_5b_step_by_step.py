"""Distilling step-by-step into a decoder-only student: Qwen2.5-0.5B on cqa.

The paper's two tasks as causal-LM sequences: `predict: <question>` -> label and
`explain: <question>` -> rationale, each the user turn of Qwen's chat template (template auto)
with the loss on the assistant turn and its EOS only, normalised per task and mixed with alpha
as for T5. Full fine-tuning of all 494M parameters from the published checkpoint; rows of 768
tokens (prompts up to 512), packed. Evaluation greedily decodes the predict prompt.
Run (the paper authors' datasets/ folder; downloads Qwen/Qwen2.5-0.5B):
  python -m sbsd_jax.main --config=configs/qwen2_5_0_5b_step_by_step.py --workdir=runs/qwen \
      --config.data_dir=datasets
LoRA instead of full fine-tuning: --config.lora.enabled=True (QLoRA: --config.lora.base_qtype=nf4).
"""

from __future__ import annotations

import ml_collections

from sbsd_jax.experiments.config_files import load_sibling_config

HUB_ID = "Qwen/Qwen2.5-0.5B"


def get_config() -> ml_collections.ConfigDict:
    config = load_sibling_config(__file__)
    config.dataset = "cqa"
    config.data_source = "paper"
    config.method = "step_by_step"
    config.alpha = 0.5

    config.model = "qwen2_5_0_5b"
    config.init_checkpoint = HUB_ID  # loaded when the run starts, never by the tests
    config.vocabulary = HUB_ID  # its Hugging Face tokenizer (with a chat template)
    config.decoder_template = "auto"

    config.max_input_length = 512
    config.max_target_length = 256
    config.decoder_row_length = 768
    config.pack = True
    config.batch_size = 64
    # Fits a v5e-8 (`python -m sbsd_jax.aot --topology=v5e:2x4 --config.mesh.fsdp=8`): 4.93 of
    # 16 GiB per chip in 4 micro-batches with full remat and scanned layers; the whole batch
    # in one pass without remat needs 30.8 GiB of temporaries (the 151,936-word logits).
    config.grad_accum_steps = 4
    config.remat_policy = "full"
    config.scan_layers = True

    config.learning_rate = 2e-5
    config.lr_schedule = "linear_warmup_cosine"
    config.warmup_steps = 100
    config.eval_max_decode_length = 32  # cqa labels are a few words
    return config
