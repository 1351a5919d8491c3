"""Reading teacher outputs: the paper's `{split}_CoT_{i}.json` lists (joined by order) and our
`{split}.jsonl` rationale files (joined by id), parsed into one TeacherOutput per example."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence

from sbsd_jax.data.examples import DataFormatError
from sbsd_jax.data.records import RawExample, read_jsonl_rows
from sbsd_jax.data.teacher_parsing import UnparseableCompletion, parse_completion
from sbsd_jax.data.text_files import read_text


@dataclasses.dataclass(frozen=True)
class TeacherOutput:
    """The teacher's parsed rationale and label for one example, or why there is none."""

    rationale: str | None
    llm_label: str | None
    parse_error: str | None = None


def cot_files(llm_dir: str, split: str) -> list[str]:
    """`{split}_CoT_{i}.json` in `llm_dir`, in i order; an error when the numbering has a gap
    (a missing file would silently shift every later rationale onto the wrong example)."""
    if not os.path.isdir(llm_dir):
        return []
    pattern = re.compile(rf"^{re.escape(split)}_CoT_(\d+)\.json$")
    numbered = sorted(
        (int(m.group(1)), name) for name in os.listdir(llm_dir) if (m := pattern.match(name))
    )
    indices = [i for i, _ in numbered]
    if indices != list(range(len(indices))):
        raise DataFormatError(
            f"teacher files for split {split!r} must be numbered 0..{len(indices) - 1}, "
            f"found {indices}",
            path=llm_dir,
        )
    return [os.path.join(llm_dir, name) for _, name in numbered]


def read_cot_completions(files: Sequence[str]) -> list[str]:
    """The raw completions of several CoT files, concatenated in order."""
    completions: list[str] = []
    for path in files:
        try:
            outputs = json.loads(read_text(path))  # a BOM and CRLF are fine, bad UTF-8 is named
        except json.JSONDecodeError as error:
            raise DataFormatError(
                f"not valid JSON ({error.msg}, column {error.colno})", path=path, line=error.lineno
            ) from None
        if not isinstance(outputs, list):
            raise DataFormatError(
                f"expected a JSON list of completions, got {type(outputs).__name__}", path=path
            )
        for index, output in enumerate(outputs):
            if not isinstance(output, str):
                raise DataFormatError(
                    f"completion #{index} is {type(output).__name__}, not text", path=path
                )
        completions.extend(outputs)
    return completions


def parse_completions(dataset: str, completions: Sequence[str]) -> list[TeacherOutput]:
    outputs = []
    for completion in completions:
        try:
            parsed = parse_completion(dataset, completion)
        except UnparseableCompletion as error:
            outputs.append(TeacherOutput(None, None, error.reason))
        else:
            outputs.append(TeacherOutput(parsed.rationale, parsed.label))
    return outputs


def teacher_from_cot_files(
    dataset: str, files: Sequence[str], examples: Sequence[RawExample], split: str
) -> list[TeacherOutput]:
    """Parse the CoT lists and pair them with `examples` by position; counts must match."""
    completions = read_cot_completions(files)
    if len(completions) != len(examples):
        names = ", ".join(os.path.basename(p) for p in files)
        raise DataFormatError(
            f"{len(completions)} teacher completions in {names} but {len(examples)} "
            f"{split} examples; they are paired by position, so the counts must match",
            path=os.path.dirname(files[0]),
        )
    return parse_completions(dataset, completions)


def teacher_from_jsonl(
    dataset: str, path: str, examples: Sequence[RawExample]
) -> list[TeacherOutput]:
    """Join `{split}.jsonl` teacher rows onto `examples` by 'id' (or by 'input' for rows without
    one). A row holds a raw 'completion' (parsed here) or an already parsed 'rationale' (with an
    optional 'llm_label'). Examples without a row get 'no teacher output'."""
    by_key: dict[str, TeacherOutput] = {}
    for line_number, row in read_jsonl_rows(path):
        if row.get("id") is not None:
            key = "id:" + str(row["id"])
        elif isinstance(row.get("input"), str):
            key = "input:" + row["input"]
        else:
            raise DataFormatError(
                "rationale row needs an 'id' (or the example's 'input')",
                path=path,
                line=line_number,
                field="id",
            )
        if key in by_key:
            raise DataFormatError(f"duplicate key {key!r}", path=path, line=line_number, field="id")
        if isinstance(row.get("completion"), str):
            by_key[key] = parse_completions(dataset, [row["completion"]])[0]
        elif isinstance(row.get("rationale"), str):
            llm_label = row.get("llm_label")
            if llm_label is not None and not isinstance(llm_label, str):
                raise DataFormatError(
                    "expected text", path=path, line=line_number, field="llm_label"
                )
            by_key[key] = TeacherOutput(row["rationale"], llm_label)
        else:
            raise DataFormatError(
                "rationale row needs a 'completion' or a 'rationale' text",
                path=path,
                line=line_number,
                field="rationale",
            )
    missing = TeacherOutput(None, None, "no teacher output for this example")
    outputs = []
    for example in examples:
        output = by_key.get("id:" + example.id) or by_key.get("input:" + example.input)
        outputs.append(output or missing)
    return outputs


def load_teacher_outputs(
    dataset: str, rationale_dir: str, split: str, examples: Sequence[RawExample]
) -> list[TeacherOutput] | None:
    """Teacher outputs for one split from `rationale_dir` ({split}.jsonl by id, else
    {split}_CoT_{i}.json by order); None when the directory has none for this split."""
    jsonl_path = os.path.join(rationale_dir, f"{split}.jsonl")
    if os.path.isfile(jsonl_path):
        return teacher_from_jsonl(dataset, jsonl_path, examples)
    files = cot_files(rationale_dir, split)
    if files:
        return teacher_from_cot_files(dataset, files, examples, split)
    return None


@dataclasses.dataclass
class SourceData:
    """What a reader returns: examples per split as the files hold them, teacher outputs for the
    splits that have them, and where each split was read from (for the report)."""

    splits: dict[str, list[RawExample]]
    teacher: dict[str, list[TeacherOutput]] = dataclasses.field(default_factory=dict)
    origin: dict[str, str] = dataclasses.field(default_factory=dict)
