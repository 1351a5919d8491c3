"""The user's ml_collections config -> a RunSpec: validated once, converted once.

Strict: every field is read from the config as given (a config built on configs/base.py has
them all), so no default is restated here; a missing field is a KeyError naming it.

    spec = run_spec(config)                  # ConfigError listing every problem, else a RunSpec
    spec.check_devices(jax.device_count(), jax.process_count())   # after joining the job
"""

from __future__ import annotations

import ml_collections

from sbsd_jax.data.examples import DatasetSpec, DataSpec
from sbsd_jax.data.features import BatchingSpec, CausalRowsSpec
from sbsd_jax.model.lora import DEFAULT_TARGET, LoraSpec
from sbsd_jax.model.sharding import resolve_rules
from sbsd_jax.model.spec import ModelSpec, family_of
from sbsd_jax.runtime.distributed import DistributedSpec
from sbsd_jax.settings.spec import (
    CheckpointSpec,
    EvalSpec,
    LoopSpec,
    MeshSpec,
    OptimizerSpec,
    RunSpec,
    StepSpec,
)
from sbsd_jax.settings.validation import model_overrides, validate

Config = ml_collections.ConfigDict


def is_seqio_vocabulary(spec: str) -> bool:
    """'byte' or a SentencePiece model file (pad 0, EOS 1); else a Hugging Face tokenizer."""
    return spec in ("byte", "word") or spec.endswith(".model")


def lora_spec(config: Config) -> LoraSpec | None:
    lora = config.lora
    if not lora.enabled:
        return None
    return LoraSpec(
        rank=int(lora.rank),
        alpha=float(lora.alpha),
        dropout=float(lora.dropout),
        target=str(lora.target or DEFAULT_TARGET),
        base_qtype=str(lora.base_qtype),
        tile_size=int(lora.tile_size) or None,
    )


def model_spec(config: Config) -> ModelSpec:
    family = family_of(config.model)
    overrides = model_overrides(config)
    if family.causal and is_seqio_vocabulary(str(config.vocabulary)):
        # A seqio vocabulary's special ids (pad 0, EOS 1, no BOS) replace the named size's.
        for field, value in (("pad_token_id", 0), ("bos_token_id", None), ("eos_token_ids", (1,))):
            overrides.setdefault(field, value)
    return ModelSpec(
        architecture=family.architecture,
        name=config.model,
        overrides=tuple(sorted(overrides.items())),
        compute_dtype=config.compute_dtype,
        param_dtype=config.param_dtype,
        remat_policy=config.remat_policy,
        scan_layers=bool(config.scan_layers),
        init_checkpoint=str(config.init_checkpoint or ""),
        lora=lora_spec(config),
    )


def row_length(config: Config) -> int:
    """Slots of a decoder-only training row (config.decoder_row_length, 0 = input + target)."""
    length = int(config.decoder_row_length)
    return length or int(config.max_input_length) + int(config.max_target_length)


def causal_spec(config: Config) -> CausalRowsSpec | None:
    if not family_of(config.model).causal:
        return None
    return CausalRowsSpec(
        template=str(config.decoder_template),
        row_length=row_length(config),
        max_prompt_length=int(config.max_input_length),
    )


def mesh_spec(config: Config) -> MeshSpec:
    mesh = config.mesh
    return MeshSpec(
        data=int(mesh.data),
        fsdp=int(mesh.fsdp),
        tensor=int(mesh.tensor),
        dcn_data=int(mesh.dcn_data),
        rules=resolve_rules(config.logical_axis_rules),
    )


def distributed_spec(config: Config) -> DistributedSpec:
    dist = config.distributed
    return DistributedSpec(
        mode=dist.mode or "auto",
        coordinator_address=str(dist.coordinator_address or ""),
        num_processes=int(dist.num_processes or 0),
        process_id=-1 if dist.process_id is None else int(dist.process_id),
    )


def dataset_spec(config: Config) -> DatasetSpec:
    """Which examples: the data fields of the config (DatasetSpec's own defaults only cover
    what no config sets: the validation split's carving)."""
    return DatasetSpec(
        dataset=config.dataset,
        source=config.data_source,
        data_dir=config.data_dir,
        hf_name=config.hf_name,
        hf_config=config.hf_config,
        tfds_name=config.tfds_name,
        rationale_dir=config.rationale_dir,
        label_type=config.label_type,
        rationale_source=config.rationale_source,
        train_fraction=float(config.train_fraction),
        subsample_seed=int(config.subsample_seed),
        drop_unparseable=bool(config.drop_unparseable),
    )


def data_spec(config: Config) -> DataSpec:
    return DataSpec(
        dataset=dataset_spec(config),
        method=config.method,
        vocabulary=str(config.vocabulary),
        max_input_length=int(config.max_input_length),
        max_target_length=int(config.max_target_length),
    )


def batching_spec(config: Config) -> BatchingSpec:
    return BatchingSpec(
        batch_size=int(config.batch_size),
        max_input_length=int(config.max_input_length),
        max_target_length=int(config.max_target_length),
        pack=bool(config.pack),
        seed=int(config.seed),
        row_length=row_length(config) if family_of(config.model).causal else 0,
    )


def optimizer_spec(config: Config) -> OptimizerSpec:
    return OptimizerSpec(
        name=config.optimizer,
        learning_rate=float(config.learning_rate),
        lr_schedule=config.lr_schedule,
        warmup_steps=int(config.warmup_steps),
        end_learning_rate_fraction=float(config.end_learning_rate_fraction),
        weight_decay=float(config.weight_decay),
        adam_b1=float(config.adam_b1),
        adam_b2=float(config.adam_b2),
        adam_eps=float(config.adam_eps),
        grad_clip_norm=float(config.grad_clip_norm),
        num_train_steps=int(config.num_train_steps),
    )


def step_spec(config: Config) -> StepSpec:
    return StepSpec(
        method=config.method,
        alpha=float(config.alpha),
        grad_accum_steps=int(config.grad_accum_steps),
        seed=int(config.seed),
        rng_impl=config.rng_impl,
    )


def eval_spec(config: Config) -> EvalSpec:
    return EvalSpec(
        splits=tuple(config.eval_splits or ()),
        every=int(config.eval_every),
        batch_size=int(config.eval_batch_size),
        max_decode_length=int(config.eval_max_decode_length),
        max_examples=int(config.eval_max_examples),
        decode_rationales=bool(config.decode_rationales),
    )


def checkpoint_spec(config: Config) -> CheckpointSpec:
    return CheckpointSpec(
        every=int(config.checkpoint_every),
        keep=int(config.keep_checkpoints),
        keep_best=bool(config.keep_best),
        export_hf_dir=str(config.export_hf_dir or ""),
        export_which=config.export_which,
    )


def config_json(config: Config) -> str:
    """The config as written next to a run's checkpoints (config.json)."""
    return config.to_json_best_effort(indent=2, sort_keys=True) + "\n"


def to_run_spec(config: Config) -> RunSpec:
    """Converts without validating (for a config that `validate` accepted)."""
    return RunSpec(
        model=model_spec(config),
        mesh=mesh_spec(config),
        distributed=distributed_spec(config),
        data=data_spec(config),
        batching=batching_spec(config),
        optimizer=optimizer_spec(config),
        step=step_spec(config),
        evaluation=eval_spec(config),
        checkpointing=checkpoint_spec(config),
        loop=LoopSpec(num_train_steps=int(config.num_train_steps), log_every=int(config.log_every)),
        config_json=config_json(config),
        causal=causal_spec(config),
    )


def run_spec(config: Config, *, check_data: bool = True) -> RunSpec:
    """Validates every group that needs no devices (ConfigError listing each problem), then
    converts. check_data=False skips the data/vocabulary/export checks (the ahead-of-time
    compile reads no data). The device checks follow with `RunSpec.check_devices`."""
    validate(config, None, check_data=check_data)
    return to_run_spec(config)
