"""Per-dataset conversion of a raw record (paper JSON line, HF row, TFDS example) into an input
and a label, formatted as the reference does; shared by every source so all agree."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sbsd_jax.data.examples import NLI_LABELS, DataFormatError, cqa_input, nli_input
from sbsd_jax.data.teacher_parsing import normalize_number
from sbsd_jax.data.text_files import text_lines

_GSM8K_CALCULATOR = re.compile(r"<<[^>]*>>")
_GSM8K_ANSWER_MARK = "####"


@dataclasses.dataclass(frozen=True)
class RawExample:
    """An example before teacher outputs are attached; human_rationale is the dataset's own
    explanation (CoS-E, e-SNLI explanation_1, ANLI reason, GSM8K solution) when it has one."""

    id: str
    input: str
    label: str
    human_rationale: str | None = None


@dataclasses.dataclass(frozen=True)
class Where:
    """Location of a record, for error messages."""

    path: str
    line: int | None = None

    def error(self, message: str, field: str | None = None) -> DataFormatError:
        return DataFormatError(message, path=self.path, line=self.line, field=field)


def _text(record: Mapping[str, Any], field: str, where: Where, *, allow_blank: bool = False) -> str:
    """A required text field; blank text is refused (an empty input or label would train and
    score on nothing without a word) unless allow_blank."""
    if field not in record:
        raise where.error(f"missing field (has: {', '.join(sorted(record))})", field)
    value = record[field]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise where.error(f"expected text, got {_json_type(value)}", field)
    if not allow_blank and not value.strip():
        raise where.error("empty text", field)
    return value


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, as the user wrote it in the file."""
    names = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "an object",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _optional_text(record: Mapping[str, Any], field: str, where: Where) -> str | None:
    if record.get(field) is None:
        return None
    text = _text(record, field, where, allow_blank=True)
    return text if text.strip() else None


def _nli_label(record: Mapping[str, Any], where: Where) -> str:
    if "label" not in record:
        raise where.error(f"missing field (has: {', '.join(sorted(record))})", "label")
    value = record["label"]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str) and value in NLI_LABELS:
        return value
    if not isinstance(value, bool):
        try:
            index = int(value)
        except (TypeError, ValueError):
            index = -1
        if index == value and 0 <= index < len(NLI_LABELS):
            return NLI_LABELS[index]
    raise where.error(f"label {value!r} is not one of 0, 1, 2 or {', '.join(NLI_LABELS)}", "label")


def gsm8k_answer_parts(answer: str, where: Where) -> tuple[str, str]:
    """GSM8K 'solution\\n#### 72' -> (solution without <<calculator>> notes, normalised '72')."""
    if _GSM8K_ANSWER_MARK not in answer:
        raise where.error(f"no {_GSM8K_ANSWER_MARK!r} before the final answer", "answer")
    solution, final = answer.rsplit(_GSM8K_ANSWER_MARK, 1)
    label = normalize_number(final)
    if label is None:
        raise where.error(f"final answer {final.strip()!r} is not a number", "answer")
    return _GSM8K_CALCULATOR.sub("", solution).strip(), label


def convert_record(
    dataset: str, record: Mapping[str, Any], *, default_id: str, where: Where
) -> RawExample:
    """The reference's input/label for one record of `dataset`; DataFormatError on bad fields."""
    if not isinstance(record, Mapping):
        raise where.error(f"expected a JSON object, got {type(record).__name__}")
    if dataset == "cqa":
        choices = record.get("choices")
        if choices is None:
            raise where.error("missing field", "choices")
        if isinstance(choices, Mapping) and "text" in choices:  # commonsense_qa layout
            choices = choices["text"]
        if not isinstance(choices, list | tuple) or not all(isinstance(c, str) for c in choices):
            raise where.error("expected a list of strings", "choices")
        if not choices:
            raise where.error("no answer choices", "choices")
        return RawExample(
            id=_optional_text(record, "id", where) or default_id,
            input=cqa_input(_text(record, "question", where), choices),
            label=_text(record, "answer", where),
            human_rationale=_optional_text(record, "abstractive_explanation", where),
        )
    if dataset == "svamp":
        if "input" in record:
            text, label = _text(record, "input", where), _text(record, "label", where)
        else:  # SVAMP.json source records, as the reference's load_from_source builds them
            body, question = _text(record, "Body", where), _text(record, "Question", where)
            text, label = f"{body}\n{question}", _text(record, "Equation", where)
        return RawExample(
            id=_optional_text(record, "id", where) or default_id, input=text, label=label
        )
    if dataset in ("esnli", "anli1"):
        premise_field = "premise" if "premise" in record or "context" not in record else "context"
        human = _optional_text(record, "explanation_1" if dataset == "esnli" else "reason", where)
        return RawExample(
            id=_optional_text(record, "uid", where)
            or _optional_text(record, "id", where)
            or default_id,
            input=nli_input(
                _text(record, premise_field, where), _text(record, "hypothesis", where)
            ),
            label=_nli_label(record, where),
            human_rationale=human,
        )
    if dataset == "gsm8k":
        solution, label = gsm8k_answer_parts(_text(record, "answer", where), where)
        return RawExample(
            id=_optional_text(record, "id", where) or default_id,
            input=_text(record, "question", where),
            label=label,
            human_rationale=solution or None,
        )
    # synthetic, jsonl: already input/label. A whole-number label may be written as a JSON
    # number; a fraction may not (3.0 vs "3" would decide what counts as correct).
    label = record.get("label")
    if isinstance(label, int) and not isinstance(label, bool):
        record = {**record, "label": str(label)}
    return RawExample(
        id=str(record["id"]) if record.get("id") is not None else default_id,
        input=_text(record, "input", where),
        label=_text(record, "label", where),
        human_rationale=_optional_text(record, "human_rationale", where),
    )


def read_jsonl_rows(path: str) -> list[tuple[int, dict]]:
    """(1-based line number, object) for each non-blank line; DataFormatError on bad lines
    (malformed JSON, not an object, not UTF-8; a BOM and CRLF line ends are fine)."""
    rows = []
    for line_number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(
                f"malformed JSON ({error.msg}, column {error.colno})",
                path=path,
                line=line_number,
            ) from None
        if not isinstance(row, dict):
            raise DataFormatError(
                f"expected a JSON object, got {type(row).__name__}",
                path=path,
                line=line_number,
            )
        rows.append((line_number, row))
    return rows


def check_split_examples(
    path: str, examples: Sequence[RawExample], line_numbers: Sequence[int]
) -> None:
    """A split file holds at least one example and no id twice (predictions, teacher rows and
    resumed runs are matched by id, so a repeated id would pair the wrong examples)."""
    if not examples:
        raise DataFormatError("no examples: the file is empty", path=path)
    first_line: dict[str, int] = {}
    for example, line_number in zip(examples, line_numbers, strict=True):
        if example.id in first_line:
            raise DataFormatError(
                f"duplicate id {example.id!r} (first on line {first_line[example.id]}); "
                "ids must be unique within a split",
                path=path,
                line=line_number,
                field="id",
            )
        first_line[example.id] = line_number
