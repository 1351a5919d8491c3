"""A run's settings: configs/base.py is the one place defaults live, a config becomes a typed,
frozen RunSpec once (validated first), and the model part plugs in any registered family."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import pytest
from flax import nnx

from sbsd_jax.data.examples import DatasetSpec, DataSpec
from sbsd_jax.data.features import BatchingSpec
from sbsd_jax.experiments.config_files import load_config_file
from sbsd_jax.model import lora, sharding
from sbsd_jax.model.spec import ENCODER_DECODER, ModelFamily, ModelSpec, family_of, register_family
from sbsd_jax.runtime.compute_dtype import CPU_DTYPE_ENV
from sbsd_jax.runtime.distributed import DistributedSpec
from sbsd_jax.settings import from_config
from sbsd_jax.settings import spec as spec_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"

# Every field of configs/base.py -> where it lands in the RunSpec.
FIELD_TO_SPEC: dict[str, str] = {
    "dataset": "data.dataset.dataset",
    "data_source": "data.dataset.source",
    "data_dir": "data.dataset.data_dir",
    "hf_name": "data.dataset.hf_name",
    "hf_config": "data.dataset.hf_config",
    "tfds_name": "data.dataset.tfds_name",
    "rationale_dir": "data.dataset.rationale_dir",
    "label_type": "data.dataset.label_type",
    "rationale_source": "data.dataset.rationale_source",
    "train_fraction": "data.dataset.train_fraction",
    "subsample_seed": "data.dataset.subsample_seed",
    "drop_unparseable": "data.dataset.drop_unparseable",
    "method": "data.method",
    "vocabulary": "data.vocabulary",
    "max_input_length": "batching.max_input_length",
    "max_target_length": "batching.max_target_length",
    "pack": "batching.pack",
    "batch_size": "batching.batch_size",
    "seed": "step.seed",
    "model": "model.name",
    "init_checkpoint": "model.init_checkpoint",
    "compute_dtype": "model.compute_dtype",
    "param_dtype": "model.param_dtype",
    "remat_policy": "model.remat_policy",
    "scan_layers": "model.scan_layers",
    "rng_impl": "step.rng_impl",
    "alpha": "step.alpha",
    "grad_accum_steps": "step.grad_accum_steps",
    "optimizer": "optimizer.name",
    "learning_rate": "optimizer.learning_rate",
    "lr_schedule": "optimizer.lr_schedule",
    "warmup_steps": "optimizer.warmup_steps",
    "end_learning_rate_fraction": "optimizer.end_learning_rate_fraction",
    "weight_decay": "optimizer.weight_decay",
    "adam_b1": "optimizer.adam_b1",
    "adam_b2": "optimizer.adam_b2",
    "adam_eps": "optimizer.adam_eps",
    "grad_clip_norm": "optimizer.grad_clip_norm",
    "num_train_steps": "loop.num_train_steps",
    "log_every": "loop.log_every",
    "checkpoint_every": "checkpointing.every",
    "keep_checkpoints": "checkpointing.keep",
    "keep_best": "checkpointing.keep_best",
    "export_hf_dir": "checkpointing.export_hf_dir",
    "export_which": "checkpointing.export_which",
    "eval_every": "evaluation.every",
    "eval_batch_size": "evaluation.batch_size",
    "eval_max_decode_length": "evaluation.max_decode_length",
    "eval_splits": "evaluation.splits",
    "eval_max_examples": "evaluation.max_examples",
    "decode_rationales": "evaluation.decode_rationales",
    "mesh.data": "mesh.data",
    "mesh.fsdp": "mesh.fsdp",
    "mesh.tensor": "mesh.tensor",
    "mesh.dcn_data": "mesh.dcn_data",
    "distributed.mode": "distributed.mode",
    "distributed.coordinator_address": "distributed.coordinator_address",
    "distributed.num_processes": "distributed.num_processes",
    "distributed.process_id": "distributed.process_id",
}
# Fields that are resolved on the way (checked separately below).
RESOLVED = {"model_overrides", "logical_axis_rules"}
# Read only for a decoder-only student or with config.lora.enabled (checked below).
DECODER_AND_LORA_TO_SPEC: dict[str, str] = {
    "decoder_template": "causal.template",
    "decoder_row_length": "causal.row_length",
    "lora.enabled": "",
    "lora.rank": "model.lora.rank",
    "lora.alpha": "model.lora.alpha",
    "lora.dropout": "model.lora.dropout",
    "lora.target": "model.lora.target",
    "lora.base_qtype": "model.lora.base_qtype",
    "lora.tile_size": "model.lora.tile_size",
}


def base_config():
    return load_config_file(CONFIGS / "base.py")


def lookup(obj: object, path: str) -> object:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def flat_fields(config, prefix: str = "") -> list[str]:
    names = []
    for key, value in config.items():
        if key in RESOLVED:
            continue
        if hasattr(value, "items"):
            names += flat_fields(value, f"{prefix}{key}.")
        else:
            names.append(f"{prefix}{key}")
    return names


SPEC_CLASSES = (
    spec_lib.RunSpec,
    spec_lib.MeshSpec,
    spec_lib.OptimizerSpec,
    spec_lib.StepSpec,
    spec_lib.EvalSpec,
    spec_lib.CheckpointSpec,
    spec_lib.LoopSpec,
    ModelSpec,
    DataSpec,
    BatchingSpec,
    DistributedSpec,
)


def test_the_settings_classes_restate_no_defaults():
    for cls in SPEC_CLASSES:
        defaulted = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        ]
        assert defaulted == [], f"{cls.__name__}: defaults belong in configs/base.py"
        assert cls.__dataclass_params__.frozen, cls.__name__


def test_every_base_config_field_lands_in_the_run_spec_with_its_value():
    config = base_config()
    assert sorted(flat_fields(config)) == sorted({**FIELD_TO_SPEC, **DECODER_AND_LORA_TO_SPEC}), (
        "map new config fields here"
    )
    run = from_config.to_run_spec(config)
    assert run.causal is None and run.model.lora is None and run.batching.row_length == 0
    for field, path in FIELD_TO_SPEC.items():
        expected = lookup(config, field)
        got = lookup(run, path)
        if isinstance(expected, tuple | list):
            expected, got = tuple(expected), tuple(got)
        assert got == expected, f"config.{field}={expected!r} became {path}={got!r}"
    assert run.model.overrides == ()  # every override unset in base.py
    assert run.mesh.rules == sharding.DEFAULT_LOGICAL_AXIS_RULES  # () means the default table
    assert run.batching.seed == run.step.seed == config.seed
    # DatasetSpec's own defaults only cover what no config sets (carving the valid split).
    unset = {f.name for f in dataclasses.fields(DatasetSpec)} - {
        path.split(".")[-1] for path in FIELD_TO_SPEC.values() if path.startswith("data.dataset")
    }
    assert unset == {
        "subsample_before_valid_split",
        "valid_fraction",
        "valid_seed",
        "load_teacher",
    }


def test_decoder_only_and_lora_fields_land_in_the_run_spec():
    config = base_config()
    config.model = "llama_tiny"
    config.decoder_template, config.decoder_row_length = "plain", 300
    config.lora.update(enabled=True, rank=4, alpha=8.0, target=".*/query", base_qtype="int8")
    config.lora.tile_size = 32
    run = from_config.to_run_spec(config)
    for field, path in DECODER_AND_LORA_TO_SPEC.items():
        if path:
            assert lookup(run, path) == lookup(config, field), field
    assert run.batching.row_length == 300 and run.causal.max_prompt_length == 1024
    config.lora.target, config.lora.tile_size, config.decoder_row_length = "", 0, 0
    run = from_config.to_run_spec(config)
    assert run.model.lora.target == lora.DEFAULT_TARGET and run.model.lora.tile_size is None
    assert run.causal.row_length == config.max_input_length + config.max_target_length
    hash(run.model)


def test_overrides_and_rules_are_resolved_into_hashable_values():
    config = base_config()
    config.model_overrides.vocab_size = 384
    config.logical_axis_rules = (("embed", None), ("mlp", ["tensor", "fsdp"]))
    run = from_config.to_run_spec(config)
    assert run.model.overrides == (("vocab_size", 384),)
    assert run.mesh.rules == (("embed", None), ("mlp", ("tensor", "fsdp")))
    hash(run.mesh)
    hash(run.model)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.step.alpha = 0.1  # type: ignore[misc]


def test_a_config_is_validated_before_it_is_converted():
    config = base_config()
    config.alpha, config.batch_size = 2.0, 0
    with pytest.raises(spec_lib.ConfigError) as caught:
        from_config.run_spec(config, check_data=False)
    assert "config.alpha=2.0" in str(caught.value) and "config.batch_size=0" in str(caught.value)


def test_a_bad_cpu_dtype_variable_is_reported_at_validation_in_one_line(monkeypatch):
    monkeypatch.setenv(CPU_DTYPE_ENV, "float8")
    with pytest.raises(spec_lib.ConfigError) as caught:
        from_config.run_spec(base_config(), check_data=False)
    (line,) = caught.value.problems
    assert line.startswith(f"environment variable {CPU_DTYPE_ENV}='float8'")
    assert "\n" not in line


def test_the_mesh_is_checked_against_the_devices_once_they_are_known():
    config = base_config()
    config.mesh.update(data=4, fsdp=4, tensor=1)
    run = from_config.run_spec(config, check_data=False)
    with pytest.raises(spec_lib.ConfigError, match="16 devices but only 8"):
        run.check_devices(8)
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    config.batch_size = 60
    problems = from_config.to_run_spec(config).device_problems(8, 1)
    assert len(problems) == 1 and "config.batch_size=60" in problems[0]
    assert from_config.to_run_spec(config).mesh.shape(8) == (1, 8, 1)


def test_the_model_spec_names_its_family_and_resolves_numerics_per_platform():
    config = base_config()
    config.model, config.compute_dtype = "t5_v1_1_tiny", "auto"
    config.model_overrides.vocab_size = 128
    model = from_config.model_spec(config)
    assert model.architecture == ENCODER_DECODER == family_of("t5_v1_1_tiny").architecture
    assert model.config_for("tpu").dtype == "bfloat16"
    assert model.config_for("tpu").accumulating_dot_vjp is False
    assert model.config_for("cpu").accumulating_dot_vjp is True
    assert model.named_config().vocab_size == 128
    module = nnx.eval_shape(lambda: model.build(model.config_for("cpu"), nnx.Rngs(0)))
    specs = sharding.tree_partition_specs(
        nnx.state(module, nnx.Param), sharding.DEFAULT_LOGICAL_AXIS_RULES
    )
    assert specs["shared"].get_value() == jax.sharding.PartitionSpec("tensor", "fsdp")


def test_a_second_family_plugs_in_by_name_and_may_not_take_anothers_names():
    with pytest.raises(ValueError, match="unknown model 'no_such_model'"):
        family_of("no_such_model")
    t5 = family_of("t5_small")
    clash = dataclasses.replace(t5, architecture="copy")
    with pytest.raises(ValueError, match="clashes"):
        register_family(clash)
    assert isinstance(t5, ModelFamily)
