"""Decoder-only rows: prompt then target and EOS, loss on the target only, per-task ids, packing."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from tiny_tokenizers import tiny_byte_level_bpe

from sbsd_jax.data.causal_lm import (
    CAUSAL_LM_BATCH_KEYS,
    CAUSAL_LM_FEATURES,
    CausalFormat,
    CausalSequence,
    HfTokenizer,
    PromptTooLongError,
    TokenBoundaryError,
    answer_from_output,
    as_columns,
    assemble_causal_rows,
    assemble_sequences,
    causal_batch_shapes,
    count_truncated_targets,
    count_truncations,
    empty_causal_batch,
    encode_split,
    eval_prompts,
    first_fit_causal_batch,
    make_format,
    plain_texts,
)
from sbsd_jax.data.examples import Example
from sbsd_jax.data.feature_converter import SequenceTooLongError
from sbsd_jax.data.features import DECODER_KEYS, TASK_LABEL, TASK_RATIONALE
from sbsd_jax.data.vocabulary import make_vocabulary
from sbsd_jax.train.loss import multitask_loss

BYTES = make_vocabulary("byte")  # ids: pad 0, EOS 1, unk 2, byte b -> b + 3
EOS = 1
EXAMPLE = Example(
    id="q1",
    input="Where do fish live?",
    label="water",
    rationale="Fish breathe with gills",
)


def byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


# -- text -----------------------------------------------------------------------------------


def test_cot_text_is_the_phi3_seed_format_exactly():
    prompt, target = plain_texts("cot", "cqa", dataclasses.asdict(EXAMPLE))
    assert prompt + target == (
        "Q: Where do fish live?\nA: Fish breathe with gills So the answer is water"
    )
    assert prompt == "Q: Where do fish live?\nA:"


def test_step_by_step_prompts_carry_the_task_prefixes():
    fields = dataclasses.asdict(EXAMPLE)
    assert plain_texts("predict", "cqa", fields) == (
        "predict: Q: Where do fish live?\nA:",
        " water",
    )
    assert plain_texts("explain", "cqa", fields) == (
        "explain: Q: Where do fish live?\nA:",
        " Fish breathe with gills",
    )
    assert plain_texts("standard", "cqa", fields) == ("Q: Where do fish live?\nA:", " water")


def test_byte_sequence_is_prompt_then_target_then_eos():
    seq = make_format(BYTES).sequence("cot", "cqa", EXAMPLE)
    assert seq.prompt.tolist() == byte_ids("Q: Where do fish live?\nA:")
    assert seq.target.tolist() == byte_ids(" Fish breathe with gills So the answer is water") + [
        EOS
    ]
    assert seq.task_id == TASK_LABEL and not seq.truncated


# -- rows and loss --------------------------------------------------------------------------


def test_row_layout_shifts_targets_and_weights_only_target_tokens():
    prompt, target = np.array([10, 11, 12]), np.array([20, 21, EOS])
    batch = assemble_causal_rows([[0]], [prompt], [target], [TASK_RATIONALE], row_length=8)
    expected = {
        "decoder_input_tokens": [10, 11, 12, 20, 21, 1, 0, 0],
        "decoder_target_tokens": [11, 12, 20, 21, 1, 0, 0, 0],
        "decoder_segment_ids": [1, 1, 1, 1, 1, 1, 0, 0],
        "decoder_positions": [0, 1, 2, 3, 4, 5, 0, 0],
        "decoder_loss_weights": [0, 0, 1, 1, 1, 0, 0, 0],
        "decoder_task_ids": [0, 0, 1, 1, 1, 0, 0, 0],
    }
    assert set(batch) == set(CAUSAL_LM_BATCH_KEYS)
    for key, values in expected.items():
        np.testing.assert_array_equal(batch[key][0], values, err_msg=key)


def test_loss_is_the_mean_over_target_tokens_by_hand():
    seq = make_format(BYTES).sequence("standard", "cqa", EXAMPLE)  # ' water' + EOS: 7 targets
    length = len(seq) + 3
    batch = assemble_sequences([[0]], [seq], row_length=length)
    logits = np.random.default_rng(0).normal(size=(1, length, 260)).astype(np.float32)
    loss, metrics = multitask_loss(
        jnp.asarray(logits), {k: jnp.asarray(v) for k, v in batch.items()}, 0.5, "standard"
    )
    # By hand: slot j predicts token j + 1; the target's 7 tokens are predicted from the slots
    # p-1 .. p+5 (the prompt's last token predicts the target's first).
    tokens, p = seq.tokens, len(seq.prompt)
    nll = [-log_softmax(logits[0, j])[tokens[j + 1]] for j in range(p - 1, len(tokens) - 1)]
    assert len(nll) == len(seq.target) == 7
    np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-6)
    assert float(metrics["label_tokens"]) == 7 and float(metrics["rationale_tokens"]) == 0


def test_step_by_step_task_ids_per_token_give_per_task_normalisation():
    fmt = make_format(BYTES)
    sequences = encode_split(fmt, "step_by_step", "cqa", [EXAMPLE], max_length=128)
    predict, explain = sequences["predict"][0], sequences["explain"][0]
    batch = assemble_sequences([[0, 1]], [predict, explain], row_length=128)
    weights, task_ids = batch["decoder_loss_weights"][0], batch["decoder_task_ids"][0]
    assert weights[task_ids == TASK_LABEL].sum() == len(predict.target)
    assert weights[task_ids == TASK_RATIONALE].sum() == len(explain.target)
    # Task ids sit exactly on the slots that predict each sequence's target tokens.
    boundary = len(predict)
    assert set(task_ids[:boundary][weights[:boundary] > 0]) == {TASK_LABEL}
    assert set(task_ids[boundary:][weights[boundary:] > 0]) == {TASK_RATIONALE}

    logits = np.random.default_rng(1).normal(size=(1, 128, 260)).astype(np.float32)
    alpha = 0.3
    loss, _ = multitask_loss(
        jnp.asarray(logits), {k: jnp.asarray(v) for k, v in batch.items()}, alpha, "step_by_step"
    )
    nll = -np.take_along_axis(
        log_softmax(logits[0]), batch["decoder_target_tokens"][0][:, None], axis=-1
    )[:, 0]
    label = nll[(weights > 0) & (task_ids == TASK_LABEL)].mean()
    rationale = nll[(weights > 0) & (task_ids == TASK_RATIONALE)].mean()
    np.testing.assert_allclose(float(loss), alpha * label + (1 - alpha) * rationale, rtol=1e-6)


def test_packed_rows_equal_each_sequence_alone():
    rng = np.random.default_rng(2)
    sequences = [
        CausalSequence(
            prompt=rng.integers(0, 50, int(rng.integers(1, 9))).astype(np.int32),  # 0 is a token
            target=np.append(rng.integers(0, 50, int(rng.integers(0, 6))), EOS).astype(np.int32),
            task_id=int(rng.integers(0, 2)),
        )
        for _ in range(24)
    ]
    row_length = 20
    layout, taken = first_fit_causal_batch(
        ([len(s)] for s in sequences), num_rows=6, row_length=row_length
    )
    rows = [[offset for offset, _ in row] for row in layout]
    assert taken >= 8 and any(len(row) > 1 for row in rows)
    packed = assemble_sequences(rows, sequences, row_length=row_length, num_rows=6)
    alone = assemble_sequences([[i] for i in range(taken)], sequences, row_length=row_length)
    for r, row in enumerate(rows):
        at = 0
        for segment, index in enumerate(row, start=1):
            n = len(sequences[index])
            for key in CAUSAL_LM_BATCH_KEYS:
                got, want = packed[key][r, at : at + n], alone[key][index, :n]
                if key == "decoder_segment_ids":
                    want = want * segment
                np.testing.assert_array_equal(got, want, err_msg=f"{key} row {r} seq {index}")
            at += n
        assert not packed["decoder_segment_ids"][r, at:].any()
        assert not packed["decoder_loss_weights"][r, at:].any()  # padding carries no loss
    assert packed["decoder_loss_weights"].sum() == sum(len(s.target) for s in sequences[:taken])


# -- chat template ----------------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|> {{ m['content'] }} <|end|> "
    "{% else %}<|assistant|> {{ m['content'] }} <|end|> <nl> {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_hf_tokenizer(*, eos: str, chat_template: str | None):
    """A word-level Hugging Face tokenizer built locally (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>", "<nl>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words = "predict: explain: Q: A: Where do fish live? water Fish breathe with gills So the"
    tok.train_from_iterator(
        [words + " answer is"], trainers.WordLevelTrainer(special_tokens=specials)
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token="<pad>", unk_token="<unk>"
    )
    hf.chat_template = chat_template
    return hf


def test_chat_template_puts_the_loss_on_the_assistant_turn_only():
    hf = tiny_hf_tokenizer(eos="<eos>", chat_template=CHAT_TEMPLATE)
    fmt = make_format(hf)
    assert fmt.chat
    seq = fmt.sequence("predict", "cqa", EXAMPLE)
    ids = hf.convert_tokens_to_ids
    assert seq.prompt.tolist() == hf.encode(
        "<|user|> predict: Where do fish live? <|end|> <|assistant|>", add_special_tokens=False
    )
    # The assistant turn as rendered (content, end of turn, what follows it), then EOS.
    assert seq.target.tolist() == [ids("water"), ids("<|end|>"), ids("<nl>"), ids("<eos>")]
    batch = assemble_sequences([[0]], [seq], row_length=len(seq) + 2)
    learned = batch["decoder_target_tokens"][0][batch["decoder_loss_weights"][0] > 0]
    assert learned.tolist() == seq.target.tolist()
    # Evaluation decodes from exactly the prompt trained on.
    prompts = eval_prompts(fmt, "step_by_step", "cqa", [EXAMPLE], max_prompt_length=16)
    assert prompts.tokens[0, -prompts.lengths[0] :].tolist() == seq.prompt.tolist()


def test_chat_turn_is_cut_after_its_eos_when_the_template_writes_one():
    hf = tiny_hf_tokenizer(eos="<|end|>", chat_template=CHAT_TEMPLATE)  # Qwen-like: EOT = EOS
    seq = make_format(hf).sequence("explain", "cqa", EXAMPLE)
    words = [hf.convert_tokens_to_ids(w) for w in ("Fish", "breathe", "with", "gills", "<|end|>")]
    assert seq.target.tolist() == words  # no '<nl>' after the EOS, no second EOS


def test_byte_level_bpe_chat_turn_ends_at_its_end_of_turn():
    hf = tiny_byte_level_bpe(eos="<|im_end|>")  # an instruct model: end of turn is EOS
    seq = make_format(hf).sequence("predict", "cqa", EXAMPLE)
    prompt = "<|im_start|>user\npredict: Where do fish live?<|im_end|>\n<|im_start|>assistant\n"
    assert seq.prompt.tolist() == hf.encode(prompt, add_special_tokens=False)
    assert seq.target.tolist() == hf.encode("water<|im_end|>", add_special_tokens=False)
    base = make_format(tiny_byte_level_bpe(eos="<|endoftext|>")).sequence("predict", "cqa", EXAMPLE)
    assert base.target.tolist() == hf.encode(
        "water<|im_end|>\n<|endoftext|>", add_special_tokens=False
    )


def test_byte_level_bpe_plain_sequence_is_the_tokenization_of_the_whole_text():
    hf = tiny_byte_level_bpe(eos="<|endoftext|>")
    fmt = make_format(hf, template="plain")
    seq = fmt.sequence("cot", "cqa", EXAMPLE)
    text = "Q: Where do fish live?\nA: Fish breathe with gills So the answer is water"
    assert seq.tokens.tolist() == hf.encode(text, add_special_tokens=False) + [hf.eos_token_id]
    assert fmt.decode(seq.target) == " Fish breathe with gills So the answer is water"


def test_hf_tokenizer_without_template_uses_the_plain_format():
    hf = tiny_hf_tokenizer(eos="<eos>", chat_template=None)
    fmt = make_format(hf)
    assert not fmt.chat and isinstance(fmt.tokenizer, HfTokenizer)
    seq = fmt.sequence("cot", "cqa", EXAMPLE)
    text = "Q: Where do fish live?\nA: Fish breathe with gills So the answer is water"
    assert seq.tokens.tolist() == hf.encode(text, add_special_tokens=False) + [hf.eos_token_id]


def test_chat_template_requested_without_one_is_an_error():
    with pytest.raises(ValueError, match="no chat"):
        make_format(BYTES, template="chat")


# -- evaluation -------------------------------------------------------------------------------


def test_eval_prompt_is_the_training_prompt_left_padded():
    fmt = make_format(BYTES)
    predict = fmt.sequence("predict", "cqa", EXAMPLE)
    prompts = eval_prompts(fmt, "step_by_step", "cqa", [EXAMPLE], max_prompt_length=48)
    p = len(predict.prompt)
    assert prompts.kind == "predict" and prompts.lengths.tolist() == [p]
    assert prompts.tokens[0, -p:].tolist() == predict.prompt.tolist()
    assert not prompts.tokens[0, :-p].any() and not prompts.segment_ids[0, :-p].any()
    assert prompts.positions[0, -p:].tolist() == list(range(p))
    assert prompts.labels == ["water"] and prompts.ids == ["q1"]
    cot = eval_prompts(fmt, "cot", "cqa", [EXAMPLE], max_prompt_length=48)
    assert cot.tokens[0, -cot.lengths[0] :].tolist() == byte_ids("Q: Where do fish live?\nA:")


def test_decoded_outputs_give_the_answer():
    fmt = make_format(BYTES)
    generated = byte_ids(" Fish breathe with gills So the answer is (c) water.") + [EOS, 77, 78]
    text = fmt.decode(generated)
    assert text == " Fish breathe with gills So the answer is (c) water."
    assert answer_from_output("cot", "cqa", text) == "water"
    assert answer_from_output("cot", "gsm8k", " 3 + 4 = 7. The answer is 7.") == "7"
    assert answer_from_output("cot", "cqa", " no cue here") is None
    assert answer_from_output("step_by_step", "cqa", fmt.decode(byte_ids(" water"))) == "water"


# -- lengths ------------------------------------------------------------------------------------


def test_long_target_is_trimmed_keeping_eos_and_counted():
    fmt = make_format(BYTES)
    prompt_length = len(byte_ids("explain: Q: Where do fish live?\nA:"))
    # Room for 7 target tokens: ' water' + EOS fits exactly, the rationale does not.
    sequences = encode_split(fmt, "step_by_step", "cqa", [EXAMPLE], max_length=prompt_length + 7)
    explain, predict = sequences["explain"][0], sequences["predict"][0]
    assert len(explain) == prompt_length + 7 and explain.truncated
    assert explain.target.tolist() == byte_ids(" Fish ") + [EOS]
    assert not predict.truncated and predict.target.tolist() == byte_ids(" water") + [EOS]
    assert count_truncated_targets(sequences) == 1


def test_truncation_counts_per_split_for_the_data_report():
    fmt = make_format(BYTES)
    bare = dataclasses.replace(EXAMPLE, id="q2", rationale=None, label="a much longer label")
    splits = {"train": [EXAMPLE, bare], "valid": [EXAMPLE], "test": [EXAMPLE, bare]}
    prompt_length = len(byte_ids("predict: Q: Where do fish live?\nA:"))
    counts = count_truncations(
        fmt, "step_by_step", "cqa", splits, max_length=prompt_length + 7, max_prompt_length=34
    )
    # train: q1's rationale and q2's label are trimmed; eval: predict prompts are 34 tokens.
    assert counts == {"train": (0, 2), "valid": (0, 0), "test": (0, 0)}
    counts = count_truncations(
        fmt, "step_by_step", "cqa", splits, max_length=prompt_length + 1, max_prompt_length=33
    )
    assert counts == {"train": (2, 0), "valid": (1, 0), "test": (2, 0)}


def test_columns_are_the_per_kind_prompts_and_targets_with_empty_gaps():
    bare = dataclasses.replace(EXAMPLE, rationale=None)
    sequences = encode_split(
        make_format(BYTES), "step_by_step", "cqa", [bare, EXAMPLE], max_length=99
    )
    columns = as_columns(sequences)
    assert list(columns) == ["predict", "explain"]
    prompts, targets = columns["explain"]
    assert len(prompts[0]) == len(targets[0]) == 0
    assert targets[1].tolist() == sequences["explain"][1].target.tolist()


def test_prompt_without_room_for_a_target_is_an_error_naming_the_example():
    fmt = make_format(BYTES)
    prompt_length = len(byte_ids("explain: Q: Where do fish live?\nA:"))  # predict's too
    with pytest.raises(PromptTooLongError, match="2 prompt.*example q1 \\(predict\\)"):
        encode_split(fmt, "step_by_step", "cqa", [EXAMPLE], max_length=prompt_length + 1)
    encode_split(fmt, "step_by_step", "cqa", [EXAMPLE], max_length=prompt_length + 2)
    with pytest.raises(PromptTooLongError, match="q1"):
        eval_prompts(fmt, "standard", "cqa", [EXAMPLE], max_prompt_length=10)


def test_sequence_longer_than_the_row_is_an_error():
    with pytest.raises(SequenceTooLongError, match="9 tokens, rows hold 8"):
        first_fit_causal_batch([[4], [9]], num_rows=4, row_length=8)
    with pytest.raises(SequenceTooLongError, match="row 0 overflows"):
        assemble_causal_rows([[0, 1]], [[5, 6, 7]] * 2, [[8, EOS]] * 2, [0, 0], row_length=8)


def test_examples_without_a_rationale_get_no_explain_or_cot_sequence():
    bare = dataclasses.replace(EXAMPLE, rationale=None)
    fmt = make_format(BYTES)
    assert encode_split(fmt, "step_by_step", "cqa", [bare], max_length=99)["explain"] == [None]
    assert encode_split(fmt, "cot", "cqa", [bare], max_length=99)["cot"] == [None]


class _WholeTextTokenizer:
    """A tokenizer that merges across the prompt/target boundary: one id per whole text."""

    eos_id = 1
    start_ids = ()
    chat_template = None

    def encode_batch(self, texts):
        return [[len(text) + 2] for text in texts]

    def decode(self, ids):
        return ""

    def render_chat(self, messages, generation_prompt):
        raise AssertionError("plain format")


def test_tokenizer_merging_across_the_prompt_boundary_is_an_error():
    with pytest.raises(TokenBoundaryError, match="not a prefix"):
        CausalFormat(_WholeTextTokenizer()).sequence("standard", "cqa", EXAMPLE)


def test_batch_description_matches_the_decoder_keys_and_dtypes():
    assert set(CAUSAL_LM_BATCH_KEYS) == set(DECODER_KEYS)
    shapes = causal_batch_shapes("step_by_step", batch_size=4, row_length=16)
    assert shapes["decoder_input_tokens"] == ((8, 16), "int32")
    assert shapes["decoder_loss_weights"] == ((8, 16), "float32")
    batch = empty_causal_batch(3, 5)
    for feature in CAUSAL_LM_FEATURES:
        assert batch[feature.name].shape == (3, 5) and batch[feature.name].dtype == feature.dtype
    assert batch["decoder_loss_weights"].dtype == np.float32
