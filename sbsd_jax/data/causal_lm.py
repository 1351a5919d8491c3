"""Task (inputs, targets) pairs -> decoder-only (causal LM) rows: prompt, then target and EOS.

The same tasks as the T5 students (`features.TASK_KINDS`: predict and explain with their
prefixes for distilling step-by-step, standard, cot), in one of two text formats:

- plain: prompt `<prefix>Q: <input>\\nA:`, target ` <target>`. For cot this is the Phi-3 seed's
  `Q: <question>\\nA: <rationale> <answer cue> <label>`; predict is
  `predict: Q: <question>\\nA: <label>`, explain `explain: Q: <question>\\nA: <rationale>`.
- chat (a Hugging Face tokenizer with a `chat_template`): user turn `<prefix><input>`, assistant
  turn `<target>`; the prompt is the rendered user turn plus the generation prompt.

Tokens. The full text is tokenised once and the prompt once; the prompt's tokens must be a
prefix of the full text's (else `TokenBoundaryError`), so the tokens trained on are the ones the
tokenizer gives the whole text, and the prompt decoded at evaluation is token for token the
prompt trained on. Every sequence ends in the tokenizer's EOS (a chat turn is cut after its last
EOS, or gets one appended), so the student learns to stop.

Shift convention (Hugging Face's and MaxText's, not seqio's): a sequence of n tokens t_0..t_{n-1}
takes n slots of a row; `decoder_input_tokens` are t_0..t_{n-1}, `decoder_target_tokens` the
same shifted left by one within the segment (t_1..t_{n-1}, then 0), so slot j predicts t_{j+1}.
Nothing is inserted (seqio's converters put id 0 before every sequence as a decoder start,
which is a real token in pretrained decoder vocabularies), and the loss on one unpacked row is
transformers' `labels=` loss. `decoder_loss_weights` are 1 exactly on the slots whose next token
is a target token or the EOS, `decoder_task_ids` carry the task's TASK_LABEL / TASK_RATIONALE
there, so `train.loss.multitask_loss` normalises per task as for T5.

Packing: first-fit (`feature_converter.first_fit_batch`, the T5 pipeline's algorithm, on total
sequence lengths); each packed sequence has its own segment id (1, 2, ...) and positions from 0,
so with a segment-aware causal mask a packed row computes what each sequence alone would.
seqio's Decoder/PrefixLM converters are not used: they insert the id-0 decoder start and measure
sequences by their non-zero tokens.

Lengths: a training sequence longer than the row keeps its prompt and has its target trimmed
(EOS kept), counted in `truncated`; a prompt that leaves no room for one target token and EOS is
an error (`PromptTooLongError`), as is a sequence too long for the row it is assembled into.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np

from sbsd_jax.data.examples import Example
from sbsd_jax.data.feature_converter import SequenceTooLongError, first_fit_batch
from sbsd_jax.data.features import (
    DECODER_TEMPLATES,
    METHOD_EVAL_TASK,
    METHOD_TASKS,
    TASK_KINDS,
    TASK_LABEL,
    TASK_RATIONALE,
    TaskKind,
    answer_cue,
    check_method,
)
from sbsd_jax.data.features import causal_batch_shapes as causal_batch_shapes  # the contract
from sbsd_jax.data.teacher_parsing import extract_cot_answer

# ----------------------------------------------------------------------------------------------
# The batch


@dataclasses.dataclass(frozen=True)
class BatchFeature:
    """One key of the decoder-only batch: every array is [rows, row_length]."""

    name: str
    dtype: type
    meaning: str


CAUSAL_LM_FEATURES: tuple[BatchFeature, ...] = (
    BatchFeature(
        "decoder_input_tokens",
        np.int32,
        "each segment's prompt, target and EOS; 0 on padding (0 may be a real id: mask by "
        "segment ids, never by token)",
    ),
    BatchFeature(
        "decoder_target_tokens",
        np.int32,
        "the next token: decoder_input_tokens shifted left by one within each segment, 0 at a "
        "segment's last slot and on padding",
    ),
    BatchFeature(
        "decoder_segment_ids",
        np.int32,
        "1, 2, ... per packed sequence, 0 on padding; attention is causal within a segment",
    ),
    BatchFeature("decoder_positions", np.int32, "0, 1, ... from each segment's start; 0 on pad"),
    BatchFeature(
        "decoder_loss_weights",
        np.float32,
        "1.0 where the next token is a target token or the EOS, else 0.0",
    ),
    BatchFeature(
        "decoder_task_ids",
        np.int32,
        "TASK_LABEL / TASK_RATIONALE of the sequence where the loss weight is 1, else 0",
    ),
)
# The T5 batch's decoder keys (features.DECODER_KEYS), so the loss reads both; no encoder keys.
CAUSAL_LM_BATCH_KEYS: tuple[str, ...] = tuple(feature.name for feature in CAUSAL_LM_FEATURES)


def empty_causal_batch(num_rows: int, row_length: int) -> dict[str, np.ndarray]:
    """All-pad decoder-only batch with every key, shape and dtype of CAUSAL_LM_FEATURES."""
    return {f.name: np.zeros((num_rows, row_length), dtype=f.dtype) for f in CAUSAL_LM_FEATURES}


# ----------------------------------------------------------------------------------------------
# Text


PLAIN_QUESTION = "Q: "
PLAIN_ANSWER = "\nA:"
PLAIN_TARGET_SEPARATOR = " "
Template = Literal["auto", "plain", "chat"]
TEMPLATES: tuple[str, ...] = DECODER_TEMPLATES


def _task(kind: str | TaskKind) -> TaskKind:
    if isinstance(kind, TaskKind):
        return kind
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(TASK_KINDS)}")
    return TASK_KINDS[kind]


def _fields(example: Example | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(example, Example):
        return {"input": example.input, "label": example.label, "rationale": example.rationale}
    return example


def task_texts(kind: str | TaskKind, dataset: str, fields: Mapping[str, Any]) -> tuple[str, str]:
    """(user text, assistant text): the task's prefixed input and its target (features.py)."""
    task = _task(kind)
    if task.needs_rationale and not fields.get("rationale"):
        raise ValueError(f"task {task.name!r} needs a rationale, example has none")
    return task.inputs(fields), task.target(fields, answer_cue(dataset))


def plain_texts(kind: str | TaskKind, dataset: str, fields: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, target) of the plain format; prompt + target is the sequence's text."""
    task = _task(kind)
    _, target = task_texts(task, dataset, fields)
    prompt = task.prefix + PLAIN_QUESTION + fields["input"] + PLAIN_ANSWER
    return prompt, PLAIN_TARGET_SEPARATOR + target


# ----------------------------------------------------------------------------------------------
# Tokenizers


class TextTokenizer(Protocol):
    """What the formats need from a tokenizer (adapters below for seqio and Hugging Face)."""

    eos_id: int
    start_ids: tuple[int, ...]  # what a plain sequence starts with (a BOS, or nothing)
    chat_template: str | None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...  # no BOS / EOS added

    def decode(self, ids: Sequence[int]) -> str: ...

    def render_chat(
        self, messages: Sequence[Mapping[str, str]], generation_prompt: bool
    ) -> str: ...


@dataclasses.dataclass(frozen=True)
class SeqioTokenizer:
    """A seqio vocabulary (bytes, SentencePiece): no BOS, no chat template."""

    vocabulary: Any  # seqio.Vocabulary
    start_ids: tuple[int, ...] = ()
    chat_template: str | None = None

    @property
    def eos_id(self) -> int:
        return int(self.vocabulary.eos_id)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [[int(i) for i in self.vocabulary.encode(text)] for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self.vocabulary.decode([int(i) for i in ids])

    def render_chat(self, messages, generation_prompt):
        raise ValueError("a seqio vocabulary has no chat template; use template='plain'")


@dataclasses.dataclass(frozen=True)
class HfTokenizer:
    """A Hugging Face tokenizer; start_ids are what it puts before a text (BOS for Llama and
    Gemma, nothing for Qwen), without any EOS its post-processor appends. Rendered chat text
    is encoded without special tokens: the template writes its own BOS."""

    tokenizer: Any  # transformers.PreTrainedTokenizerBase

    def __post_init__(self) -> None:
        if self.tokenizer.eos_token_id is None:
            raise ValueError("the Hugging Face tokenizer has no eos_token; set one to train on it")

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @functools.cached_property
    def start_ids(self) -> tuple[int, ...]:
        ids = self.tokenizer.encode("", add_special_tokens=True)
        return tuple(int(i) for i in ids if i != self.eos_id)

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        # verbose=False: texts longer than model_max_length are fine here (rows set the limit).
        encoded = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [[int(i) for i in ids] for ids in encoded]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def render_chat(self, messages: Sequence[Mapping[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=generation_prompt
        )


def as_text_tokenizer(tokenizer: Any) -> TextTokenizer:
    """seqio.Vocabulary -> SeqioTokenizer, a transformers tokenizer -> HfTokenizer."""
    if isinstance(tokenizer, (SeqioTokenizer, HfTokenizer)):
        return tokenizer
    if hasattr(tokenizer, "apply_chat_template"):
        return HfTokenizer(tokenizer)
    if hasattr(tokenizer, "eos_id") and hasattr(tokenizer, "encode"):
        return SeqioTokenizer(tokenizer)
    raise TypeError(f"not a seqio vocabulary or Hugging Face tokenizer: {type(tokenizer)!r}")


# ----------------------------------------------------------------------------------------------
# Sequences


class TokenBoundaryError(ValueError):
    """The prompt's tokens are not a prefix of the full text's: the tokenizer merges across the
    prompt/target boundary, so the prompt decoded at evaluation would not be the one trained."""


class PromptTooLongError(ValueError):
    """A prompt that leaves no room in the row for a target token and EOS."""


@dataclasses.dataclass(frozen=True)
class CausalSequence:
    """One task sequence: prompt tokens, then target tokens ending in EOS.

    truncated: the target was trimmed to fit the row (EOS kept)."""

    prompt: np.ndarray  # int32 [p], p >= 1
    target: np.ndarray  # int32 [t], t >= 1, ends in EOS
    task_id: int
    truncated: bool = False

    def __post_init__(self) -> None:
        if len(self.prompt) < 1 or len(self.target) < 1:
            raise ValueError(
                f"a causal sequence needs a prompt and a target token, got "
                f"{len(self.prompt)} / {len(self.target)}"
            )
        if self.task_id not in (TASK_LABEL, TASK_RATIONALE):
            raise ValueError(f"task_id must be TASK_LABEL or TASK_RATIONALE, got {self.task_id}")

    @property
    def tokens(self) -> np.ndarray:
        return np.concatenate([self.prompt, self.target]).astype(np.int32)

    def __len__(self) -> int:
        return len(self.prompt) + len(self.target)


def _split_at_prompt(prompt_ids: list[int], full_ids: list[int], what: str) -> list[int]:
    if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
        raise TokenBoundaryError(
            f"{what}: the prompt's {len(prompt_ids)} tokens are not a prefix of the full text's "
            f"{len(full_ids)} tokens (the tokenizer merges across the prompt/target boundary)"
        )
    return full_ids[len(prompt_ids) :]


@dataclasses.dataclass(frozen=True)
class CausalFormat:
    """How task texts become prompt / target tokens: plain, or the tokenizer's chat template.

    template 'auto' is 'chat' when the tokenizer has a chat template, else 'plain'.
    """

    tokenizer: TextTokenizer
    template: Template = "auto"

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {self.template!r}")
        if self.template == "chat" and not self.tokenizer.chat_template:
            raise ValueError("template='chat' but the tokenizer has no chat_template")

    @property
    def chat(self) -> bool:
        return self.template == "chat" or (
            self.template == "auto" and bool(self.tokenizer.chat_template)
        )

    def texts(
        self, kind: str | TaskKind, dataset: str, fields: Mapping[str, Any]
    ) -> tuple[str, str]:
        """(prompt text, full text) of one example's task sequence."""
        if not self.chat:
            prompt, target = plain_texts(kind, dataset, fields)
            return prompt, prompt + target
        user, assistant = task_texts(kind, dataset, fields)
        messages = [{"role": "user", "content": user}]
        prompt = self.tokenizer.render_chat(messages, generation_prompt=True)
        full = self.tokenizer.render_chat(
            [*messages, {"role": "assistant", "content": assistant}], generation_prompt=False
        )
        if not full.startswith(prompt):
            raise TokenBoundaryError(
                "the chat template renders the user turn differently once an assistant turn "
                "follows, so the prompt is not a prefix of the conversation"
            )
        return prompt, full

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        start = [] if self.chat else list(self.tokenizer.start_ids)
        return [start + ids for ids in self.tokenizer.encode_batch(texts)]

    def prompt_ids_batch(
        self, kind: str | TaskKind, dataset: str, examples: Sequence[Any]
    ) -> list[list[int]]:
        """The tokens decoding starts from, per example (training sequences start with these)."""
        return self._encode([self.texts(kind, dataset, _fields(e))[0] for e in examples])

    def prompt_ids(self, kind: str | TaskKind, dataset: str, fields) -> list[int]:
        return self.prompt_ids_batch(kind, dataset, [fields])[0]

    def sequences(
        self, kind: str | TaskKind, dataset: str, examples: Sequence[Any]
    ) -> list[CausalSequence]:
        """Each example's full training sequence for a task (not yet fitted to a length),
        tokenised in one batch."""
        task = _task(kind)
        texts = [self.texts(task, dataset, _fields(example)) for example in examples]
        prompts = self._encode([prompt for prompt, _ in texts])
        fulls = self._encode([full for _, full in texts])
        eos = self.tokenizer.eos_id
        result = []
        for prompt, full in zip(prompts, fulls, strict=True):
            target = _split_at_prompt(prompt, full, f"task {task.name}")
            if eos in target:  # a chat turn that ends in EOS: drop what the template adds after
                target = target[: len(target) - target[::-1].index(eos)]
            else:
                target.append(eos)
            result.append(
                CausalSequence(
                    prompt=np.asarray(prompt, np.int32),
                    target=np.asarray(target, np.int32),
                    task_id=task.task_id,
                )
            )
        return result

    def sequence(
        self, kind: str | TaskKind, dataset: str, fields, *, max_length: int | None = None
    ) -> CausalSequence:
        """One example's training sequence for a task, fitted to `max_length` when given."""
        sequence = self.sequences(kind, dataset, [fields])[0]
        return sequence if max_length is None else fit_to_length(sequence, max_length)

    def decode(self, ids: Sequence[int]) -> str:
        """Generated tokens -> text, up to the first EOS."""
        ids = [int(i) for i in ids]
        eos = self.tokenizer.eos_id
        return self.tokenizer.decode(ids[: ids.index(eos)] if eos in ids else ids)


def fit_to_length(sequence: CausalSequence, max_length: int) -> CausalSequence:
    """The sequence in at most max_length tokens: the target trimmed, its EOS kept
    (`truncated` set); PromptTooLongError when not even one target token and EOS fit."""
    if len(sequence) <= max_length:
        return sequence
    room = max_length - len(sequence.prompt)
    if room < 2:
        raise PromptTooLongError(
            f"prompt of {len(sequence.prompt)} tokens leaves no room for a target token and EOS "
            f"in {max_length}"
        )
    target = np.concatenate([sequence.target[: room - 1], sequence.target[-1:]])
    return dataclasses.replace(sequence, target=target, truncated=True)


def make_format(tokenizer: Any, template: Template = "auto") -> CausalFormat:
    """A CausalFormat from a seqio vocabulary or a Hugging Face tokenizer."""
    return CausalFormat(as_text_tokenizer(tokenizer), template)


def encode_split(
    fmt: CausalFormat,
    method: str,
    dataset: str,
    examples: Sequence[Example],
    *,
    max_length: int,
) -> dict[str, list[CausalSequence | None]]:
    """kind -> each example's sequence for the method's tasks (in row order), None where the
    task needs a rationale the example lacks. All prompts that do not fit are reported in one
    PromptTooLongError."""
    sequences: dict[str, list[CausalSequence | None]] = {}
    too_long: list[str] = []
    for kind in METHOD_TASKS[check_method(method)]:
        task = TASK_KINDS[kind]
        present = [i for i, e in enumerate(examples) if e.rationale or not task.needs_rationale]
        column: list[CausalSequence | None] = [None] * len(examples)
        full = fmt.sequences(task, dataset, [examples[i] for i in present])
        for index, sequence in zip(present, full, strict=True):
            try:
                column[index] = fit_to_length(sequence, max_length)
            except PromptTooLongError:
                too_long.append(f"{examples[index].id} ({kind})")
        sequences[kind] = column
    if too_long:
        raise PromptTooLongError(
            f"{len(too_long)} prompt(s) leave no room for a target in max_length={max_length} "
            f"tokens, first: example {too_long[0]}; raise max_length or drop these examples"
        )
    return sequences


def as_columns(
    sequences: Mapping[str, Sequence[CausalSequence | None]],
) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """kind -> (prompts, targets) per example, empty arrays where there is no sequence: the
    per-kind columns the T5 pipeline keeps (`RaggedTokens.from_sequences` of each)."""
    empty = np.zeros(0, np.int32)
    return {
        kind: (
            [empty if s is None else s.prompt for s in column],
            [empty if s is None else s.target for s in column],
        )
        for kind, column in sequences.items()
    }


def count_truncations(
    fmt: CausalFormat,
    method: str,
    dataset: str,
    splits: Mapping[str, Sequence[Example]],
    *,
    max_length: int,
    max_prompt_length: int,
) -> dict[str, tuple[int, int]]:
    """split -> (examples whose prompt does not fit, examples with a trimmed target), in the
    shape `truncation.report_truncations` takes. Train: the method's training sequences in
    max_length; valid/test: the evaluation prompt in max_prompt_length. Never raises for length
    (encode_split and eval_prompts do)."""
    counts = {}
    for split, examples in splits.items():
        if split != "train":
            kind = METHOD_EVAL_TASK[check_method(method)]
            lengths = [len(ids) for ids in fmt.prompt_ids_batch(kind, dataset, examples)]
            counts[split] = (sum(n > max_prompt_length for n in lengths), 0)
            continue
        too_long = np.zeros(len(examples), bool)
        trimmed = np.zeros(len(examples), bool)
        for kind in METHOD_TASKS[check_method(method)]:
            task = TASK_KINDS[kind]
            present = [i for i, e in enumerate(examples) if e.rationale or not task.needs_rationale]
            for index, seq in zip(
                present, fmt.sequences(task, dataset, [examples[i] for i in present]), strict=True
            ):
                if len(seq) > max_length:
                    prompt_too_long = len(seq.prompt) + 2 > max_length
                    too_long[index] |= prompt_too_long
                    trimmed[index] |= not prompt_too_long
        counts[split] = (int(too_long.sum()), int(trimmed.sum()))
    return counts


def count_truncated_targets(sequences: Mapping[str, Sequence[CausalSequence | None]]) -> int:
    """Examples with at least one trimmed target (for the data report's truncated_targets)."""
    columns = list(sequences.values())
    if not columns:
        return 0
    return sum(
        any(seq is not None and seq.truncated for seq in row) for row in zip(*columns, strict=True)
    )


# ----------------------------------------------------------------------------------------------
# Rows


def first_fit_causal_batch(
    examples: Iterable[Sequence[int]], *, num_rows: int, row_length: int
) -> tuple[list[list[tuple[int, int]]], int]:
    """`feature_converter.first_fit_batch` on decoder-only sequences: `examples` gives each
    example's sequence lengths (prompt + target); returns (rows, examples taken), rows[r] the
    (example offset, sequence index) pairs of row r."""

    def as_pairs() -> Iterable[list[tuple[int, int]]]:
        for offset, lengths in enumerate(examples):
            for index, length in enumerate(lengths):
                if length > row_length:
                    raise SequenceTooLongError(
                        f"sequence {index} of example {offset} has {length} tokens, rows hold "
                        f"{row_length}"
                    )
            yield [(int(length), 0) for length in lengths]

    return first_fit_batch(
        as_pairs(), num_rows=num_rows, max_input_length=row_length, max_target_length=0
    )


def assemble_causal_rows(
    rows: Sequence[Sequence[int]],
    prompts: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    task_ids: Sequence[int],
    *,
    row_length: int,
    num_rows: int | None = None,
) -> dict[str, np.ndarray]:
    """Write sequences into decoder-only rows (the layout in the module docstring).

    rows[r] lists the indices (into prompts/targets/task_ids) of row r's sequences; an empty row
    is all padding. Same calling convention as `feature_converter.assemble_rows`.
    """
    num_rows = len(rows) if num_rows is None else num_rows
    if len(rows) > num_rows:
        raise ValueError(f"{len(rows)} rows do not fit in a batch of {num_rows}")
    batch = empty_causal_batch(num_rows, row_length)
    for r, row in enumerate(rows):
        at = 0
        for segment, index in enumerate(row, start=1):
            prompt = np.asarray(prompts[index], dtype=np.int32)
            target = np.asarray(targets[index], dtype=np.int32)
            p, n = len(prompt), len(prompt) + len(target)
            if p < 1 or n == p:
                raise ValueError(f"sequence {index} needs a prompt and a target token")
            if at + n > row_length:
                raise SequenceTooLongError(
                    f"row {r} overflows at sequence {index}: {at} + {n} tokens > {row_length}"
                )
            tokens = np.concatenate([prompt, target])
            span = slice(at, at + n)
            batch["decoder_input_tokens"][r, span] = tokens
            batch["decoder_target_tokens"][r, at : at + n - 1] = tokens[1:]
            batch["decoder_segment_ids"][r, span] = segment
            batch["decoder_positions"][r, span] = np.arange(n)
            # Slot j predicts token j + 1: the target tokens are predicted from slots p-1..n-2.
            learn = slice(at + p - 1, at + n - 1)
            batch["decoder_loss_weights"][r, learn] = 1.0
            batch["decoder_task_ids"][r, learn] = task_ids[index]
            at += n
    return batch


def assemble_sequences(
    rows: Sequence[Sequence[int]],
    sequences: Sequence[CausalSequence],
    *,
    row_length: int,
    num_rows: int | None = None,
) -> dict[str, np.ndarray]:
    """`assemble_causal_rows` for CausalSequence objects."""
    return assemble_causal_rows(
        rows,
        [s.prompt for s in sequences],
        [s.target for s in sequences],
        [s.task_id for s in sequences],
        row_length=row_length,
        num_rows=num_rows,
    )


# ----------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass(frozen=True)
class EvalPrompts:
    """Prompts to decode greedily, left-padded so every row's next token is at the last slot.

    tokens / segment_ids / positions: int32 [N, length]; segment 1 and positions 0.. on the
    prompt, 0 on the left padding. lengths: prompt tokens per row. labels: the raw label strings
    (metrics compare against these). kind: the task whose prompt it is.
    """

    tokens: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    lengths: np.ndarray
    labels: list[str]
    ids: list[str]
    kind: str


def eval_prompts(
    fmt: CausalFormat,
    method: str,
    dataset: str,
    examples: Sequence[Example],
    *,
    max_prompt_length: int,
) -> EvalPrompts:
    """The prompts `method` is evaluated on (predict for step_by_step, the plain question for
    standard and cot), as the training sequences start. Prompts longer than max_prompt_length
    are an error (trimming would cut the question or the answer cue)."""
    kind = METHOD_EVAL_TASK[check_method(method)]
    prompts = [fmt.prompt_ids(kind, dataset, example) for example in examples]
    too_long = [e.id for e, p in zip(examples, prompts, strict=True) if len(p) > max_prompt_length]
    if too_long:
        raise PromptTooLongError(
            f"{len(too_long)} evaluation prompt(s) exceed max_prompt_length={max_prompt_length} "
            f"tokens, first: example {too_long[0]}"
        )
    shape = (len(prompts), max_prompt_length)
    tokens, segment_ids, positions = (np.zeros(shape, np.int32) for _ in range(3))
    for row, prompt in enumerate(prompts):
        start = max_prompt_length - len(prompt)
        tokens[row, start:] = prompt
        segment_ids[row, start:] = 1
        positions[row, start:] = np.arange(len(prompt))
    return EvalPrompts(
        tokens=tokens,
        segment_ids=segment_ids,
        positions=positions,
        lengths=np.asarray([len(p) for p in prompts], np.int32),
        labels=[e.label for e in examples],
        ids=[e.id for e in examples],
        kind=kind,
    )


def answer_from_output(method: str, dataset: str, text: str) -> str | None:
    """The answer in a decoded output: for cot the label after the answer cue (the dataset's
    `extract_cot_answer`, None without a cue), else the output stripped."""
    if check_method(method) == "cot":
        return extract_cot_answer(dataset, text)
    return text.strip()
