"""What a model batch holds and how each task turns an `Example` into (inputs, targets) text.

One definition of every task's prefix and target, shared by the SeqIO tasks (which run it on
`tf.string` tensors) and by anyone who wants to see a task's text in plain Python: the target
builders only use `+`, which means string concatenation for both `str` and `tf.string`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from sbsd_jax.data.teacher_parsing import ANSWER_CUES

# Task identity carried per target token (`decoder_task_ids`), so the train step can average
# each task's token loss separately and mix them with alpha as the reference does.
TASK_LABEL = 0  # predict / standard / cot: the target ends in the label
TASK_RATIONALE = 1  # explain: the target is the rationale

ENCODER_KEYS: tuple[str, ...] = (
    "encoder_input_tokens",
    "encoder_segment_ids",
    "encoder_positions",
)
DECODER_KEYS: tuple[str, ...] = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_loss_weights",
    "decoder_task_ids",
)
# Exactly the keys of every batch the pipeline yields (all int32 but decoder_loss_weights).
BATCH_KEYS: tuple[str, ...] = ENCODER_KEYS + DECODER_KEYS
FLOAT_BATCH_KEYS: frozenset[str] = frozenset({"decoder_loss_weights"})
# The decoder-only (causal LM) batch: the decoder keys only, every array [rows, row length]
# (layout in data/causal_lm.py), so train.loss.multitask_loss reads both contracts.
CAUSAL_BATCH_KEYS: tuple[str, ...] = DECODER_KEYS
# Batch contract per model layout (ModelFamily.batch_layout): the keys a train step reads.
SEQ2SEQ_LAYOUT = "seq2seq"
CAUSAL_LAYOUT = "causal"
LAYOUT_BATCH_KEYS: dict[str, tuple[str, ...]] = {
    SEQ2SEQ_LAYOUT: BATCH_KEYS,
    CAUSAL_LAYOUT: CAUSAL_BATCH_KEYS,
}

PAD_ID = 0
DECODER_START_ID = 0

# Fields a target builder may read; `answer_cue` is passed separately (it depends on the dataset).
TextFields = Mapping[str, Any]
TargetBuilder = Callable[[TextFields, str], Any]


@dataclasses.dataclass(frozen=True)
class TaskKind:
    """One way of turning an example into a seq2seq pair.

    name: the task name suffix (`<dataset>_<name>`).
    prefix: prepended to the example's input ('' for standard and cot).
    target: (fields, answer_cue) -> target text; fields has 'input', 'label', 'rationale'.
    task_id: TASK_LABEL or TASK_RATIONALE, the per-token task identity.
    needs_rationale: examples without a rationale have no target for this task and are skipped
      (never turned into a blank target).
    """

    name: str
    prefix: str
    target: TargetBuilder
    task_id: int
    needs_rationale: bool

    def inputs(self, fields: TextFields) -> Any:
        """The model input text: prefix + the example's (already formatted) input."""
        return self.prefix + fields["input"] if self.prefix else fields["input"]


def _label_target(fields: TextFields, answer_cue: str) -> Any:
    del answer_cue
    return fields["label"]


def _rationale_target(fields: TextFields, answer_cue: str) -> Any:
    del answer_cue
    return fields["rationale"]


def _cot_target(fields: TextFields, answer_cue: str) -> Any:
    """The teacher's own shape, '<rationale> <cue> <label>' (as format_cot_target)."""
    return fields["rationale"] + (" " + answer_cue + " ") + fields["label"]


PREDICT = TaskKind("predict", "predict: ", _label_target, TASK_LABEL, needs_rationale=False)
EXPLAIN = TaskKind("explain", "explain: ", _rationale_target, TASK_RATIONALE, needs_rationale=True)
STANDARD = TaskKind("standard", "", _label_target, TASK_LABEL, needs_rationale=False)
COT = TaskKind("cot", "", _cot_target, TASK_LABEL, needs_rationale=True)

TASK_KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (PREDICT, EXPLAIN, STANDARD, COT)}

# Training methods -> the tasks each training example contributes, in row order.
METHOD_TASKS: dict[str, tuple[str, ...]] = {
    "standard": ("standard",),
    "step_by_step": ("predict", "explain"),
    "cot": ("cot",),
}
# The task whose inputs a method's model is evaluated on (decode, compare with the raw label).
# cot is evaluated on plain inputs, like standard: its inputs have no prefix, and eval inputs
# must not depend on a rationale being present.
METHOD_EVAL_TASK: dict[str, str] = {
    "standard": "standard",
    "step_by_step": "predict",
    "cot": "standard",
}


def check_method(method: str) -> str:
    if method not in METHOD_TASKS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHOD_TASKS)}")
    return method


def tasks_per_example(method: str) -> int:
    """Rows each example contributes to an unpacked batch (2 for step_by_step)."""
    return len(METHOD_TASKS[check_method(method)])


def batch_dtype(key: str) -> str:
    """The dtype of a batch array: float32 loss weights, int32 everything else."""
    return "float32" if key in FLOAT_BATCH_KEYS else "int32"


def batch_shapes(
    method: str, batch_size: int, max_input_length: int, max_target_length: int
) -> dict[str, tuple[tuple[int, int], str]]:
    """The batch contract: (shape, dtype) of every array of one global training batch (packed
    or not): batch_size examples x tasks_per_example rows, encoder arrays at the input length,
    decoder arrays at the target length. What the pipeline yields, the step reads and the
    ahead-of-time compile lowers against."""
    rows = batch_size * tasks_per_example(method)
    shapes = {}
    for key in BATCH_KEYS:
        length = max_input_length if key in ENCODER_KEYS else max_target_length
        shapes[key] = ((rows, length), batch_dtype(key))
    return shapes


def causal_batch_shapes(
    method: str, batch_size: int, row_length: int
) -> dict[str, tuple[tuple[int, int], str]]:
    """The decoder-only batch contract (data/causal_lm.py): batch_size examples x tasks per
    example rows of row_length slots, decoder keys only (packed or not)."""
    rows = batch_size * tasks_per_example(method)
    return {key: ((rows, row_length), batch_dtype(key)) for key in CAUSAL_BATCH_KEYS}


@dataclasses.dataclass(frozen=True)
class BatchingSpec:
    """Everything besides the tokens that decides which training batches come out."""

    batch_size: int  # global, in examples
    max_input_length: int
    max_target_length: int
    pack: bool
    seed: int
    # > 0: decoder-only rows of this many slots (prompt + target + EOS per sequence, see
    # data/causal_lm.py); 0: encoder-decoder rows at the input / target lengths.
    row_length: int

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_input_length < 1 or self.max_target_length < 1:
            raise ValueError("max_input_length and max_target_length must be >= 1")


# Text formats of decoder-only rows (data/causal_lm.py): auto = chat when the tokenizer has a
# chat template, else plain.
DECODER_TEMPLATES: tuple[str, ...] = ("auto", "plain", "chat")


@dataclasses.dataclass(frozen=True)
class CausalRowsSpec:
    """How a decoder-only student's rows are made (data/causal_lm.py): the text template
    ('auto' | 'plain' | 'chat'), the slots of a training row and the longest evaluation
    prompt (tokens)."""

    template: str
    row_length: int
    max_prompt_length: int


def answer_cue(dataset: str) -> str:
    """The cue the cot target puts between rationale and label (the teacher prompts' own)."""
    if dataset not in ANSWER_CUES:
        raise ValueError(
            f"no answer cue for dataset {dataset!r}; known: {', '.join(sorted(ANSWER_CUES))}"
        )
    return ANSWER_CUES[dataset]


def task_name(dataset: str, kind: str, suffix: str = "") -> str:
    """`<dataset>_<kind>`, plus `_<suffix>` when registered under a namespace suffix."""
    return f"{dataset}_{kind}_{suffix}" if suffix else f"{dataset}_{kind}"


def mixture_name(dataset: str, suffix: str = "") -> str:
    """`<dataset>_step_by_step`: predict + explain."""
    return task_name(dataset, "step_by_step", suffix)


def example_text(kind: str, dataset: str, fields: TextFields) -> tuple[str, str]:
    """(inputs, targets) text of one example for a task, in plain Python (docs, tests, demo)."""
    task = TASK_KINDS[kind]
    if task.needs_rationale and not fields.get("rationale"):
        raise ValueError(f"task {kind!r} needs a rationale, example has none")
    return task.inputs(fields), task.target(fields, answer_cue(dataset))
