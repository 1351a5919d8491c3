"""Few-shot chain-of-thought prompt sets: exemplar files and how prompts are rendered from them.

A prompt set is a JSON file (ours live in `prompts/`, users can pass their own):

  {"name": "cqa-v1", "dataset": "cqa",
   "query_template": "Q: {input}\\nA:",            # one question; {input}, or {premise} and
                                                   # {hypothesis} for NLI inputs
   "answer_template": "{rationale} So the answer is {answer}.",
   "stop": ["\\n\\nQ:"],                             # where the teacher starts the next question
   "chat_instruction": "...",                      # system message in --chat mode
   "exemplars": [{"input": ..., "rationale": ..., "answer": "(d) math problem",
                  "label": "math problem"}, ...]}

A completion prompt is every exemplar as query + " " + answer + "\\n\\n", then the query of the
example to label; the teacher continues after "A:" in the exemplars' shape. Loading a set
checks that each exemplar's answer, as the teacher would write it, gives back the exemplar's
label through the data side's `parse_completion`: the prompt teaches exactly the shape that
training reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from sbsd_jax.data.examples import NLI_SEPARATOR
from sbsd_jax.data.teacher_parsing import UnparseableCompletion, parse_completion

# Datasets with a built-in prompt set (file prompts/{name}.json); 'jsonl' uses 'generic'.
BUILTIN_PROMPT_SETS: dict[str, str] = {
    "cqa": "cqa",
    "svamp": "svamp",
    "esnli": "esnli",
    "anli1": "anli1",
    "gsm8k": "gsm8k",
    "synthetic": "synthetic",
    "synthetic_world": "synthetic_world",
    "jsonl": "generic",
}
NLI_DATASETS = ("esnli", "anli1")
DEFAULT_CHAT_INSTRUCTION = (
    "Answer the question. Think step by step first, then give the answer in exactly the same "
    "form as in the examples."
)


class PromptSetError(ValueError):
    """A prompt file that cannot be used; the message names the file and the field/exemplar."""


@dataclasses.dataclass(frozen=True)
class Exemplar:
    """One worked example. `answer` is written after the cue; `label` is what the dataset's
    parser reads back from it (CQA: answer '(d) math problem', label 'math problem')."""

    input: str
    rationale: str
    answer: str
    label: str


@dataclasses.dataclass(frozen=True)
class PromptSet:
    name: str
    dataset: str
    query_template: str
    answer_template: str
    stop: tuple[str, ...]
    chat_instruction: str
    exemplars: tuple[Exemplar, ...]
    source: str  # file it was read from, for messages and the manifest

    def with_shots(self, shots: int | None) -> PromptSet:
        """The first `shots` exemplars (None: all of them)."""
        if shots is None:
            return self
        if not 0 <= shots <= len(self.exemplars):
            raise PromptSetError(
                f"{self.source}: --shots={shots} but the prompt set has "
                f"{len(self.exemplars)} exemplars"
            )
        return dataclasses.replace(self, exemplars=self.exemplars[:shots])

    def fingerprint(self) -> str:
        """sha256 of everything that shapes the prompt (templates, instruction, the exemplars
        used, stop sequences): a changed prompt is a different run."""
        payload = {
            "dataset": self.dataset,
            "query_template": self.query_template,
            "answer_template": self.answer_template,
            "stop": list(self.stop),
            "chat_instruction": self.chat_instruction,
            "exemplars": [dataclasses.asdict(e) for e in self.exemplars],
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()

    # ----------------------------------------------------------------- rendering

    def query(self, example_input: str) -> str:
        """The question block for one input, ending where the teacher's answer starts."""
        return self.query_template.format(**input_fields(self.dataset, example_input))

    def answer_text(self, exemplar: Exemplar) -> str:
        return self.answer_template.format(rationale=exemplar.rationale, answer=exemplar.answer)

    def completion_prompt(self, example_input: str) -> str:
        """The few-shot prompt for /v1/completions."""
        shots = "".join(f"{self.query(e.input)} {self.answer_text(e)}\n\n" for e in self.exemplars)
        return shots + self.query(example_input)

    def chat_messages(self, example_input: str) -> list[dict[str, str]]:
        """The same exemplars as alternating user/assistant turns for /v1/chat/completions."""
        messages = [{"role": "system", "content": self.chat_instruction}]
        for exemplar in self.exemplars:
            messages.append({"role": "user", "content": _chat_query(self.query(exemplar.input))})
            messages.append({"role": "assistant", "content": self.answer_text(exemplar)})
        messages.append({"role": "user", "content": _chat_query(self.query(example_input))})
        return messages


def _chat_query(query: str) -> str:
    """A chat turn needs no trailing 'A:' (the assistant turn is the answer)."""
    stripped = query.rstrip()
    return stripped[: -len("A:")].rstrip() if stripped.endswith("A:") else stripped


def input_fields(dataset: str, example_input: str) -> dict[str, str]:
    """Template fields of one input: {input} always; {premise}/{hypothesis} for NLI inputs
    ('premise</s>hypothesis', as the data side formats them)."""
    fields = {"input": example_input}
    if dataset in NLI_DATASETS:
        if NLI_SEPARATOR not in example_input:
            raise ValueError(
                f"{dataset} input has no {NLI_SEPARATOR!r} between premise and hypothesis: "
                f"{example_input[:120]!r}"
            )
        premise, hypothesis = example_input.split(NLI_SEPARATOR, 1)
        fields.update(premise=premise.strip(), hypothesis=hypothesis.strip())
    return fields


def builtin_prompt_path(dataset: str) -> str:
    if dataset not in BUILTIN_PROMPT_SETS:
        raise PromptSetError(
            f"no built-in prompt set for dataset {dataset!r} (known: "
            f"{', '.join(BUILTIN_PROMPT_SETS)}); pass --prompt_file"
        )
    name = BUILTIN_PROMPT_SETS[dataset]
    return str(resources.files("sbsd_jax.teacher").joinpath("prompts", f"{name}.json"))


def load_prompt_set(
    dataset: str, prompt_file: str | None = None, *, shots: int | None = None
) -> PromptSet:
    """The prompt set for `dataset`: `prompt_file` or the built-in one, first `shots` exemplars.

    The file's "dataset" must name the dataset whose parser reads the completions (a generic set
    written for 'jsonl' works for any dataset whose parser reads 'The answer is ...')."""
    path = prompt_file or builtin_prompt_path(dataset)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as error:
        raise PromptSetError(f"cannot read prompt file {path}: {error}") from error
    except json.JSONDecodeError as error:
        raise PromptSetError(
            f"{path}: line {error.lineno}: not valid JSON ({error.msg})"
        ) from error
    prompt_set = prompt_set_from_json(raw, source=path, dataset=dataset)
    return prompt_set.with_shots(shots)


def prompt_set_from_json(raw: Any, *, source: str, dataset: str) -> PromptSet:
    """Validate a parsed prompt file; every problem names the file and the field/exemplar."""
    if not isinstance(raw, Mapping):
        raise PromptSetError(f"{source}: expected a JSON object, got {type(raw).__name__}")

    def text(mapping: Mapping[str, Any], field: str, where: str) -> str:
        value = mapping.get(field)
        if not isinstance(value, str) or not value:
            raise PromptSetError(f"{source}: {where}field {field!r} must be non-empty text")
        return value

    file_dataset = raw.get("dataset", dataset)
    if file_dataset != dataset and file_dataset != "jsonl":
        raise PromptSetError(
            f"{source}: field 'dataset' is {file_dataset!r}, but the run is for {dataset!r}"
        )
    stop = raw.get("stop", ["\n\nQ:"])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise PromptSetError(f"{source}: field 'stop' must be a list of non-empty strings")
    exemplars_raw = raw.get("exemplars")
    if not isinstance(exemplars_raw, list):
        raise PromptSetError(f"{source}: field 'exemplars' must be a list")
    exemplars = []
    for index, item in enumerate(exemplars_raw):
        where = f"exemplar {index}: "
        if not isinstance(item, Mapping):
            raise PromptSetError(f"{source}: {where}expected an object")
        exemplars.append(
            Exemplar(
                input=text(item, "input", where),
                rationale=text(item, "rationale", where),
                answer=text(item, "answer", where),
                label=text(item, "label", where),
            )
        )
    prompt_set = PromptSet(
        name=text(raw, "name", ""),
        dataset=dataset,
        query_template=text(raw, "query_template", ""),
        answer_template=text(raw, "answer_template", ""),
        stop=tuple(stop),
        chat_instruction=raw.get("chat_instruction") or DEFAULT_CHAT_INSTRUCTION,
        exemplars=tuple(exemplars),
        source=source,
    )
    _check_templates(prompt_set)
    for index, exemplar in enumerate(prompt_set.exemplars):
        _check_exemplar_parses(prompt_set, index, exemplar)
    return prompt_set


def _check_templates(prompt_set: PromptSet) -> None:
    sample = "premise" + NLI_SEPARATOR + "hypothesis"
    try:
        prompt_set.query(sample)
        prompt_set.answer_template.format(rationale="r", answer="a")
    except (KeyError, IndexError, ValueError) as error:
        raise PromptSetError(
            f"{prompt_set.source}: a template uses an unknown field or bad braces ({error!r}); "
            "query_template may use {input} (and {premise}/{hypothesis} for NLI), "
            "answer_template {rationale} and {answer}"
        ) from error


def _check_exemplar_parses(prompt_set: PromptSet, index: int, exemplar: Exemplar) -> None:
    """The exemplar as the teacher would write it, followed by the next question (as a teacher
    that ignores stop sequences does), must parse back to its own label and rationale."""
    where = f"{prompt_set.source}: exemplar {index}"
    try:
        prompt_set.query(exemplar.input)
    except ValueError as error:
        raise PromptSetError(f"{where}: {error}") from error
    continuation = prompt_set.query(prompt_set.exemplars[0].input)
    written = f"{prompt_set.answer_text(exemplar)}\n\n{continuation}"
    try:
        parsed = parse_completion(prompt_set.dataset, written)
    except UnparseableCompletion as error:
        raise PromptSetError(f"{where}: the answer does not parse: {error.reason}") from error
    if parsed.label != exemplar.label:
        raise PromptSetError(
            f"{where}: the answer parses to label {parsed.label!r}, but 'label' says "
            f"{exemplar.label!r}"
        )
    if parsed.rationale.strip() != exemplar.rationale.strip():
        raise PromptSetError(
            f"{where}: the answer parses to rationale {parsed.rationale[:80]!r}, not the "
            "exemplar's rationale (does the rationale contain the answer cue?)"
        )


def render_prompt(
    prompt_set: PromptSet, example_input: str, *, chat: bool
) -> str | Sequence[dict[str, str]]:
    """The request payload for one input: a text prompt, or chat messages."""
    if chat:
        return prompt_set.chat_messages(example_input)
    return prompt_set.completion_prompt(example_input)


def list_builtin_prompt_files() -> dict[str, str]:
    """dataset -> path of its built-in prompt file (for --help and tests)."""
    return {dataset: builtin_prompt_path(dataset) for dataset in BUILTIN_PROMPT_SETS}
