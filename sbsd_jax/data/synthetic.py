"""The demo task: short multi-step arithmetic word problems with a built-in rule-based teacher.

  input:      "Tom has 7 apples. He buys 5 more. He doubles them. How many apples does Tom have
               now?"
  label:      "24"
  completion: "Tom starts with 7 apples. He buys 5 more, so 7 + 5 = 12. He doubles them, so
               12 * 2 = 24. The answer is 24.\\n\\nQ: Mia has 3 pens. ...\\nA: Mia starts"

The label needs every intermediate result, and the rationale spells each one out, so a student
that learns to explain has seen the sub-computations it needs to predict (the paper's premise).
Numbers stay small (one-digit operands, results under 100) and texts short (inputs < ~150 bytes,
rationales < ~200 bytes) so a tiny byte-level T5 trained from scratch on a laptop CPU learns
something in minutes.

The teacher writes completions the way a few-shot LLM does (rationale, "The answer is N.", then a
continuation into the next "Q:" that the parser cuts), with a configurable rate of imperfect
outputs: arithmetic slips (a wrong but self-consistent answer) and unparseable completions
(cut before the cue, or no number after it), so parse-failure counts and teacher accuracy are
exercised. `write_paper_layout` writes the paper authors' folder layout, read by the real reader.
Everything is a pure function of the config (and its seed).
"""

from __future__ import annotations

import dataclasses
import os
import random
import re

from sbsd_jax.data.paper_layout import write_split

DATASET_NAME = "synthetic"
ANSWER_CUE = "The answer is"

_PEOPLE: tuple[tuple[str, str], ...] = (
    ("Tom", "He"),
    ("Ann", "She"),
    ("Sam", "He"),
    ("Mia", "She"),
    ("Leo", "He"),
    ("Zoe", "She"),
    ("Max", "He"),
    ("Eva", "She"),
)
_ITEMS: tuple[str, ...] = ("apples", "pens", "cards", "coins", "books", "shells", "stamps", "cups")

# Each step: operator, sentence template in the question, clause in the rationale.
# '{n}' is the operand; doubling/tripling spell it as a word in the question.
_ADD_TEMPLATES = ("{P} buys {n} more.", "{P} finds {n} more.", "{P} gets {n} more.")
_SUB_TEMPLATES = ("{P} gives away {n}.", "{P} loses {n}.", "{P} sells {n}.")
_MUL_TEMPLATES = {2: "{P} doubles them.", 3: "{P} triples them."}
_MAX_VALUE = 99


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    num_train: int = 2000
    num_valid: int = 0  # 0: no valid file; the loader carves 10% of train, as for CQA/SVAMP
    num_test: int = 200
    min_steps: int = 2
    max_steps: int = 3
    max_start: int = 9
    max_operand: int = 9
    multiply: bool = True
    wrong_answer_rate: float = 0.05
    unparseable_rate: float = 0.03
    completions_per_file: int = 1000  # the paper's files hold 1000 completions each

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError("need 1 <= min_steps <= max_steps")
        if not 0.0 <= self.wrong_answer_rate + self.unparseable_rate <= 1.0:
            raise ValueError("wrong_answer_rate + unparseable_rate must be within [0, 1]")


@dataclasses.dataclass(frozen=True)
class Step:
    op: str  # '+', '-', '*'
    operand: int
    sentence: str  # question sentence without the pronoun filled in (template)


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    pronoun: str
    item: str
    start: int
    steps: tuple[Step, ...]

    @property
    def text(self) -> str:
        sentences = [f"{self.name} has {self.start} {self.item}."]
        sentences += [step.sentence.format(P=self.pronoun, n=step.operand) for step in self.steps]
        sentences.append(f"How many {self.item} does {self.name} have now?")
        return " ".join(sentences)

    @property
    def answer(self) -> int:
        return solve(self)[-1]


def _apply(op: str, left: int, right: int) -> int:
    return left + right if op == "+" else left - right if op == "-" else left * right


def solve(problem: Problem, slip: tuple[int, int] | None = None) -> list[int]:
    """Values after the start and after each step; `slip=(step, delta)` adds an arithmetic error
    at one step that then propagates, as a real teacher's mistake would."""
    values = [problem.start]
    for index, step in enumerate(problem.steps):
        value = _apply(step.op, values[-1], step.operand)
        if slip is not None and slip[0] == index:
            value += slip[1]
        values.append(value)
    return values


def generate_problem(rng: random.Random, config: SyntheticConfig) -> Problem:
    name, pronoun = rng.choice(_PEOPLE)
    item = rng.choice(_ITEMS)
    start = rng.randint(2, config.max_start)
    value = start
    steps: list[Step] = []
    for _ in range(rng.randint(config.min_steps, config.max_steps)):
        choices = ["+"]
        if value >= 2:
            choices.append("-")
        if (
            config.multiply
            and 2 <= value <= _MAX_VALUE // 3
            and not any(s.op == "*" for s in steps)
        ):
            choices.append("*")
        op = rng.choice(choices)
        if op == "+":
            operand = rng.randint(1, min(config.max_operand, _MAX_VALUE - value))
            sentence = rng.choice(_ADD_TEMPLATES)
        elif op == "-":
            operand = rng.randint(1, min(config.max_operand, value - 1))
            sentence = rng.choice(_SUB_TEMPLATES)
        else:
            operand = rng.choice([2, 3])
            sentence = _MUL_TEMPLATES[operand]
        steps.append(Step(op, operand, sentence))
        value = _apply(op, value, operand)
    return Problem(name, pronoun, item, start, tuple(steps))


def rationale_and_answer(problem: Problem, slip: tuple[int, int] | None = None) -> tuple[str, int]:
    """The teacher's chain of thought: one clause per step with the intermediate result."""
    values = solve(problem, slip)
    clauses = [f"{problem.name} starts with {problem.start} {problem.item}."]
    for index, step in enumerate(problem.steps):
        sentence = step.sentence.format(P=problem.pronoun, n=step.operand)[:-1]
        clauses.append(
            f"{sentence}, so {values[index]} {step.op} {step.operand} = {values[index + 1]}."
        )
    return " ".join(clauses), values[-1]


def teacher_completion(
    problem: Problem, next_problem: Problem, rng: random.Random, config: SyntheticConfig
) -> str:
    """A few-shot-style completion for `problem`, continuing into `next_problem`."""
    draw = rng.random()
    if draw < config.unparseable_rate:
        rationale, _ = rationale_and_answer(problem)
        if rng.random() < 0.5:  # stopped before the cue (length limit): no cue at all
            return rationale[: rng.randint(10, max(11, len(rationale) - 1))]
        return f"{rationale} {ANSWER_CUE} not clear from the question.\n\nQ: {next_problem.text}"
    slip = None
    if draw < config.unparseable_rate + config.wrong_answer_rate:
        step = rng.randrange(len(problem.steps))
        delta = rng.choice([-2, -1, 1, 2])
        if solve(problem)[step + 1] + delta >= 0:
            slip = (step, delta)
    rationale, answer = rationale_and_answer(problem, slip)
    next_rationale, _ = rationale_and_answer(next_problem)
    cut = rng.randint(5, len(next_rationale))
    return (
        f"{rationale} {ANSWER_CUE} {answer}.\n\nQ: {next_problem.text}\nA: {next_rationale[:cut]}"
    )


def generate_split(
    split: str, count: int, config: SyntheticConfig, exclude: set[str] | None = None
) -> tuple[list[dict], list[str]]:
    """`count` distinct problems (none whose text is in `exclude`) as JSON-line records, and the
    teacher's completions for them, both in the same order."""
    split_number = {"train": 0, "valid": 1, "test": 2}[split]
    rng = random.Random(config.seed * 1009 + split_number)
    teacher_rng = random.Random(config.seed * 1009 + split_number + 500)
    seen = set(exclude or ())
    problems: list[Problem] = []
    attempts = 0
    while len(problems) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(f"cannot generate {count} distinct problems with {config}")
        problem = generate_problem(rng, config)
        if problem.text not in seen:
            seen.add(problem.text)
            problems.append(problem)
    records = [
        {"id": f"{DATASET_NAME}-{split}-{index}", "input": p.text, "label": str(p.answer)}
        for index, p in enumerate(problems)
    ]
    completions = [
        teacher_completion(p, problems[(index + 1) % len(problems)], teacher_rng, config)
        for index, p in enumerate(problems)
    ]
    return records, completions


def write_paper_layout(data_dir: str, config: SyntheticConfig = SyntheticConfig()) -> str:
    """Write {data_dir}/synthetic/synthetic_{split}.json and llm/{split}_CoT_{i}.json; returns
    the dataset folder. Test (and valid) problems never repeat a train problem."""
    used: set[str] = set()
    for split, count in (
        ("train", config.num_train),
        ("valid", config.num_valid),
        ("test", config.num_test),
    ):
        if count == 0:
            continue
        records, completions = generate_split(split, count, config, exclude=used)
        used.update(record["input"] for record in records)
        write_split(
            data_dir, DATASET_NAME, split, records, completions, config.completions_per_file
        )
    return os.path.join(data_dir, DATASET_NAME)


# --- Reading a problem back from its text: the rule-based teacher for any input string. ---

_OPENING = re.compile(r"^(\w+) has (\d+) (\w+)\.$")


def _template_pattern(template: str) -> re.Pattern[str]:
    escaped = re.escape(template).replace(r"\{P\}", r"(?P<P>\w+)").replace(r"\{n\}", r"(?P<n>\d+)")
    return re.compile(f"^{escaped}$")


# (pattern, operator, template, fixed operand or None)
_STEP_PATTERNS: tuple[tuple[re.Pattern[str], str, str, int | None], ...] = (
    *((_template_pattern(t), "+", t, None) for t in _ADD_TEMPLATES),
    *((_template_pattern(t), "-", t, None) for t in _SUB_TEMPLATES),
    *((_template_pattern(t), "*", t, n) for n, t in _MUL_TEMPLATES.items()),
)


def parse_problem(text: str) -> Problem | None:
    """The Problem a synthetic input text describes, or None for any other text."""
    sentences = [s.strip() for s in re.findall(r"[^.?]+[.?]", text)]
    if len(sentences) < 3:
        return None
    opening = _OPENING.match(sentences[0])
    if opening is None:
        return None
    name, start, item = opening.group(1), int(opening.group(2)), opening.group(3)
    pronoun = "They"
    steps: list[Step] = []
    for sentence in sentences[1:-1]:
        for pattern, op, template, fixed_operand in _STEP_PATTERNS:
            match = pattern.match(sentence)
            if match:
                pronoun = match.group("P")
                operand = fixed_operand if fixed_operand is not None else int(match.group("n"))
                steps.append(Step(op, operand, template))
                break
        else:
            return None
    if sentences[-1] != f"How many {item} does {name} have now?":
        return None
    return Problem(name, pronoun, item, start, tuple(steps))


class RuleBasedTeacher:
    """A stand-in for a few-shot LLM on the synthetic task: input text in, completion out.

    Deterministic for a given seed and call order; unknown inputs get an unparseable reply, so
    the teacher pipeline's failure path can be exercised too.
    """

    def __init__(self, config: SyntheticConfig = SyntheticConfig()) -> None:
        self.config = config
        self._rng = random.Random(config.seed * 1009 + 777)

    def complete(self, input_text: str) -> str:
        problem = parse_problem(input_text)
        if problem is None:
            return "I cannot tell from the question."
        next_problem = generate_problem(self._rng, self.config)
        return teacher_completion(problem, next_problem, self._rng, self.config)
