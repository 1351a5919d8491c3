"""The demo's second task: a tiny T5 trained from scratch on synthetic multi-step arithmetic.

`python -m sbsd_jax.experiments.demo --task=arithmetic` (SVAMP-like: the rationale spells out
the intermediate results the label depends on). Byte vocabulary (SeqIO's ByteVocabulary: 259
ids, padded to 384 rows), a 2+2-layer 128-wide T5 v1.1-shaped student, Adam at 2e-3 with linear
warm-up and cosine decay. Run one student alone: `python -m sbsd_jax.main
--config=configs/demo_arithmetic.py --workdir=/tmp/demo --config.data_dir=/tmp/demo/data`.
"""

from __future__ import annotations

import ml_collections

from sbsd_jax.experiments.config_files import load_sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = load_sibling_config(__file__)
    config.dataset = "synthetic"
    config.data_source = "paper"  # the demo writes the paper layout into <workdir>/data first
    config.data_dir = ""
    config.method = "step_by_step"
    config.label_type = "llm"
    config.alpha = 0.5

    config.model = "t5_v1_1_tiny"
    config.model_overrides.vocab_size = 384  # byte vocabulary: 259 ids
    config.model_overrides.d_model = 128
    config.model_overrides.d_kv = 32
    config.model_overrides.num_heads = 4
    config.model_overrides.d_ff = 256
    config.model_overrides.num_encoder_layers = 2
    config.model_overrides.num_decoder_layers = 2
    config.model_overrides.dropout_rate = 0.0
    config.compute_dtype = "float32"
    config.rng_impl = "rbg"  # compiles faster on CPU; dropout is off anyway

    config.max_input_length = 112  # inputs are at most 106 bytes + EOS
    config.max_target_length = 136  # rationales (step_by_step's explain task), bytes + EOS
    config.pack = False
    config.batch_size = 16

    config.optimizer = "adamw"
    config.learning_rate = 2e-3
    config.lr_schedule = "linear_warmup_cosine"
    config.warmup_steps = 30
    config.end_learning_rate_fraction = 0.05
    config.num_train_steps = 400

    config.checkpoint_every = 10_000  # only the final (and evaluation) checkpoints
    config.keep_checkpoints = 1
    config.keep_best = False
    config.eval_every = 10_000  # evaluate once, at the end
    config.eval_splits = ("test",)
    config.eval_batch_size = 128
    config.eval_max_decode_length = 8  # the label is a number of at most 3 digits + EOS
    config.log_every = 50
    config.mesh.fsdp = 1

    # What sbsd_jax.experiments.demo runs with this config (not trainer fields).
    config.demo = ml_collections.ConfigDict()
    config.demo.data_seed = 0
    config.demo.num_train = 2000  # 10% of it becomes valid
    config.demo.num_test = 200
    config.demo.min_steps = 1  # operations per problem
    config.demo.max_steps = 2
    config.demo.label_max_target_length = 8  # standard: a number of <= 3 digits + EOS
    config.demo.fractions = (0.25, 1.0)
    config.demo.full_fractions = (0.125, 0.25, 0.5, 1.0)
    config.demo.seeds = 3
    return config
