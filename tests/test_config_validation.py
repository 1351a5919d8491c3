"""Experiment configs carry the paper's recipe, and a config that cannot work fails at start
with a message naming the field and what to change."""

from __future__ import annotations

import importlib.util
import pathlib
import tempfile

import ml_collections
import pytest

from sbsd_jax.model.config import MODEL_NAMES
from sbsd_jax.runtime.xla_flags import apply_default_xla_flags
from sbsd_jax.settings import from_config
from sbsd_jax.settings.validation import ConfigError, validate
from sbsd_jax.train import optimizer as optimizer_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = ("cqa", "svamp", "esnli", "anli1", "gsm8k", "jsonl")


def load_config(name: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(f"config_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def good_config() -> ml_collections.ConfigDict:
    config = load_config("cqa")
    config.data_dir = tempfile.gettempdir()  # validate checks only that the folder exists
    return config


def errors_of(config: ml_collections.ConfigDict, num_devices: int = 8) -> str:
    with pytest.raises(ConfigError) as caught:
        validate(config, num_devices)
    assert isinstance(caught.value, ValueError)
    return str(caught.value)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_config_has_the_paper_recipe_and_validates(name):
    config = load_config(name)
    assert config.dataset == name
    assert (config.optimizer, config.learning_rate, config.batch_size) == ("adamw", 5e-5, 64)
    assert (config.max_input_length, config.max_target_length) == (1024, 256)
    assert (config.num_train_steps, config.eval_every, config.alpha) == (10_000, 250, 0.5)
    assert (config.model, config.method, config.grad_clip_norm) == (
        "t5_v1_1_base",
        "step_by_step",
        1.0,
    )
    if config.data_source in ("paper", "jsonl"):
        config.data_dir = tempfile.gettempdir()
    for devices in (1, 8):
        validate(config, devices)


def test_base_config_is_the_reference_optimizer_schedule():
    """HF Trainer defaults of the reference: linear decay from 5e-5 to 0, no warmup."""
    schedule = optimizer_lib.make_learning_rate_schedule(from_config.optimizer_spec(good_config()))
    assert float(schedule(0)) == pytest.approx(5e-5)
    assert float(schedule(5_000)) == pytest.approx(2.5e-5)
    assert float(schedule(10_000)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("schedule", optimizer_lib.LR_SCHEDULES)
def test_every_schedule_warms_up_linearly_then_stays_at_or_below_the_peak(schedule):
    config = good_config()
    config.lr_schedule, config.warmup_steps = schedule, 100
    rate = optimizer_lib.make_learning_rate_schedule(from_config.optimizer_spec(config))
    assert float(rate(0)) == 0.0
    assert float(rate(50)) == pytest.approx(2.5e-5)
    assert float(rate(100)) == pytest.approx(5e-5)
    assert all(float(rate(step)) <= 5e-5 * (1 + 1e-6) for step in (150, 1_000, 9_999))


def test_auto_compute_dtype_is_bfloat16_on_accelerators_and_float32_on_cpu():
    config = good_config()
    assert from_config.model_spec(config).config_for("cpu").dtype == "float32"
    assert from_config.model_spec(config).config_for("tpu").dtype == "bfloat16"
    assert from_config.model_spec(config).config_for("gpu").dtype == "bfloat16"
    config.model_overrides.dropout_rate = 0.0
    config.model = "t5_v1_1_large"
    model = from_config.model_spec(config).config_for("cpu")
    assert (model.d_model, model.dropout_rate) == (1024, 0.0)


def test_accumulating_dot_vjp_is_on_for_cpu_only():
    """XLA:CPU needs the custom VJP for fast bf16 backward dots; accelerators keep JAX's own."""
    config = good_config()
    config.compute_dtype = "bfloat16"
    assert from_config.model_spec(config).config_for("cpu").accumulating_dot_vjp
    assert not from_config.model_spec(config).config_for("tpu").accumulating_dot_vjp
    assert not from_config.model_spec(config).config_for("gpu").accumulating_dot_vjp
    config.model_overrides.accumulating_dot_vjp = False
    assert not from_config.model_spec(config).config_for("cpu").accumulating_dot_vjp


def test_unknown_model_lists_the_known_names():
    config = good_config()
    config.model = "t5_v2_huge"
    message = errors_of(config)
    assert "config.model='t5_v2_huge'" in message
    assert all(name in message for name in MODEL_NAMES)


def test_batch_not_divisible_by_the_data_parallel_size():
    config = good_config()
    config.batch_size = 60
    config.mesh.update(data=2, fsdp=4, tensor=1)
    message = errors_of(config)
    assert "config.batch_size=60" in message
    assert "data*fsdp = 2*4 = 8" in message and "multiple of 8" in message


def test_tensor_parallel_devices_do_not_count_as_data_parallel():
    config = good_config()
    config.batch_size = 4
    config.eval_batch_size = 4
    config.mesh.update(data=1, fsdp=-1, tensor=2)
    validate(config, 8)  # fsdp fills to 4: a batch of 4 splits evenly


def test_processes_sharing_batch_rows_need_no_batch_split_over_processes():
    """A 'tensor' axis across 2 processes: both load the whole batch, so an odd batch works;
    only the data*fsdp split of the rows is checked."""
    config = good_config()
    config.batch_size, config.eval_batch_size = 3, 3
    config.mesh.update(data=1, fsdp=1, tensor=4)
    validate(config, 4, num_processes=2)
    config.mesh.update(data=1, fsdp=2, tensor=2)
    assert "config.batch_size=3" in errors_of(config, num_devices=4)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_zero_one(alpha):
    config = good_config()
    config.alpha = alpha
    assert f"config.alpha={alpha}: must be in [0, 1]" in errors_of(config)


def test_mesh_larger_than_the_devices():
    config = good_config()
    config.mesh.update(data=2, fsdp=4, tensor=2)
    message = errors_of(config, num_devices=8)
    assert "2*4*2 = 16 devices but only 8 are available" in message


def test_mesh_with_two_fill_axes_or_an_indivisible_fill():
    config = good_config()
    config.mesh.update(data=-1, fsdp=-1)
    assert "only one of config.mesh.data/fsdp/tensor may be -1" in errors_of(config)
    config.mesh.update(data=1, fsdp=-1, tensor=3)
    assert "does not divide the 8 devices" in errors_of(config)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        (
            "method",
            "distill",
            "config.method='distill': unknown; choose one of standard, step_by_step, cot",
        ),
        ("optimizer", "sgd", "config.optimizer='sgd': unknown; choose one of adamw, adafactor"),
        ("dataset", "mnist", "config.dataset='mnist': unknown; choose one of cqa"),
        ("lr_schedule", "cyclic", "config.lr_schedule='cyclic': unknown"),
        ("compute_dtype", "int8", "config.compute_dtype='int8': unknown"),
        ("remat_policy", "some", "config.remat_policy='some': unknown"),
        ("label_type", "human", "config.label_type='human': unknown; choose one of gt, llm"),
    ],
)
def test_unknown_choices_list_the_allowed_values(field, value, expected):
    config = good_config()
    config[field] = value
    assert expected in errors_of(config)


def test_grad_accum_must_divide_the_batch_and_leave_data_parallel_micro_batches():
    config = good_config()
    config.grad_accum_steps = 3
    assert "config.grad_accum_steps=3: must divide config.batch_size=64" in errors_of(config)
    config.grad_accum_steps = 16  # micro-batches of 4 examples over 8 data-parallel devices
    assert "each of the 16 micro-batch(es) (4 examples)" in errors_of(config)
    config.grad_accum_steps = 8
    validate(config, 8)


def test_file_sources_need_an_existing_data_dir_and_bad_model_overrides_are_named(tmp_path):
    config = load_config("jsonl")
    assert "config.data_dir is empty: data_source 'jsonl' needs the folder holding" in errors_of(
        config
    )
    config = load_config("svamp")
    assert "config.data_dir is empty: data_source 'paper' needs the paper authors'" in errors_of(
        config
    )
    config.data_dir = str(tmp_path / "nowhere")
    assert f"config.data_dir='{tmp_path / 'nowhere'}': no such directory" in errors_of(config)
    config.data_dir = "gs://bucket/datasets"  # remote folders are checked when read
    validate(config, 8)
    config = good_config()
    config.model_overrides.dropout_rate = 1.0
    assert "config.model_overrides: T5Config.dropout_rate must be in [0, 1)" in errors_of(config)


def test_logical_axis_rules_must_name_mesh_axes():
    config = good_config()
    config.logical_axis_rules = (("embed", "model"),)
    assert "unknown mesh axes ['model']" in errors_of(config)


def test_all_problems_are_reported_at_once():
    config = good_config()
    config.alpha, config.optimizer, config.model = 2.0, "sgd", "nope"
    error = pytest.raises(ConfigError, validate, config, 8).value
    assert len(error.problems) == 3


def test_every_user_facing_data_source_field_is_a_config_field():
    """--config.hf_name=... etc. must work: a locked ConfigDict rejects unknown fields."""
    config = load_config("base")
    for name in ("data_dir", "hf_name", "hf_config", "tfds_name", "rationale_dir"):
        assert name in config, name
    config.data_source = "hf"
    config.hf_name = "esnli"
    config.tfds_name = "esnli"
    config.rationale_source = "human"
    spec = from_config.dataset_spec(config)
    assert (spec.source, spec.hf_name, spec.tfds_name, spec.rationale_source) == (
        "hf",
        "esnli",
        "esnli",
        "human",
    )


def test_default_xla_flags_are_appended_unless_the_user_set_them():
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    apply_default_xla_flags(environ)
    assert environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    ]
    assert apply_default_xla_flags(environ) == environ["XLA_FLAGS"]  # idempotent
    mine = {"XLA_FLAGS": "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT"}
    apply_default_xla_flags(mine)
    assert mine["XLA_FLAGS"] == "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT"
    empty: dict[str, str] = {}
    apply_default_xla_flags(empty)
    assert empty["XLA_FLAGS"] == "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"


def test_eval_splits_must_be_known_split_names():
    config = good_config()
    config.eval_splits = ("validation",)
    assert "config.eval_splits=('validation',): must be a tuple of split names" in errors_of(config)
    config.eval_splits = ()
    validate(config, 8)


def test_exporting_the_best_checkpoint_needs_validation_and_keeping_the_best():
    config = good_config()
    config.export_hf_dir = "/tmp/out"
    config.eval_splits = ("test",)
    assert "config.export_which='best' ranks checkpoints by validation accuracy" in errors_of(
        config
    )
    config.eval_splits = ("valid", "test")
    config.keep_best = False
    assert "config.export_which='best' needs config.keep_best=True" in errors_of(config)
    config.export_which = "final"
    validate(config, 8)


def test_the_vocabulary_must_exist_and_fit_the_embedding_table(tmp_path):
    import sentencepiece

    config = good_config()
    config.vocabulary = str(tmp_path / "spiece.model")
    assert f"config.vocabulary='{tmp_path / 'spiece.model'}': neither 'byte'" in errors_of(config)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"sentence number {i} about apples and pears" for i in range(200)))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_path / "spiece"),
        vocab_size=40,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
    )
    validate(config, 8)  # 40 ids fit t5_v1_1_base's 32128
    config.model_overrides.vocab_size = 32
    assert "has 40 ids but the model's vocab_size is 32" in errors_of(config)
    config.vocabulary = "byte"
    assert "config.vocabulary='byte' has 259 ids but the model's vocab_size is 32" in errors_of(
        config
    )


def test_the_byte_vocabulary_size_is_seqios():
    import seqio

    from sbsd_jax.settings.validation import BYTE_VOCABULARY_SIZE

    assert seqio.ByteVocabulary().vocab_size == BYTE_VOCABULARY_SIZE


def test_the_ahead_of_time_compile_skips_the_data_checks():
    config = good_config()
    config.data_dir, config.vocabulary = "", "/nowhere/spiece.model"
    assert "config.data_dir is empty" in errors_of(config)
    validate(config, 8, check_data=False)


def test_a_pretrained_sentencepiece_student_needs_its_vocabulary(tmp_path):
    config = good_config()
    config.init_checkpoint = "google/t5-v1_1-base"
    assert "reads SentencePiece ids but config.vocabulary='byte'" in errors_of(config)
    (tmp_path / "config.json").write_text("{}")  # a local Hugging Face folder
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "spiece.model").write_bytes(b"")
    config.init_checkpoint = str(tmp_path)
    assert "reads SentencePiece ids but config.vocabulary='byte'" in errors_of(config)
    (tmp_path / "spiece.model").unlink()  # e.g. our own byte-level export
    validate(config, 8)


def test_the_hugging_face_export_goes_to_a_local_folder():
    config = good_config()
    config.export_hf_dir = "gs://bucket/export"
    assert "the Hugging Face export writes a local folder" in errors_of(config)
