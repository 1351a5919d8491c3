"""The user's own data without writing Python: `{data_dir}/{split}.jsonl`, one object a line:

  {"input": ..., "label": ..., "rationale": ... (optional), "llm_label": ... (optional),
   "id": ... (optional), "completion": ... (optional raw teacher text, parsed with the
   dataset's answer cue instead of rationale/llm_label)}

train.jsonl and test.jsonl are required; valid.jsonl is optional (else valid is carved from
train). A split whose rows carry rationales has teacher outputs; a row without one there counts
as a parse failure, so partly annotated files are visible in the report.
"""

from __future__ import annotations

import os

from sbsd_jax.data.examples import SPLITS, DataFormatError
from sbsd_jax.data.records import (
    RawExample,
    Where,
    check_split_examples,
    convert_record,
    read_jsonl_rows,
)
from sbsd_jax.data.teacher_outputs import (
    SourceData,
    TeacherOutput,
    load_teacher_outputs,
    parse_completions,
)


def _teacher_from_row(dataset: str, row: dict, where: Where) -> TeacherOutput | None:
    if isinstance(row.get("completion"), str):
        return parse_completions(dataset, [row["completion"]])[0]
    rationale, llm_label = row.get("rationale"), row.get("llm_label")
    for field, value in (("rationale", rationale), ("llm_label", llm_label)):
        if value is not None and not isinstance(value, str):
            raise where.error(f"expected text, got {type(value).__name__}", field)
    if rationale is None and llm_label is None:
        return None
    if rationale is not None and not rationale.strip():
        return TeacherOutput(None, None, "empty rationale")
    return TeacherOutput(rationale, llm_label)


def load_jsonl(
    data_dir: str,
    *,
    dataset: str = "jsonl",
    load_teacher: bool = True,
    rationale_dir: str | None = None,
) -> SourceData:
    if not os.path.isdir(data_dir):
        raise DataFormatError("data_dir is not a folder", path=data_dir)
    data = SourceData(splits={})
    for split in SPLITS:
        path = os.path.join(data_dir, f"{split}.jsonl")
        if not os.path.isfile(path):
            if split != "valid":
                raise DataFormatError(f"missing {split} split file", path=path)
            continue
        examples: list[RawExample] = []
        teacher: list[TeacherOutput | None] = []
        rows = read_jsonl_rows(path)
        for index, (line_number, row) in enumerate(rows):
            where = Where(path, line_number)
            examples.append(
                convert_record("jsonl", row, default_id=f"{split}-{index}", where=where)
            )
            teacher.append(_teacher_from_row(dataset, row, where))
        check_split_examples(path, examples, [line_number for line_number, _ in rows])
        data.splits[split] = examples
        data.origin[split] = path
        if load_teacher and rationale_dir is not None:
            outputs = load_teacher_outputs(dataset, rationale_dir, split, examples)
            if outputs is not None:
                data.teacher[split] = outputs
        elif load_teacher and any(output is not None for output in teacher):
            data.teacher[split] = [
                output or TeacherOutput(None, None, "no rationale in this row")
                for output in teacher
            ]
    return data
