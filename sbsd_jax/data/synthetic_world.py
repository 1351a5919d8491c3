r"""The demo's knowledge task: questions about a made-up world, with a rule-based teacher.

A world (a pure function of the seed) holds made-up creatures, each of one kind, and every kind
has one value per attribute:

  kinds:      bird, fish, frog, bee, bat, snake, mole, crab
  attributes: home, food, cover, motion, sound  ("fish live in the river", "bats eat fruit", ...)
  creatures:  "zorbit" is a fish, "plim" is a bat, ... (made-up names, a few per kind)

  input:      "What does a zorbit eat?"
  label:      "plankton"
  completion: "A zorbit is a kind of fish. Fish eat plankton. So the answer is plankton.\n\n
               Q: Where does a plim live?\nA: A plim is"

The answer is not in the question: it needs two facts the input does not state, the creature's
kind and the kind's attribute. The teacher's rationale states both, so a student that learns to
explain is told what kind each creature is (the paper's premise that rationales carry task
knowledge, as CoS-E rationales do for CommonsenseQA). A student trained on labels alone has to
work a creature's kind out from its other answers. Test questions ask about (creature,
attribute) pairs that no training or validation question asks about; every creature has at least
one training question, so both methods can in principle answer every test question.

The teacher is imperfect like a few-shot LLM: with `wrong_answer_rate` it confuses a creature's
kind (a wrong but self-consistent rationale and answer) and with `unparseable_rate` it writes a
completion that never reaches the answer cue (cut by a length limit). Like CommonsenseQA's the
answer is a word, scored by exact match; unlike it there are no answer choices in the input
(they would triple the input length and the demo's training time), so the floor is the
majority answer (one kind's value in eight). Records (`input`, `label`) and completions are in
the paper authors' folder layout (`llm/{split}_CoT_{i}.json`), read by the real reader and
parser. Everything is a pure function of the config (and its seed).
"""

from __future__ import annotations

import dataclasses
import os
import random

from sbsd_jax.data.paper_layout import write_split

DATASET_NAME = "synthetic_world"
ANSWER_CUE = "So the answer is"

# kind -> (plural, {attribute: value}); each attribute's values differ between kinds.
KINDS: dict[str, tuple[str, dict[str, str]]] = {
    "bird": (
        "Birds",
        {
            "home": "nest",
            "food": "seeds",
            "cover": "feathers",
            "motion": "flying",
            "sound": "chirp",
        },
    ),  # noqa: E501
    "fish": (
        "Fish",
        {
            "home": "river",
            "food": "plankton",
            "cover": "scales",
            "motion": "swimming",
            "sound": "bubble",
        },
    ),  # noqa: E501
    "frog": (
        "Frogs",
        {"home": "pond", "food": "flies", "cover": "slime", "motion": "hopping", "sound": "croak"},
    ),  # noqa: E501
    "bee": (
        "Bees",
        {"home": "hive", "food": "nectar", "cover": "fuzz", "motion": "buzzing", "sound": "hum"},
    ),  # noqa: E501
    "bat": (
        "Bats",
        {"home": "cave", "food": "fruit", "cover": "fur", "motion": "gliding", "sound": "squeak"},
    ),  # noqa: E501
    "snake": (
        "Snakes",
        {
            "home": "desert",
            "food": "mice",
            "cover": "skin",
            "motion": "slithering",
            "sound": "hiss",
        },
    ),  # noqa: E501
    "mole": (
        "Moles",
        {
            "home": "tunnel",
            "food": "worms",
            "cover": "velvet",
            "motion": "digging",
            "sound": "sniff",
        },
    ),  # noqa: E501
    "crab": (
        "Crabs",
        {
            "home": "beach",
            "food": "algae",
            "cover": "shell",
            "motion": "scuttling",
            "sound": "click",
        },
    ),  # noqa: E501
}
ATTRIBUTES: tuple[str, ...] = ("home", "food", "cover", "motion", "sound")
# attribute -> (question about a creature, the kind's fact with {plural}/{value})
_TEMPLATES: dict[str, tuple[str, str]] = {
    "home": ("Where does a {name} live?", "{plural} live in the {value}."),
    "food": ("What does a {name} eat?", "{plural} eat {value}."),
    "cover": ("What is a {name} covered in?", "{plural} are covered in {value}."),
    "motion": ("How does a {name} get around?", "{plural} get around by {value}."),
    "sound": ("What sound does a {name} make?", "{plural} make a {value} sound."),
}
_ONSETS = (
    "b",
    "bl",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "k",
    "l",
    "m",
    "n",
    "p",
    "pl",
    "r",
    "s",
    "t",
    "v",
    "z",
)
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "b", "k", "m", "n", "p", "rt", "sh", "t", "x")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    creatures_per_kind: int = 12
    test_attributes_per_creature: int = 1  # held-out (creature, attribute) pairs for test
    valid_fraction: float = 0.1  # of the remaining pairs, written as the valid split
    wrong_answer_rate: float = 0.05
    unparseable_rate: float = 0.03
    completions_per_file: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.test_attributes_per_creature < len(ATTRIBUTES) - 1:
            raise ValueError(f"test_attributes_per_creature must be in [1, {len(ATTRIBUTES) - 2}]")
        if not 0.0 <= self.valid_fraction < 0.5:
            raise ValueError("valid_fraction must be in [0, 0.5)")
        if not 0.0 <= self.wrong_answer_rate + self.unparseable_rate <= 1.0:
            raise ValueError("wrong_answer_rate + unparseable_rate must be within [0, 1]")


@dataclasses.dataclass(frozen=True)
class Question:
    creature: str
    kind: str
    attribute: str

    @property
    def text(self) -> str:
        return _TEMPLATES[self.attribute][0].format(name=self.creature)

    @property
    def answer(self) -> str:
        return KINDS[self.kind][1][self.attribute]


def make_creatures(config: WorldConfig) -> dict[str, str]:
    """Made-up creature name -> kind, `creatures_per_kind` of each kind, distinct names."""
    rng = random.Random(config.seed * 7919 + 1)
    names: set[str] = set()
    creatures: dict[str, str] = {}
    for kind in KINDS:
        for _ in range(config.creatures_per_kind):
            while True:
                syllables = rng.choice((1, 2, 2))
                name = "".join(
                    rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)
                ) + rng.choice(_CODAS)
                if name not in names and name not in KINDS:
                    break
            names.add(name)
            creatures[name] = kind
    return creatures


def split_questions(config: WorldConfig) -> dict[str, list[Question]]:
    """train / valid / test questions: each (creature, attribute) pair is asked once, test pairs
    are held out per creature (so every creature keeps training questions)."""
    creatures = make_creatures(config)
    rng = random.Random(config.seed * 7919 + 2)
    held_in: list[tuple[str, str, str]] = []
    test: list[Question] = []
    for creature, kind in creatures.items():
        attributes = list(ATTRIBUTES)
        rng.shuffle(attributes)
        cut = config.test_attributes_per_creature
        test += [Question(creature, kind, a) for a in attributes[:cut]]
        held_in += [(creature, kind, a) for a in attributes[cut:]]
    rng.shuffle(held_in)
    # valid never takes a creature's last held-in pair: each creature keeps a training question
    per_creature = {c: sum(1 for h in held_in if h[0] == c) for c in creatures}
    num_valid = int(round(config.valid_fraction * len(held_in)))
    valid: list[Question] = []
    train: list[Question] = []
    for creature, kind, attribute in held_in:
        question = Question(creature, kind, attribute)
        if len(valid) < num_valid and per_creature[creature] > 1:
            per_creature[creature] -= 1
            valid.append(question)
        else:
            train.append(question)
    rng.shuffle(test)
    return {"train": train, "valid": valid, "test": test}


def rationale_for(question: Question, kind: str) -> tuple[str, str]:
    """The teacher's chain of thought when it believes the creature is a `kind`, and its answer."""
    plural, values = KINDS[kind]
    value = values[question.attribute]
    fact = _TEMPLATES[question.attribute][1].format(plural=plural, value=value)
    return f"A {question.creature} is a kind of {kind}. {fact}", value


def teacher_completion(
    question: Question, next_question: Question, rng: random.Random, config: WorldConfig
) -> str:
    """A few-shot-style completion for `question`, continuing into `next_question`."""
    draw = rng.random()
    kind = question.kind
    if config.unparseable_rate <= draw < config.unparseable_rate + config.wrong_answer_rate:
        kind = rng.choice([k for k in KINDS if k != kind])
    rationale, value = rationale_for(question, kind)
    if draw < config.unparseable_rate:  # stopped by a length limit before the cue
        return rationale[: rng.randint(10, len(rationale) - 1)]
    continuation = f"\n\nQ: {next_question.text}\nA: A {next_question.creature} is"
    return f"{rationale} {ANSWER_CUE} {value}.{continuation}"


def split_records(
    split: str, questions: list[Question], config: WorldConfig
) -> tuple[list[dict], list[str]]:
    """JSON-line records (id, input, label) and the teacher's completions, in the same order."""
    teacher_rng = random.Random(config.seed * 7919 + 100 + ("train", "valid", "test").index(split))
    records = [
        {
            "id": f"{DATASET_NAME}-{split}-{index}",
            "input": q.text,
            "label": q.answer,
        }
        for index, q in enumerate(questions)
    ]
    completions = [
        teacher_completion(q, questions[(index + 1) % len(questions)], teacher_rng, config)
        for index, q in enumerate(questions)
    ]
    return records, completions


def write_paper_layout(data_dir: str, config: WorldConfig = WorldConfig()) -> str:
    """Write {data_dir}/synthetic_world/synthetic_world_{split}.json and llm/{split}_CoT_{i}.json
    for train, valid and test; returns the dataset folder."""
    for split, questions in split_questions(config).items():
        if questions:
            records, completions = split_records(split, questions, config)
            write_split(
                data_dir, DATASET_NAME, split, records, completions, config.completions_per_file
            )
    return os.path.join(data_dir, DATASET_NAME)


def question_attribute(text: str) -> str | None:
    """The attribute a question text asks about (None for any other text)."""
    for attribute, (template, _) in _TEMPLATES.items():
        before, after = template.split("{name}")
        if text.startswith(before) and text.endswith(after):
            return attribute
    return None
