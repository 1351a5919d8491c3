"""Turn a raw few-shot teacher completion into (rationale, label), one parser per dataset.

The parsers give the same (rationale, label) as the reference's `_parse_llm_output`
(google-research/distilling-step-by-step, data_utils.py) wherever the reference succeeds.
Where the reference silently returns a blank label (' ' or ''), these raise
`UnparseableCompletion` with the reason, so a blank target never reaches training.

Completions look like "<rationale> So the answer is (d) math problem.\\n\\nQ: <next question>":
the teacher keeps writing the next few-shot question, which is cut off first.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

# The answer cue the teacher's few-shot prompts use; the cot task and the teacher reuse it.
ANSWER_CUES: dict[str, str] = {
    "cqa": "So the answer is",
    "svamp": "The answer is",
    "esnli": "Answer:",
    "anli1": "So the answer is",
    "gsm8k": "The answer is",
    "synthetic": "The answer is",
    "synthetic_world": "So the answer is",
    "jsonl": "The answer is",
}

# Where the teacher starts the next few-shot example (everything from here on is dropped).
CONTINUATION_MARKERS: dict[str, str] = {
    "cqa": "Q:",
    "svamp": "Q:",
    "esnli": "Premise",
    "anli1": "Premise:",
    "gsm8k": "Q:",
    "synthetic": "Q:",
    "synthetic_world": "Q:",
    "jsonl": "Q:",
}

_CQA_CHOICE_LETTER = re.compile(r"\(.\)")
_PARENTHESISED = re.compile(r"\(.*\)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


class UnparseableCompletion(ValueError):
    """A teacher completion without the expected cue/answer shape; `reason` says what is missing."""

    def __init__(self, dataset: str, reason: str, completion: str) -> None:
        self.dataset = dataset
        self.reason = reason
        self.completion = completion
        preview = completion[:120].replace("\n", "\\n")
        super().__init__(f"{dataset} completion unparseable: {reason} (completion: {preview!r})")

    def __reduce__(self):  # picklable across worker processes despite the custom __init__
        return (type(self), (self.dataset, self.reason, self.completion))


@dataclasses.dataclass(frozen=True)
class ParsedCompletion:
    rationale: str
    label: str


def _split_once_on_cue(dataset: str, text: str, completion: str) -> tuple[str, str]:
    """The reference's `rationale, label = text.split(cue)`: exactly one cue or no parse."""
    cue = ANSWER_CUES[dataset]
    parts = text.split(cue)
    if len(parts) == 1:
        raise UnparseableCompletion(dataset, f"no answer cue {cue!r}", completion)
    if len(parts) > 2:
        raise UnparseableCompletion(
            dataset, f"answer cue {cue!r} appears {len(parts) - 1} times", completion
        )
    return parts[0], parts[1]


def _strip_final_period(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def parse_cqa(completion: str) -> ParsedCompletion:
    """Rationale before 'So the answer is'; label = text after the '(x)' letter, no final period."""
    text = completion.split(CONTINUATION_MARKERS["cqa"])[0].rstrip()
    rationale, answer = _split_once_on_cue("cqa", text, completion)
    pieces = _CQA_CHOICE_LETTER.split(answer)
    if len(pieces) < 2:
        raise UnparseableCompletion("cqa", "no '(x)' choice letter after the cue", completion)
    label = _strip_final_period(pieces[1].strip())
    if not label:
        raise UnparseableCompletion("cqa", "empty answer after the '(x)' choice letter", completion)
    return ParsedCompletion(rationale=rationale.rstrip(), label=label)


def parse_svamp(completion: str) -> ParsedCompletion:
    """Rationale before 'The answer is'; label = the parenthesised equation after it."""
    text = completion.split(CONTINUATION_MARKERS["svamp"])[0].rstrip()
    rationale, answer = _split_once_on_cue("svamp", text, completion)
    match = _PARENTHESISED.search(answer)
    if match is None:
        raise UnparseableCompletion("svamp", "no parenthesised equation after the cue", completion)
    return ParsedCompletion(rationale=rationale.rstrip(), label=match.group(0))


def parse_esnli(completion: str) -> ParsedCompletion:
    """Rationale before the first 'Answer:'; label after 'Answer: ' up to 'Premise'.

    As in the reference, the rationale is not cut at 'Premise' (only the label is).
    """
    if "Answer:" not in completion:
        raise UnparseableCompletion("esnli", "no answer cue 'Answer:'", completion)
    rationale = completion.split("Answer:")[0].rstrip()
    pieces = completion.split("Answer: ")
    if len(pieces) < 2:
        raise UnparseableCompletion("esnli", "no space after 'Answer:'", completion)
    label = pieces[1].split(CONTINUATION_MARKERS["esnli"])[0].rstrip()
    if not label:
        raise UnparseableCompletion("esnli", "empty answer after 'Answer:'", completion)
    return ParsedCompletion(rationale=rationale, label=label)


def parse_anli1(completion: str) -> ParsedCompletion:
    """Rationale before 'So the answer is' (after cutting at 'Premise:'); label = answer minus
    its final period.

    Deviation: the reference drops the last character unconditionally (`label[:-1]`); here it is
    dropped only when it is a period, so an answer written without one is not truncated.
    """
    text = completion.split(CONTINUATION_MARKERS["anli1"])[0].rstrip()
    rationale, answer = _split_once_on_cue("anli1", text, completion)
    label = _strip_final_period(answer.lstrip())
    if not label:
        raise UnparseableCompletion("anli1", "empty answer after the cue", completion)
    return ParsedCompletion(rationale=rationale.rstrip(), label=label)


def normalize_number(text: str) -> str | None:
    """'1,234' -> '1234', '42.0' -> '42', '-3.50' -> '-3.5'; None when `text` is not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "")
    cleaned = _strip_final_period(cleaned)
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    if value == int(value):
        return str(int(value))
    return repr(value)


def parse_final_number(dataset: str, completion: str) -> ParsedCompletion:
    """GSM8K-style: rationale before 'The answer is'; label = the first number after it."""
    text = completion.split(CONTINUATION_MARKERS[dataset])[0].rstrip()
    rationale, answer = _split_once_on_cue(dataset, text, completion)
    match = _NUMBER.search(answer)
    label = normalize_number(match.group(0)) if match else None
    if label is None:
        raise UnparseableCompletion(dataset, "no number after the cue", completion)
    return ParsedCompletion(rationale=rationale.rstrip(), label=label)


def parse_free_text(dataset: str, completion: str) -> ParsedCompletion:
    """User data: rationale before the cue; label = answer text after it, no final period."""
    text = completion.split(CONTINUATION_MARKERS[dataset])[0].rstrip()
    rationale, answer = _split_once_on_cue(dataset, text, completion)
    label = _strip_final_period(answer.strip())
    if not label:
        raise UnparseableCompletion(dataset, "empty answer after the cue", completion)
    return ParsedCompletion(rationale=rationale.rstrip(), label=label)


_PARSERS: dict[str, Callable[[str], ParsedCompletion]] = {
    "cqa": parse_cqa,
    "svamp": parse_svamp,
    "esnli": parse_esnli,
    "anli1": parse_anli1,
    "gsm8k": lambda completion: parse_final_number("gsm8k", completion),
    "synthetic": lambda completion: parse_final_number("synthetic", completion),
    "synthetic_world": lambda completion: parse_free_text("synthetic_world", completion),
    "jsonl": lambda completion: parse_free_text("jsonl", completion),
}


def parse_completion(dataset: str, completion: str) -> ParsedCompletion:
    """Parse one raw teacher completion for `dataset`; raises UnparseableCompletion."""
    if dataset not in _PARSERS:
        raise ValueError(
            f"no teacher-output parser for dataset {dataset!r}; known: {', '.join(_PARSERS)}"
        )
    if not isinstance(completion, str):
        raise UnparseableCompletion(
            dataset, f"completion is {type(completion).__name__}, not text", str(completion)
        )
    return _PARSERS[dataset](completion)


def format_cot_target(dataset: str, rationale: str, label: str) -> str:
    """The single-task CoT target: rationale, answer cue, label (the teacher's own shape).

    For SVAMP the label is already parenthesised; for CQA the choice letter is not restored, so
    read answers back with `extract_cot_answer`, not `parse_completion`.
    """
    return f"{rationale} {ANSWER_CUES[dataset]} {label}"


def extract_cot_answer(dataset: str, prediction: str) -> str | None:
    """The label part of a CoT-style model output: text after the last cue, stripped, without a
    final period (and, for SVAMP/GSM8K-style sets, the equation/number). None when no cue."""
    cue = ANSWER_CUES[dataset]
    if cue not in prediction:
        return None
    answer = prediction.rsplit(cue, 1)[1].strip()
    if dataset == "svamp":
        match = _PARENTHESISED.search(answer)
        return match.group(0) if match else _strip_final_period(answer) or None
    if dataset in ("gsm8k", "synthetic"):
        match = _NUMBER.search(answer)
        return normalize_number(match.group(0)) if match else None
    if dataset == "cqa":
        pieces = _CQA_CHOICE_LETTER.split(answer)
        answer = pieces[1].strip() if len(pieces) > 1 else answer
    return _strip_final_period(answer) or None
