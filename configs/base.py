"""Defaults shared by every experiment: the paper's recipe (Hsieh et al., 2023).

AdamW at 5e-5 with the Hugging Face Trainer's linear decay and clipping at 1.0, batch 64,
inputs up to 1024 tokens, targets up to 256, 10,000 steps, evaluation every 250 steps,
alpha 0.5, a T5 v1.1 base student. Every field can be overridden on the command line,
e.g. `--config.alpha=0.3 --config.model=t5_v1_1_large --config.mesh.tensor=4`.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """The full set of fields with the paper's defaults; experiment configs override a few."""
    config = ml_collections.ConfigDict()

    # --- What to learn (read by the data pipeline; see CONTRACTS.md) -------------------------
    config.dataset = "cqa"  # cqa | svamp | esnli | anli1 | gsm8k | jsonl | synthetic
    config.data_source = "paper"  # paper | hf | tfds | jsonl | synthetic
    config.data_dir = ""
    config.method = "step_by_step"  # standard | step_by_step | cot
    config.label_type = "llm"  # gt (human labels) | llm (teacher labels)
    config.train_fraction = 1.0
    config.subsample_seed = 0
    config.max_input_length = 1024
    config.max_target_length = 256
    config.pack = False
    config.batch_size = 64  # global, in examples (step_by_step: 2 sequences per example)
    config.vocabulary = "byte"  # 'byte' | path to a SentencePiece model
    config.drop_unparseable = True
    # Other sources (None = unused): a Hugging Face dataset (hub name or local folder) and its
    # config, a TFDS builder, teacher outputs for hf/tfds sources, and whether rationales come
    # from the teacher or the dataset's own human explanations (e.g. GSM8K solutions).
    config.hf_name = config_dict.placeholder(str)
    config.hf_config = config_dict.placeholder(str)
    config.tfds_name = config_dict.placeholder(str)
    config.rationale_dir = config_dict.placeholder(str)
    config.rationale_source = "teacher"  # teacher | human
    config.seed = 0

    # --- Student ----------------------------------------------------------------------------
    config.model = "t5_v1_1_base"  # any name in sbsd_jax.model.config.MODEL_NAMES
    # T5Config fields to override (None = the named model's value), e.g.
    # --config.model_overrides.dropout_rate=0.0 or .vocab_size=384 for a byte vocabulary.
    config.model_overrides = ml_collections.ConfigDict()
    for field, kind in (
        ("dropout_rate", float),
        ("vocab_size", int),
        ("d_model", int),
        ("d_kv", int),
        ("d_ff", int),
        ("num_heads", int),
        ("num_encoder_layers", int),
        ("num_decoder_layers", int),
        ("feed_forward", str),
        ("tie_word_embeddings", bool),
        ("layer_norm_epsilon", float),
        ("accumulating_dot_vjp", bool),  # default: on for CPU only (see T5Config)
        # Decoder-only students (DecoderConfig): layers, key/value heads, head size.
        ("num_layers", int),
        ("num_kv_heads", int),
        ("head_dim", int),
    ):
        config.model_overrides[field] = config_dict.placeholder(kind)
    # Hugging Face T5 (or decoder-only) directory or hub id to start from ('' = scratch).
    config.init_checkpoint = ""
    # auto (bfloat16 on TPU/GPU, float32 on CPU) | bfloat16 | float32. On CPUs with AVX512-BF16,
    # bfloat16 trains about 1.8x faster than float32 (README, Performance).
    config.compute_dtype = "auto"
    config.param_dtype = "float32"
    config.remat_policy = "none"  # none | full | dots_saveable | ... (model's remat policies)
    config.scan_layers = False
    # Dropout bits: threefry2x32 (JAX's default) gives the same masks on any mesh; 'rbg' uses
    # XLA's RngBitGenerator, which compiles several times faster on CPU and runs faster on TPU,
    # but its masks depend on the sharding (runs stay reproducible on the same mesh).
    config.rng_impl = "threefry2x32"

    # --- Decoder-only students (config.model a Llama / Qwen / Gemma / Phi-3 shape) ---------
    # Text format of the causal-LM rows: plain ('<prefix>Q: <input>\nA: <target>'), chat (the
    # Hugging Face tokenizer's chat template) or auto (chat when the tokenizer has one).
    config.decoder_template = "auto"
    # Slots of a training row (prompt + target + EOS; packed rows hold several sequences);
    # 0 = max_input_length + max_target_length. Evaluation prompts: up to max_input_length.
    config.decoder_row_length = 0
    # LoRA / QLoRA (sbsd_jax.model.lora): train low-rank adapters only, the base frozen (and
    # quantised to nf4 / int4 / int8 for QLoRA). T5 and decoder-only students.
    config.lora = ml_collections.ConfigDict()
    config.lora.enabled = False
    config.lora.rank = 8
    config.lora.alpha = 16.0
    config.lora.dropout = 0.0  # only 0.0 is supported
    config.lora.target = ""  # regex over parameter paths; '' = attention and MLP kernels
    config.lora.base_qtype = "none"  # none | nf4 | int4 | int8
    config.lora.tile_size = 0  # quantisation block along the input axis; 0 = per channel
    # Checkpoints then hold the adapters and their optimizer state only; the frozen base is
    # rebuilt from init_checkpoint (or the seed) on resume.

    # --- Multi-task loss --------------------------------------------------------------------
    config.alpha = 0.5  # loss = alpha * label_loss + (1 - alpha) * rationale_loss

    # --- Optimisation -----------------------------------------------------------------------
    config.optimizer = "adamw"  # adamw | adafactor
    config.learning_rate = 5e-5
    config.lr_schedule = "linear"  # constant | linear | linear_warmup_cosine | rsqrt
    config.warmup_steps = 0
    config.end_learning_rate_fraction = 0.0  # where linear / cosine decay ends, x peak
    # Matrices only (never norm scales). adamw: decoupled, lr(t) * weight_decay * param per step.
    # adafactor (T5X/optax): added after the learning-rate scaling, so weight_decay * param per
    # step, NOT multiplied by the learning rate or its schedule.
    config.weight_decay = 0.0
    config.adam_b1 = 0.9
    config.adam_b2 = 0.999
    config.adam_eps = 1e-8
    config.grad_clip_norm = 1.0  # global-norm clipping; 0 disables
    config.grad_accum_steps = 1  # micro-batches per optimizer step (same per-task loss scaling)
    config.num_train_steps = 10_000

    # --- Devices ----------------------------------------------------------------------------
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = 1  # pure data parallelism (parameters replicated)
    config.mesh.fsdp = -1  # fully-sharded data parallelism; -1 = all remaining devices
    config.mesh.tensor = 1  # tensor (model) parallelism over heads / mlp / vocab
    config.mesh.dcn_data = 1  # multi-slice: data parallelism across slices (DCN)
    # () = sbsd_jax.model.sharding.DEFAULT_LOGICAL_AXIS_RULES; else ((logical, mesh_axes), ...)
    config.logical_axis_rules = ()
    # Multi-host: empty values mean "let JAX discover" (Cloud TPU) or read the SBSD_* env vars.
    config.distributed = ml_collections.ConfigDict()
    config.distributed.mode = "auto"  # auto | on | off (jax.distributed.initialize)
    config.distributed.coordinator_address = ""
    config.distributed.num_processes = 0
    config.distributed.process_id = -1

    # --- Checkpoints ------------------------------------------------------------------------
    config.checkpoint_every = 500
    config.keep_checkpoints = 2
    config.keep_best = True  # also keep the best checkpoint by validation accuracy
    config.export_hf_dir = ""  # write the final/best student as a Hugging Face T5 directory
    config.export_which = "best"  # best | final

    # --- Evaluation and logging -------------------------------------------------------------
    config.eval_every = 250
    config.eval_batch_size = 64
    config.eval_max_decode_length = 256
    config.eval_splits = ("valid", "test")
    config.eval_max_examples = 0  # 0 = the whole split
    config.decode_rationales = False  # also decode the explain task (for inspection only)
    config.log_every = 50

    return config
