"""The records every data source produces, and the spec that says which source to read.

`Example` is the one currency between sources, SeqIO tasks, the teacher and the demo: inputs
are already formatted the way the paper's reference code formats them, so nothing downstream
needs to know which dataset it came from.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

SPLITS: tuple[str, ...] = ("train", "valid", "test")

# Datasets with a built-in reader. 'jsonl' is the user's own data; 'synthetic' (arithmetic) and
# 'synthetic_world' (knowledge) are the demo's tasks.
KNOWN_DATASETS: tuple[str, ...] = (
    "cqa",
    "svamp",
    "esnli",
    "anli1",
    "gsm8k",
    "jsonl",
    "synthetic",
    "synthetic_world",
)
SOURCE_KINDS: tuple[str, ...] = ("paper", "hf", "tfds", "jsonl", "synthetic")

# e-SNLI / ANLI integer labels, as in the reference's _post_process.
NLI_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
# The reference joins premise and hypothesis with the tokenizer's EOS string, no spaces
# (`tokenizer.eos_token.join([premise, hypothesis])`); a T5 SentencePiece tokenizer turns it
# into the EOS id, the byte vocabulary keeps it as 4 bytes.
NLI_SEPARATOR = "</s>"

LabelType = Literal["gt", "llm"]
RationaleSource = Literal["teacher", "human"]


class DataFormatError(ValueError):
    """Bad input data: the message names the file, the line (1-based, when known) and the field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.field = field
        where = []
        if path is not None:
            where.append(f"file {path}")
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)

    def __reduce__(self):  # picklable across worker processes despite the keyword arguments
        return (
            _rebuild_data_format_error,
            (type(self), self.message, self.path, self.line, self.field),
        )


def _rebuild_data_format_error(
    cls: type[DataFormatError],
    message: str,
    path: str | None,
    line: int | None,
    field: str | None,
) -> DataFormatError:
    return cls(message, path=path, line=line, field=field)


class UnknownDatasetError(ValueError):
    """A dataset or source name that no reader knows; the message lists the known ones."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One training/evaluation example.

    label: the human (ground-truth) label, or the teacher's label for the train split when
      label_type='llm' (the reference replaces only train labels).
    rationale: the teacher's (or, with rationale_source='human', the human) rationale;
      None when the source has none or the teacher completion could not be parsed.
    llm_label: the teacher's parsed label, None when there is no teacher output or it is
      unparseable.
    parse_error: why the teacher completion could not be parsed (kept examples only, when
      spec.drop_unparseable is False); None otherwise.
    """

    id: str
    input: str
    label: str
    rationale: str | None = None
    llm_label: str | None = None
    parse_error: str | None = None


def nli_input(premise: str, hypothesis: str) -> str:
    """The reference's e-SNLI/ANLI model input: premise, EOS string, hypothesis."""
    return f"{premise}{NLI_SEPARATOR}{hypothesis}"


def cqa_input(question: str, choices: list[str] | tuple[str, ...]) -> str:
    """The reference's CommonsenseQA model input: question, then one '(x) choice' per line."""
    lines = [f"{question}\nAnswer Choices:"]
    lines += [f"({chr(ord('a') + i)}) {choice}" for i, choice in enumerate(choices)]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What to load and how (a run builds it from its config in sbsd_jax.settings).

    dataset: one of KNOWN_DATASETS. source: one of SOURCE_KINDS.
    data_dir: paper layout root ({data_dir}/{dataset}/{dataset}_{split}.json), JSONL folder
      ({data_dir}/{split}.jsonl), TFDS data_dir, or where the synthetic task is written.
    hf_name / hf_config: hub name ('cos_e', 'esnli', 'anli', 'gsm8k') or a local
      `save_to_disk` folder / JSON file folder for source='hf'.
    tfds_name: TFDS builder name ('esnli', 'anli/r1', 'gsm8k') for source='tfds'.
    rationale_dir: teacher outputs for hf/tfds sources: `{split}.jsonl` (rows with 'id' and
      either 'completion' or 'rationale'/'llm_label') or `{split}_CoT_{i}.json` lists by order.
      For source='paper' the default is {data_dir}/{dataset}/llm.
    rationale_source: 'teacher' (default) or 'human' (GSM8K solutions, CoS-E/e-SNLI/ANLI
      human explanations) to compare the two.
    valid_fraction / valid_seed: carve valid from train for datasets without one (CQA, SVAMP,
      GSM8K, jsonl without valid.jsonl, synthetic without a valid file): the reference's
      `train_test_split(test_size=0.1, seed=0)`.
    train_fraction / subsample_seed: the paper's subsampling sweep (reference:
      `train_test_split(test_size=1 - fraction, seed=run)['train']`).
    subsample_before_valid_split: the reference subsamples train *before* carving valid out of
      it (so valid shrinks with the fraction); False keeps valid fixed across fractions.
    """

    dataset: str
    source: str = "paper"
    data_dir: str | None = None
    hf_name: str | None = None
    hf_config: str | None = None
    tfds_name: str | None = None
    rationale_dir: str | None = None
    label_type: LabelType = "gt"
    rationale_source: RationaleSource = "teacher"
    train_fraction: float = 1.0
    subsample_seed: int = 0
    subsample_before_valid_split: bool = True
    valid_fraction: float = 0.1
    valid_seed: int = 0
    drop_unparseable: bool = True
    load_teacher: bool = True

    def __post_init__(self) -> None:
        if self.dataset not in KNOWN_DATASETS:
            raise UnknownDatasetError(
                f"unknown dataset {self.dataset!r}; known datasets: {', '.join(KNOWN_DATASETS)}"
            )
        if self.source not in SOURCE_KINDS:
            raise UnknownDatasetError(
                f"unknown data source {self.source!r}; known sources: {', '.join(SOURCE_KINDS)}"
            )
        if self.label_type not in ("gt", "llm"):
            raise ValueError(f"label_type must be 'gt' or 'llm', got {self.label_type!r}")
        if self.rationale_source not in ("teacher", "human"):
            raise ValueError(
                f"rationale_source must be 'teacher' or 'human', got {self.rationale_source!r}"
            )
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What the training data is: which examples (dataset), which method's tasks, the
    vocabulary ('byte', 'word' or a SentencePiece file) and the token lengths."""

    dataset: DatasetSpec
    method: str
    vocabulary: str
    max_input_length: int
    max_target_length: int
