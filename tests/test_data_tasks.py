"""SeqIO tasks and mixture: each dataset x task kind, token by token on the byte vocabulary, and
the NLI '</s>' separator becoming the EOS id with a SentencePiece vocabulary."""

import numpy as np
import pytest

from sbsd_jax.data.examples import Example, cqa_input, nli_input
from sbsd_jax.data.feature_converter import TaskAwareEncDecFeatureConverter
from sbsd_jax.data.features import TASK_LABEL, TASK_RATIONALE, example_text, task_name
from sbsd_jax.data.tasks import eval_examples, register_tasks, tokenized_examples
from sbsd_jax.data.tensorflow_runtime import import_tensorflow
from sbsd_jax.data.vocabulary import EosStringSentencePieceVocabulary, make_vocabulary

tf = import_tensorflow()

import seqio  # noqa: E402

BYTE = make_vocabulary("byte")
EOS = 1


def byte_ids(text: str) -> list[int]:
    """ByteVocabulary: UTF-8 bytes shifted by 3 (0 pad, 1 EOS, 2 unk), then EOS."""
    return [b + 3 for b in text.encode("utf-8")] + [EOS]


CQA_INPUT = cqa_input("Where do you keep milk?", ["fridge", "shelf"])
ESNLI_INPUT = nli_input("A man sleeps.", "A person rests.")

# dataset -> (example, {kind: (inputs text, targets text)})
CASES = {
    "cqa": (
        Example("c1", CQA_INPUT, "fridge", rationale="Milk must stay cold."),
        {
            "predict": ("predict: " + CQA_INPUT, "fridge"),
            "explain": ("explain: " + CQA_INPUT, "Milk must stay cold."),
            "standard": (CQA_INPUT, "fridge"),
            "cot": (CQA_INPUT, "Milk must stay cold. So the answer is fridge"),
        },
    ),
    "svamp": (
        Example(
            "s1",
            "Tom splits 84 apples into 2 bags. How many per bag?",
            "( 84.0 / 2.0 )",
            rationale="84 / 2 = 42.",
        ),
        {
            "predict": (
                "predict: Tom splits 84 apples into 2 bags. How many per bag?",
                "( 84.0 / 2.0 )",
            ),
            "explain": (
                "explain: Tom splits 84 apples into 2 bags. How many per bag?",
                "84 / 2 = 42.",
            ),
            "standard": ("Tom splits 84 apples into 2 bags. How many per bag?", "( 84.0 / 2.0 )"),
            "cot": (
                "Tom splits 84 apples into 2 bags. How many per bag?",
                "84 / 2 = 42. The answer is ( 84.0 / 2.0 )",
            ),
        },
    ),
    "esnli": (
        Example("e1", ESNLI_INPUT, "entailment", rationale="Sleeping is resting."),
        {
            "predict": ("predict: A man sleeps.</s>A person rests.", "entailment"),
            "explain": ("explain: A man sleeps.</s>A person rests.", "Sleeping is resting."),
            "standard": ("A man sleeps.</s>A person rests.", "entailment"),
            "cot": ("A man sleeps.</s>A person rests.", "Sleeping is resting. Answer: entailment"),
        },
    ),
    "anli1": (
        Example(
            "a1", nli_input("It rains.", "It is dry."), "contradiction", rationale="Rain wets."
        ),
        {
            "predict": ("predict: It rains.</s>It is dry.", "contradiction"),
            "explain": ("explain: It rains.</s>It is dry.", "Rain wets."),
            "standard": ("It rains.</s>It is dry.", "contradiction"),
            "cot": ("It rains.</s>It is dry.", "Rain wets. So the answer is contradiction"),
        },
    ),
    "gsm8k": (
        Example("g1", "2 + 40?", "42", rationale="2 + 40 = 42."),
        {
            "predict": ("predict: 2 + 40?", "42"),
            "explain": ("explain: 2 + 40?", "2 + 40 = 42."),
            "standard": ("2 + 40?", "42"),
            "cot": ("2 + 40?", "2 + 40 = 42. The answer is 42"),
        },
    ),
    "jsonl": (
        Example("j1", "Is ice cold?", "yes", rationale="Ice is frozen water."),
        {
            "predict": ("predict: Is ice cold?", "yes"),
            "explain": ("explain: Is ice cold?", "Ice is frozen water."),
            "standard": ("Is ice cold?", "yes"),
            "cot": ("Is ice cold?", "Ice is frozen water. The answer is yes"),
        },
    ),
    "synthetic": (
        Example("y1", "3 * 5", "15", rationale="3 * 5 = 15."),
        {
            "predict": ("predict: 3 * 5", "15"),
            "explain": ("explain: 3 * 5", "3 * 5 = 15."),
            "standard": ("3 * 5", "15"),
            "cot": ("3 * 5", "3 * 5 = 15. The answer is 15"),
        },
    ),
}


def only_example(registered, kind, split="train", max_input_length=256, max_target_length=256):
    (example,) = tokenized_examples(
        registered,
        kind,
        split,
        max_input_length=max_input_length,
        max_target_length=max_target_length,
    )
    return example


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_every_task_kind_of_every_dataset_token_by_token(dataset):
    example, expected = CASES[dataset]
    registered = register_tasks(dataset, {"train": [example]}, BYTE)
    for kind, (inputs_text, targets_text) in expected.items():
        assert example_text(kind, dataset, vars(example)) == (inputs_text, targets_text)
        tokens = only_example(registered, kind)
        assert tokens["inputs"].tolist() == byte_ids(inputs_text), kind
        assert tokens["targets"].tolist() == byte_ids(targets_text), kind
        assert tokens["task_id"] == (TASK_RATIONALE if kind == "explain" else TASK_LABEL)
        assert tokens["label"].decode() == example.label  # raw label passes through
        assert tokens["id"].decode() == example.id
        assert tokens["example_index"] == 0


def test_predict_prefix_is_spelled_in_bytes():
    registered = register_tasks("gsm8k", {"train": [Example("1", "x", "7")]}, BYTE)
    tokens = only_example(registered, "predict")
    # p r e d i c t : ␠ x EOS
    assert tokens["inputs"].tolist() == [115, 117, 104, 103, 108, 102, 119, 61, 35, 123, 1]
    assert tokens["targets"].tolist() == [58, 1]


def test_truncation_keeps_the_eos_like_hugging_face():
    registered = register_tasks("jsonl", {"train": [Example("1", "abcdefghij", "klmnop")]}, BYTE)
    tokens = only_example(registered, "standard", max_input_length=5, max_target_length=3)
    assert tokens["inputs"].tolist() == byte_ids("abcd")
    assert tokens["targets"].tolist() == byte_ids("kl")


def test_explain_and_cot_skip_examples_without_rationale_instead_of_blank_targets():
    examples = [
        Example("1", "with", "a", rationale="because"),
        Example("2", "without", "b", rationale=None, parse_error="no answer cue"),
    ]
    registered = register_tasks("jsonl", {"train": examples}, BYTE)
    lengths = {"max_input_length": 64, "max_target_length": 64}

    def indices(kind):
        rows = tokenized_examples(registered, kind, "train", **lengths)
        return [int(row["example_index"]) for row in rows]

    assert indices("predict") == [0, 1]
    assert indices("standard") == [0, 1]
    assert indices("explain") == [0]
    assert indices("cot") == [0]


def test_step_by_step_mixture_holds_predict_and_explain():
    example, _ = CASES["cqa"]
    registered = register_tasks("cqa", {"train": [example]}, BYTE)
    mixture = seqio.get_mixture_or_task(registered.mixture)
    assert registered.mixture == "cqa_step_by_step"
    assert sorted(task.name for task in mixture.tasks) == ["cqa_explain", "cqa_predict"]
    rows = mixture.get_dataset(
        {"inputs": 256, "targets": 256}, split="train", shuffle=False, num_epochs=None, seed=0
    )
    # Sampled 1:1 from both tasks; the task identity survives the mixture.
    task_ids = {int(row["task_id"]) for row in rows.take(20).as_numpy_iterator()}
    assert task_ids == {TASK_LABEL, TASK_RATIONALE}


def test_seqio_users_get_packed_batches_with_task_ids_from_the_mixture():
    example, _ = CASES["svamp"]
    registered = register_tasks("svamp", {"train": [example] * 4}, BYTE)
    rows = seqio.get_dataset(
        registered.mixture,
        task_feature_lengths={"inputs": 256, "targets": 64},
        feature_converter=TaskAwareEncDecFeatureConverter(pack=True),
        num_epochs=None,
        seed=0,
    )
    row = next(rows.as_numpy_iterator())
    assert row["encoder_segment_ids"].max() >= 2
    real = row["decoder_loss_weights"] > 0
    assert set(row["decoder_task_ids"][real]) == {TASK_LABEL, TASK_RATIONALE}
    rationale_tokens = row["decoder_task_ids"] == TASK_RATIONALE
    segments = set(row["decoder_segment_ids"][rationale_tokens])
    for segment in segments:  # a rationale segment is exactly the explain target
        tokens = row["decoder_target_tokens"][row["decoder_segment_ids"] == segment]
        assert tokens.tolist() == byte_ids("84 / 2 = 42.")


def test_registering_again_replaces_and_a_suffix_keeps_configurations_apart():
    first = register_tasks("jsonl", {"train": [Example("1", "old", "a")]}, BYTE)
    second = register_tasks("jsonl", {"train": [Example("1", "new", "a")]}, BYTE)
    other = register_tasks("jsonl", {"train": [Example("1", "other", "a")]}, BYTE, name_suffix="x1")
    assert first.task_names == second.task_names
    assert (
        other.task_names["standard"] == task_name("jsonl", "standard", "x1") == "jsonl_standard_x1"
    )
    assert only_example(second, "standard")["inputs"].tolist() == byte_ids("new")
    assert only_example(other, "standard")["inputs"].tolist() == byte_ids("other")


def test_eval_examples_pair_model_inputs_with_raw_labels_and_ids():
    test = [Example("t1", "one", "( 1.0 + 2.0 )"), Example("t2", "two", "( 2.0 * 3.0 )")]
    registered = register_tasks("svamp", {"train": test[:1], "test": test}, BYTE)
    evaluation = eval_examples(registered, "step_by_step", "test", max_input_length=16)
    assert evaluation.labels == ["( 1.0 + 2.0 )", "( 2.0 * 3.0 )"]
    assert evaluation.ids == ["t1", "t2"]
    assert evaluation.encoder_input_tokens.shape == (2, 16)
    assert evaluation.encoder_input_tokens.dtype == np.int32
    expected = byte_ids("predict: two")
    assert evaluation.encoder_input_tokens[1].tolist() == expected + [0] * (16 - len(expected))
    # standard and cot models read the plain input (no rationale needed at test time).
    for method in ("standard", "cot"):
        plain = eval_examples(registered, method, "test", max_input_length=16)
        assert plain.encoder_input_tokens[0].tolist()[:4] == byte_ids("one")


@pytest.fixture(scope="module")
def tiny_sentencepiece(tmp_path_factory):
    """A SentencePiece model with T5's special ids (pad 0, EOS 1, unk 2) trained on 4 lines."""
    import sentencepiece

    folder = tmp_path_factory.mktemp("spm")
    lines = [
        "A man sleeps on a bench.",
        "A person rests outside.",
        "The dog runs in the park.",
        "Two kids play soccer.",
    ] * 20
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(folder / "spiece"),
        vocab_size=60,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return str(folder / "spiece.model")


def test_eos_string_becomes_the_eos_id_with_sentencepiece(tiny_sentencepiece):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=tiny_sentencepiece)
    vocabulary = make_vocabulary(tiny_sentencepiece)
    assert isinstance(vocabulary, EosStringSentencePieceVocabulary)
    premise, hypothesis = processor.encode("A man sleeps."), processor.encode("A person rests.")
    expected = premise + [EOS] + hypothesis
    assert vocabulary.encode(ESNLI_INPUT) == expected
    assert vocabulary.encode_tf(tf.constant(ESNLI_INPUT)).numpy().tolist() == expected
    batched = vocabulary.encode_tf(tf.constant([ESNLI_INPUT, "A man sleeps."]))
    assert batched.to_list() == [expected, premise]
    assert vocabulary.encode("A man sleeps.") == premise  # no separator: plain SentencePiece
    # Through the task: EOS in the middle of the input, and at the end.
    registered = register_tasks(
        "esnli", {"train": [Example("e", ESNLI_INPUT, "entailment")]}, vocabulary
    )
    tokens = only_example(registered, "standard")
    assert tokens["inputs"].tolist() == expected + [EOS]
    assert tokens["targets"].tolist() == processor.encode("entailment") + [EOS]


def test_eos_string_ids_match_hugging_face_t5_tokenizer(tiny_sentencepiece, tmp_path):
    transformers = pytest.importorskip("transformers")
    import shutil

    shutil.copy(tiny_sentencepiece, tmp_path / "spiece.model")
    hf = transformers.T5Tokenizer.from_pretrained(str(tmp_path), extra_ids=0, local_files_only=True)
    vocabulary = make_vocabulary(tiny_sentencepiece)
    for text in (ESNLI_INPUT, "A man sleeps. </s> A person rests.", "</s>dog", "dog</s>"):
        assert vocabulary.encode(text) + [EOS] == hf(text)["input_ids"], text


def test_byte_vocabulary_keeps_the_separator_as_bytes():
    assert BYTE.encode("a</s>b") == byte_ids("a</s>b")[:-1]


def test_unknown_vocabulary_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither 'byte' nor an existing SentencePiece"):
        make_vocabulary(str(tmp_path / "missing.model"))
