"""LoRA / QLoRA students in the trainer: the optimizer and the checkpoints hold the adapters
only, the frozen (quantised) base is a separate, non-donated argument of the step, resuming
after a SIGKILL rebuilds it bitwise, and the export merges the adapters into an HF folder
transformers loads.
Also: a decoder-only student trains the same on 8 fake devices (data x fsdp x tensor) as on
one (rounding_noise.py's yardstick, as the T5 sharding tests)."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess

import jax
import numpy as np
import pytest
from flax import nnx
from rounding_noise import RoundingNoise
from tiny_run import REPO, main_command, run_env, write_tiny_run

from sbsd_jax.data import pipeline
from sbsd_jax.data.feature_converter import assemble_rows
from sbsd_jax.data.features import TASK_LABEL, TASK_RATIONALE
from sbsd_jax.data.sources import load_dataset_splits
from sbsd_jax.experiments.config_files import load_config_file
from sbsd_jax.settings import from_config
from sbsd_jax.train import mesh as mesh_lib
from sbsd_jax.train import partitioning
from sbsd_jax.train import step as step_lib
from sbsd_jax.train.checkpointing import Checkpointer, CheckpointPolicy
from sbsd_jax.train.loop import train_and_evaluate
from sbsd_jax.train.metric_writers import read_metrics

DECODER = {
    "dataset": "synthetic_world",
    "data_source": "synthetic",
    "label_type": "llm",
    "model": "llama_tiny",
    "model_overrides.vocab_size": 264,  # byte ids (259), split evenly over tensor=2
    "decoder_template": "plain",
    "max_input_length": 48,
    "max_target_length": 80,
    "pack": True,
    "batch_size": 4,
    "compute_dtype": "float32",
    "learning_rate": 3e-3,
    "lr_schedule": "constant",
}
T5 = {
    "model": "t5_v1_1_tiny",
    "model_overrides.dropout_rate": 0.0,
    "model_overrides.vocab_size": 512,
    "model_overrides.num_encoder_layers": 1,
    "model_overrides.num_decoder_layers": 1,
    "max_input_length": 12,
    "max_target_length": 8,
    "batch_size": 4,
    "compute_dtype": "float32",
    "learning_rate": 3e-3,
    "lr_schedule": "constant",
}
QLORA = {"lora.enabled": True, "lora.rank": 4, "lora.base_qtype": "nf4", "lora.tile_size": 16}


def make_config(fields):
    config = load_config_file(str(REPO / "configs" / "base.py"))
    for name, value in fields.items():
        target = config
        *groups, leaf = name.split(".")
        for group in groups:
            target = target[group]
        target[leaf] = value
    return config


def build(fields, devices, **mesh):
    config = make_config(fields)
    config.mesh.update(mesh)
    spec = from_config.run_spec(config, check_data=False)
    program = step_lib.build_train_program(
        spec.model,
        spec.optimizer,
        spec.step,
        mesh_lib.make_mesh(spec.mesh, devices),
        spec.mesh.rules,
    )
    return spec, program


def causal_batches(spec, count):
    """The first `count` batches of the real pipeline (decoder-only rows)."""
    loaded = load_dataset_splits(spec.data.dataset)
    splits = {name: list(examples)[:32] for name, examples in loaded.splits.items()}
    prepared = pipeline.prepare_data(spec.data, splits=splits, causal=spec.causal)
    iterator = pipeline.make_train_iterator(prepared, spec.batching, host_rows=slice(0, None))
    return [next(iterator) for _ in range(count)]


def t5_batch(seed, rows=8):
    """A T5 batch of random sequences (even rows predict, odd rows explain), each ending in EOS."""
    rng = np.random.default_rng(seed)

    def tokens(low, high):
        return np.append(rng.integers(2, 300, rng.integers(low, high)), 1).astype(np.int32)

    return assemble_rows(
        [[row] for row in range(rows)],
        [tokens(3, 11) for _ in range(rows)],
        [tokens(1, 7) for _ in range(rows)],
        [TASK_LABEL if row % 2 == 0 else TASK_RATIONALE for row in range(rows)],
        max_input_length=T5["max_input_length"],
        max_target_length=T5["max_target_length"],
        num_rows=rows,
    )


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def flat(state):
    return {"/".join(map(str, path)): np.asarray(v) for path, v in nnx.to_flat_state(state)}


@pytest.mark.parametrize("family", ["decoder_only", "t5"])
def test_a_train_step_changes_only_the_adapters(family):
    fields = {**(DECODER if family == "decoder_only" else T5), **QLORA}
    spec, program = build(fields, jax.devices()[:1], data=1, fsdp=1, tensor=1)
    batch = causal_batches(spec, 1)[0] if family == "decoder_only" else t5_batch(0)
    key = jax.random.key(spec.step.seed)
    state, frozen = program.init_fn(key), program.frozen.from_key(key)
    adapters = flat(state.params)
    assert adapters and all(name.endswith(("lora_a", "lora_b")) for name in adapters)
    # The optimizer holds moments of the adapters only (plus scalars).
    moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    assert sorted(x.shape for x in moments) == sorted([x.shape for x in adapters.values()] * 2), (
        "Adam's mu and nu of each adapter, nothing else"
    )
    frozen_before = host(frozen)
    before = flat(program.model_params(state.params, frozen))

    state, metrics = program.train_step(
        state, partitioning.host_local_to_global(batch, program.mesh), frozen
    )
    assert np.isfinite(float(metrics["loss"]))
    after_adapters = flat(state.params)
    assert any(
        not np.array_equal(after_adapters[n], adapters[n]) for n in adapters if "lora_b" in n
    )
    jax.tree.map(np.testing.assert_array_equal, host(frozen), frozen_before)  # not donated
    after = flat(program.model_params(state.params, frozen))
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    adapted = {name.rsplit("/", 1)[0] for name in adapters}  # .../lora_a -> the kernel path
    assert changed and changed <= {f"{name}/value" for name in adapted} | adapted, changed


def run_fields(steps, export, fields):
    """A QLoRA decoder-only run over the 8 fake devices, checkpointing every 4 steps."""
    return {
        **DECODER,
        **QLORA,
        **fields,
        "batch_size": 8,  # over the 8 fake devices
        "eval_batch_size": 8,
        "num_train_steps": steps,
        "checkpoint_every": 4,
        "log_every": 1,
        "eval_every": 100000,
        "eval_splits": ("valid",),
        "eval_max_decode_length": 8,
        "export_hf_dir": str(export),
        "export_which": "final",
    }


def run_to(workdir, steps, export, fields):
    return train_and_evaluate(make_config(run_fields(steps, export, fields)), str(workdir))


def committed_steps(workdir):
    folder = workdir / "checkpoints"
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    )


def kill_once_step_4_is_committed(root, workdir, fields):
    """`python -m sbsd_jax.main` on the same run (to step 12: the constant schedule makes its
    first 8 steps those of a run to 8), SIGKILLed once checkpoint 4 is committed and step 5
    has begun; returns the step of its last progress line."""
    config = write_tiny_run(root, run_fields(12, root / "hf_unused", fields))
    process = subprocess.Popen(
        main_command(config, workdir),
        cwd=REPO,
        env=run_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = 0
    try:
        for line in process.stderr:
            if line.startswith("step "):
                last = int(line.split()[1].split("/")[0])
            if last >= 5 and 4 in committed_steps(workdir):
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before checkpoint 4 committed"
    return last


@pytest.mark.slow
def test_adapters_only_checkpoints_survive_sigkill_resume_bitwise_and_the_export_loads(tmp_path):
    fields = {"data_dir": str(tmp_path / "data")}
    straight = run_to(tmp_path / "straight", 8, tmp_path / "hf_straight", fields)
    killed_at = kill_once_step_4_is_committed(tmp_path / "killed", tmp_path / "resumed", fields)
    last = committed_steps(tmp_path / "resumed")[-1]
    assert last in (4, 8) and last <= killed_at  # what was committed before the kill, no more
    resumed = run_to(tmp_path / "resumed", 8, tmp_path / "hf_resumed", fields)
    assert resumed.start_step == last and straight.final_step == resumed.final_step == 8

    def losses(workdir):
        rows = read_metrics(workdir)
        return {row["step"]: row["train_loss"] for row in rows if "train_loss" in row}

    a, b = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert [a[s] for s in range(5, 9)] == [b[s] for s in range(5, 9)]  # bitwise
    # The merged exports (adapters + rebuilt nf4 base) are byte for byte the same.
    straight_bytes = (tmp_path / "hf_straight" / "model.safetensors").read_bytes()
    assert straight_bytes == (tmp_path / "hf_resumed" / "model.safetensors").read_bytes()

    # The checkpoint holds the adapters (and their optimizer state) only.
    spec, program = build({**DECODER, **QLORA}, jax.devices())
    with Checkpointer(str(tmp_path / "resumed" / "checkpoints"), CheckpointPolicy(2, 0)) as ckpt:
        restored = ckpt.restore(8, program.abstract_state_with_shardings)
    names = flat(restored.state.params)
    assert names and all(name.endswith(("lora_a", "lora_b")) for name in names)

    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf_resumed")
    record = json.loads(
        (tmp_path / "resumed" / "predictions" / "valid_step_8.jsonl").open().readline()
    )
    prompt = f"predict: Q: {record['input']}\nA:".encode()
    ids = torch.tensor([[b + 3 for b in prompt]])
    out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=1, pad_token_id=0)
    out = out[0, ids.shape[1] :].tolist()
    out = out[: out.index(1)] if 1 in out else out
    assert (
        bytes(t - 3 for t in out if t >= 3).decode(errors="replace").strip()
        == (record["prediction"])
    )


def train_decoder(program, spec, batches, transform=lambda batch: batch):
    key = jax.random.key(spec.step.seed)
    state = program.init_fn(key)
    frozen = () if program.frozen is None else (program.frozen.from_key(key),)
    history = []
    for batch in batches:
        global_batch = partitioning.host_local_to_global(transform(batch), program.mesh)
        state, metrics = program.train_step(state, global_batch, *frozen)
        history.append(jax.device_get(metrics))
    return state.params, history


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "qlora"])
def test_a_decoder_only_student_trains_the_same_on_8_devices_as_on_one(lora):
    assert len(jax.devices()) == 8, "conftest provides 8 fake CPU devices"
    fields = {**DECODER, **(QLORA if lora else {})}
    spec, single = build(fields, jax.devices()[:1], data=1, fsdp=1, tensor=1)
    batches = causal_batches(spec, 3)
    reference = train_decoder(single, spec, batches)
    noise = RoundingNoise.measure(
        lambda transform: train_decoder(single, spec, batches, transform), reference
    )
    _, sharded = build(fields, jax.devices(), data=2, fsdp=2, tensor=2)
    params, history = train_decoder(sharded, spec, batches)
    noise.assert_same_metrics(history, reference[1], ("loss", "label_loss", "rationale_loss"))
    noise.assert_same_params(params, reference[0])
    assert reference[1][-1]["loss"] < reference[1][0]["loss"]
    if lora:  # the frozen base is sharded by the rules too, not replicated
        specs = [s.spec for s in jax.tree.leaves(sharded.frozen.shardings)]
        assert any("fsdp" in str(spec) for spec in specs), specs


def test_a_pretrained_lora_start_reads_the_checkpoint_once_and_freezes_its_weights(
    tmp_path, monkeypatch
):
    from sbsd_jax.model import spec as model_spec
    from sbsd_jax.train import loop

    plain_spec, plain = build(DECODER, jax.devices()[:1], data=1, fsdp=1, tensor=1)
    published = plain.init_fn(jax.random.key(7)).params  # not the run's seed
    plain_spec.model.family.save_pretrained(published, plain.model_config, str(tmp_path / "hf"))
    family = model_spec.FAMILIES[plain_spec.model.architecture]
    reads = []

    def load_pretrained(path, dtype):
        reads.append(path)
        return family.load_pretrained(path, dtype)

    monkeypatch.setitem(
        model_spec.FAMILIES,
        plain_spec.model.architecture,
        dataclasses.replace(family, load_pretrained=load_pretrained),
    )
    fields = {
        **DECODER,
        "lora.enabled": True,
        "lora.rank": 4,
        "init_checkpoint": str(tmp_path / "hf"),
    }
    spec, program = build(fields, jax.devices()[:1], data=1, fsdp=1, tensor=1)
    state, frozen = loop._state_and_frozen_base(program, spec, restored=None)
    assert reads == [str(tmp_path / "hf")]  # one read serves the adapters' start and the base
    # lora_b starts at zero: the adapted student is the published model, weight for weight.
    merged = flat(program.model_params(state.params, frozen))
    expected = flat(published)
    assert merged.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(merged[name], value, err_msg=name)
