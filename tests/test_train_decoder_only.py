"""Decoder-only students through the trainer: `python -m sbsd_jax.main` on a llama_tiny-shaped
student (byte vocabulary) and the embedded synthetic world task, and the causal-LM batch the
real pipeline feeds the step (loss on target tokens only, normalised per task)."""

from __future__ import annotations

import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_run import REPO, main_command, run_env, write_tiny_run
from tiny_tokenizers import tiny_byte_level_bpe

from sbsd_jax.data import pipeline
from sbsd_jax.data.causal_lm import PLAIN_ANSWER, PLAIN_QUESTION
from sbsd_jax.data.features import CAUSAL_BATCH_KEYS, TASK_LABEL, TASK_RATIONALE
from sbsd_jax.data.sources import load_dataset_splits
from sbsd_jax.experiments.config_files import load_config_file
from sbsd_jax.settings.from_config import run_spec
from sbsd_jax.train import loss as loss_lib
from sbsd_jax.train.metric_writers import read_metrics

BYTE_OFFSET = 3  # seqio.ByteVocabulary: pad, EOS, UNK, then the bytes

# A two-layer 64-wide Llama-shaped student on step_by_step rows, packed, plain template.
DECODER_FIELDS = {
    "dataset": "synthetic_world",
    "data_source": "synthetic",
    "label_type": "llm",
    "model": "llama_tiny",
    "model_overrides.vocab_size": 259,
    "decoder_template": "plain",
    "max_input_length": 64,
    "max_target_length": 96,
    "pack": True,
    "compute_dtype": "float32",
    "learning_rate": 3e-3,
    "num_train_steps": 30,
    "log_every": 10,
    "eval_splits": ("valid",),
    "eval_max_decode_length": 12,
    "checkpoint_every": 15,
}


def causal_spec(**fields):
    config = load_config_file(str(REPO / "configs" / "base.py"))
    for name, value in {**DECODER_FIELDS, **fields}.items():
        target = config
        *groups, leaf = name.split(".")
        for group in groups:
            target = target[group]
        target[leaf] = value
    return run_spec(config)


@pytest.mark.slow
def test_main_trains_evaluates_checkpoints_and_exports_a_decoder_only_student(tmp_path):
    config = write_tiny_run(tmp_path, DECODER_FIELDS)
    workdir, export = tmp_path / "run", tmp_path / "hf"
    result = subprocess.run(
        main_command(config, workdir, f"--config.export_hf_dir={export}"),
        cwd=REPO,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    losses = [row["train_loss"] for row in read_metrics(workdir) if "train_loss" in row]
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0], losses
    mfu = json.loads((workdir / "mfu.json").read_text())  # the decoder-only FLOP formula
    assert mfu["windows"] == 2 and 0 < mfu["mfu"] < 1, mfu
    efficiency = json.loads((workdir / "efficiency.json").read_text())  # on the valid prompts
    assert efficiency["latency_seconds_per_example"] > 0 and efficiency["compiled_decode_bytes"] > 0
    assert efficiency["throughput_examples_per_second"] > 0 and efficiency["parameters"] > 0
    assert any("valid_accuracy" in row for row in read_metrics(workdir))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "15",
        "30",
    ]
    records = [
        json.loads(line) for line in (workdir / "predictions" / "valid_step_30.jsonl").open()
    ]
    assert len(records) == 38 and {"prediction", "label", "correct"} <= set(records[0])

    # The export is a Llama transformers loads; its greedy output on the predict prompt is the
    # prediction the trainer's own decoder wrote for that example.
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(export)
    assert type(model).__name__ == "LlamaForCausalLM"
    for record in records[:4]:
        prompt = f"predict: {PLAIN_QUESTION}{record['input']}{PLAIN_ANSWER}".encode()
        ids = torch.tensor([[b + BYTE_OFFSET for b in prompt]])
        out = model.generate(
            ids, max_new_tokens=12, do_sample=False, eos_token_id=1, pad_token_id=0
        )[0, ids.shape[1] :].tolist()
        out = out[: out.index(1)] if 1 in out else out
        text = bytes(t - BYTE_OFFSET for t in out if t >= BYTE_OFFSET).decode(errors="replace")
        assert text.strip() == record["prediction"], record


def real_batch(**fields):
    """The first training batch of the real pipeline for a decoder-only spec, with the
    prepared data."""
    spec = causal_spec(**fields)
    loaded = load_dataset_splits(spec.data.dataset)
    splits = {name: list(examples)[:24] for name, examples in loaded.splits.items()}
    prepared = pipeline.prepare_data(spec.data, splits=splits, causal=spec.causal)
    iterator = pipeline.make_train_iterator(
        prepared, spec.batching, process_index=0, process_count=1
    )
    return spec, prepared, next(iterator)


def test_the_pipeline_puts_the_loss_on_target_tokens_and_eos_only():
    spec, prepared, batch = real_batch(pack=False, batch_size=4)
    assert set(batch) == set(CAUSAL_BATCH_KEYS)
    assert all(v.shape == (8, spec.causal.row_length) for v in batch.values())
    fmt = prepared.causal_format
    for row in range(8):
        kind = prepared.train_set.kinds[row % 2]
        tokens = batch["decoder_input_tokens"][row]
        n = int((batch["decoder_segment_ids"][row] > 0).sum())
        text = fmt.decode(tokens[:n])
        prompt_end = text.index(PLAIN_ANSWER) + len(PLAIN_ANSWER)
        prompt_tokens = len(text[:prompt_end].encode())  # bytes: one token each
        weights = batch["decoder_loss_weights"][row]
        # Slot j predicts token j + 1: weights on slots prompt-1 .. n-2, nothing else.
        expected = np.zeros_like(weights)
        expected[prompt_tokens - 1 : n - 1] = 1.0
        np.testing.assert_array_equal(weights, expected)
        assert text.startswith(f"{kind}: {PLAIN_QUESTION}")
        assert tokens[n - 1] == 1  # EOS, trained as the last target
        np.testing.assert_array_equal(batch["decoder_target_tokens"][row][: n - 1], tokens[1:n])
        task = TASK_LABEL if kind == "predict" else TASK_RATIONALE
        assert set(batch["decoder_task_ids"][row][weights > 0].tolist()) == {task}


def test_a_tokenizer_with_a_chat_template_gives_chat_rows_with_the_loss_on_the_reply(tmp_path):
    folder = tmp_path / "tokenizer"
    tiny_byte_level_bpe(eos="<|im_end|>").save_pretrained(folder)  # an instruct model's
    spec, prepared, batch = real_batch(
        pack=False,
        batch_size=4,
        vocabulary=str(folder),
        decoder_template="auto",
        max_input_length=160,
        **{"model_overrides.vocab_size": 320},
    )
    fmt = prepared.causal_format
    assert fmt.chat
    hf = fmt.tokenizer.tokenizer

    def text(ids):  # special tokens shown
        return hf.decode(ids.tolist(), skip_special_tokens=False)

    for row in range(8):
        kind = prepared.train_set.kinds[row % 2]
        n = int((batch["decoder_segment_ids"][row] > 0).sum())
        tokens = batch["decoder_input_tokens"][row][:n]
        learned = batch["decoder_target_tokens"][row][batch["decoder_loss_weights"][row] > 0]
        prompt = tokens[: n - len(learned)]
        # The user turn is the task prompt, rendered by the template; the reply and its end of
        # turn (the EOS) are all the loss sees.
        assert text(prompt).startswith(f"<|im_start|>user\n{kind}: ")
        assert text(prompt).endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert text(learned).endswith("<|im_end|>") and "<|im_start|>" not in text(learned)
        np.testing.assert_array_equal(np.concatenate([prompt, learned]), tokens)


def test_packed_rows_normalise_the_loss_per_task_by_hand():
    spec, _, batch = real_batch(pack=True, batch_size=4)
    assert (batch["decoder_segment_ids"].max(axis=1) > 1).any()  # really packed
    logits = jax.random.normal(jax.random.key(0), (*batch["decoder_input_tokens"].shape, 259))
    loss, metrics = loss_lib.multitask_loss(
        logits, {k: jnp.asarray(v) for k, v in batch.items()}, 0.3, "step_by_step"
    )
    log_p = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    nll = -np.take_along_axis(log_p, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    weights, tasks = batch["decoder_loss_weights"], batch["decoder_task_ids"]
    per_task = [
        float((nll * weights * (tasks == task)).sum() / (weights * (tasks == task)).sum())
        for task in (TASK_LABEL, TASK_RATIONALE)
    ]
    np.testing.assert_allclose(float(metrics["label_loss"]), per_task[0], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["rationale_loss"]), per_task[1], rtol=1e-5)
    np.testing.assert_allclose(float(loss), 0.3 * per_task[0] + 0.7 * per_task[1], rtol=1e-5)


def test_decoder_only_settings_errors_name_the_field():
    from sbsd_jax.settings.spec import ConfigError

    with pytest.raises(ConfigError) as error:
        causal_spec(
            decoder_template="jinja",
            decoder_row_length=2,
            **{"lora.enabled": True, "lora.dropout": 0.1},
        )
    lines = str(error.value).splitlines()[1:]
    assert len(lines) == 3, lines
    assert "config.decoder_template='jinja'" in lines[1]
    assert "config.decoder_row_length=2" in lines[2]
    assert "config.lora: config.lora.dropout must be 0.0" in lines[0]
    with pytest.raises(ConfigError, match="config.model_overrides: .*dropout_rate"):
        causal_spec(**{"model_overrides.dropout_rate": 0.1})  # a T5 field


def test_row_length_defaults_to_input_plus_target_and_seqio_special_ids():
    spec = causal_spec()
    assert spec.causal.row_length == spec.batching.row_length == 64 + 96
    config = spec.model.named_config()
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_ids) == (0, None, (1,))
    assert causal_spec(decoder_row_length=128).batching.row_length == 128
