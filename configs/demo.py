"""The README's demo: tiny T5 students trained from scratch on the synthetic world task.

`python -m sbsd_jax.experiments.demo` trains, for each method (standard distillation and
distilling step-by-step, both on the teacher's labels), one student per (training fraction,
seed) of `demo.fractions` (or `demo.full_fractions` with --grid=full) x `demo.seeds`.
The task (sbsd_jax.data.synthetic_world): questions about made-up creatures whose kind only the
teacher's rationale states. A word-level vocabulary is trained on the training split, so each
made-up name is one token; a 2+2-layer 64-wide T5 v1.1-shaped student; Adam with warm-up and
cosine decay, dropout and weight decay. Settings were chosen on the valid split (README).
Run one student alone, after the demo wrote its data and vocabulary:
  python -m sbsd_jax.main --config=configs/demo.py --workdir=/tmp/one \\
    --config.data_dir=/tmp/sbsd_demo/data --config.vocabulary=/tmp/sbsd_demo/data/vocabulary.model
"""

from __future__ import annotations

import ml_collections

from sbsd_jax.experiments.config_files import load_sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = load_sibling_config(__file__)
    config.dataset = "synthetic_world"
    config.data_source = "paper"  # the demo writes the paper layout into <workdir>/data first
    config.data_dir = ""
    config.method = "step_by_step"
    config.label_type = "llm"
    config.alpha = 0.5
    config.vocabulary = "word"  # the demo trains it on the training split (data/vocabulary.py)

    config.model = "t5_v1_1_tiny"
    config.model_overrides.vocab_size = 256  # >= the word vocabulary (~190 words)
    config.model_overrides.d_model = 64
    config.model_overrides.d_kv = 16
    config.model_overrides.num_heads = 4
    config.model_overrides.d_ff = 128
    config.model_overrides.num_encoder_layers = 2
    config.model_overrides.num_decoder_layers = 2
    config.model_overrides.dropout_rate = 0.1
    config.compute_dtype = "float32"
    config.rng_impl = "rbg"

    config.max_input_length = 8  # "predict: What does a zorbit eat?" is 6 words + EOS
    config.max_target_length = 14  # rationales: <= 13 words + EOS
    config.pack = False
    config.batch_size = 32

    config.optimizer = "adamw"
    config.learning_rate = 5e-3
    config.weight_decay = 0.1
    config.lr_schedule = "linear_warmup_cosine"
    config.warmup_steps = 50
    config.end_learning_rate_fraction = 0.05
    config.num_train_steps = 600

    config.checkpoint_every = 10_000
    config.keep_checkpoints = 1
    config.keep_best = False
    config.eval_every = 10_000
    config.eval_splits = ("valid", "test")
    config.eval_batch_size = 128
    config.eval_max_decode_length = 4  # the label is one word + EOS
    config.log_every = 100
    config.mesh.fsdp = 1

    # What sbsd_jax.experiments.demo runs with this config (not trainer fields).
    config.demo = ml_collections.ConfigDict()
    config.demo.data_seed = 0
    config.demo.creatures_per_kind = 12  # 8 kinds: 96 creatures, 480 questions
    config.demo.label_max_target_length = 2  # standard: one word + EOS
    config.demo.fractions = (0.25, 0.5, 1.0)
    config.demo.full_fractions = (0.125, 0.25, 0.5, 1.0)
    config.demo.seeds = 3
    return config
