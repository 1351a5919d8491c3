r"""The README's demo: standard distillation vs distilling step-by-step, over fractions and seeds.

  python -m sbsd_jax.experiments.demo [--workdir=/tmp/sbsd_demo] [--grid=full] [--task=arithmetic]

1. Writes a synthetic task (deterministic in its seed) into <workdir>/data in the paper authors'
   layout, with a rule-based teacher's completions, and reads it back with the real reader and
   parser (the data report). `--task=world` (default): questions about made-up creatures whose
   kind only the teacher's rationale states (CQA-like: knowledge not in the input);
   `--task=arithmetic`: multi-step word problems (SVAMP-like: intermediate steps).
2. For each method (standard: teacher labels only; step_by_step: predict + explain, alpha
   0.5) trains one tiny T5 per (training fraction, seed) from scratch. A seed picks both the
   subset of the training split (as the paper's sweeps do) and the initialisation; the two
   methods see the same subset for the same seed, for the same number of optimizer steps.
   All students of one method train as one vmapped program (sbsd_jax.train.ensemble).
3. Decodes `predict` greedily on valid and test for every student, writes one run directory
   per student (config.json, metrics.jsonl, predictions/), and builds the report
   (sbsd_jax.experiments.report): table, runs.csv and the paper-style figure.
Settings live in configs/demo.py (and configs/demo_arithmetic.py); they were chosen on the
valid split. The task is synthetic, not a benchmark: see the README for what it does and does
not show.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import pathlib
import sys
import time
from collections.abc import Sequence

import ml_collections
from absl import app, flags, logging

from sbsd_jax.experiments.config_files import load_config_file
from sbsd_jax.runtime.host_malloc import restart_with_huge_page_malloc
from sbsd_jax.runtime.jax_platforms import skip_absent_accelerators
from sbsd_jax.runtime.run_storage import local_folder_problem
from sbsd_jax.runtime.xla_flags import apply_default_xla_flags

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
TASK_CONFIGS: dict[str, pathlib.Path] = {
    "world": CONFIGS / "demo.py",
    "arithmetic": CONFIGS / "demo_arithmetic.py",
}
METHODS: tuple[str, ...] = ("standard", "step_by_step")

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/sbsd_demo", "Data, runs and report go here.")
_TASK = flags.DEFINE_enum("task", "world", sorted(TASK_CONFIGS), "Which synthetic task.")
_GRID = flags.DEFINE_enum(
    "grid", "default", ["default", "full"], "default: the reduced grid; full: every fraction."
)
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds per point (default: the config's).")
_STEPS = flags.DEFINE_integer("steps", None, "Override the config's num_train_steps.")
_FRACTIONS = flags.DEFINE_list("fractions", None, "Override the grid's training fractions.")


@dataclasses.dataclass(frozen=True)
class Member:
    """One student: a method, a training fraction and a seed (subset and initialisation)."""

    method: str
    fraction: float
    seed: int

    def workdir(self, root: str) -> str:
        return os.path.join(
            root, "runs", self.method, f"frac_{self.fraction:g}", f"seed_{self.seed}"
        )


@dataclasses.dataclass(frozen=True)
class MethodTiming:
    method: str
    students: int
    steps: int
    compile_seconds: float
    train_seconds: float  # after the first (compiling) step
    examples_per_step: int  # per student

    @property
    def steps_per_second(self) -> float:  # of one student
        return self.students * (self.steps - 1) / max(self.train_seconds, 1e-9)

    @property
    def examples_per_second(self) -> float:  # all students together
        return self.steps_per_second * self.examples_per_step


def grid_members(
    config: ml_collections.ConfigDict,
    full: bool,
    seeds: int | None,
    fractions: Sequence[str] | None,
) -> list[Member]:
    """Every (method, fraction, seed) the run trains, methods outermost."""
    demo = config.demo
    chosen = fractions or (demo.full_fractions if full else demo.fractions)
    num_seeds = int(seeds if seeds is not None else demo.seeds)
    if num_seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {num_seeds}")
    parsed = []
    for value in chosen:
        fraction = float(value)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"training fraction {value!r} is not in (0, 1]")
        parsed.append(fraction)
    return [
        Member(method, fraction, seed)
        for method, fraction, seed in itertools.product(METHODS, parsed, range(num_seeds))
    ]


def member_config(config: ml_collections.ConfigDict, member: Member) -> ml_collections.ConfigDict:
    """The trainer config of one student (what its config.json records)."""
    result = ml_collections.ConfigDict(config.to_dict())
    del result["demo"]
    result.method = member.method
    result.train_fraction = member.fraction
    result.subsample_seed = member.seed
    result.seed = member.seed
    if member.method == "standard":  # no rationale rows: label targets need few tokens
        result.max_target_length = int(config.demo.label_max_target_length)
    return result


def write_task_data(task: str, data_dir: str, config: ml_collections.ConfigDict) -> None:
    demo = config.demo
    if task == "world":
        from sbsd_jax.data import synthetic_world

        synthetic_world.write_paper_layout(
            data_dir,
            synthetic_world.WorldConfig(
                seed=int(demo.data_seed), creatures_per_kind=int(demo.creatures_per_kind)
            ),
        )
    else:
        from sbsd_jax.data import synthetic

        synthetic.write_paper_layout(
            data_dir,
            synthetic.SyntheticConfig(
                seed=int(demo.data_seed),
                num_train=int(demo.num_train),
                num_test=int(demo.num_test),
                min_steps=int(demo.min_steps),
                max_steps=int(demo.max_steps),
            ),
        )


def vocabulary_texts(examples: Sequence) -> list[str]:
    """Training texts a word vocabulary is built from: inputs, labels, rationales (train only)."""
    texts = []
    for example in examples:
        texts += [example.input, example.label]
        if example.rationale:
            texts.append(example.rationale)
    return texts


def majority_floor(task: str, train: Sequence, test: Sequence) -> float:
    """Test accuracy of always answering the most common training label of the question's
    kind (world: per attribute asked, e.g. the commonest food for "What does a X eat?"; that is
    what a student gets that learnt the question forms but nothing about the creatures)."""
    if task == "world":
        from sbsd_jax.data.synthetic_world import question_attribute as question_kind
    else:

        def question_kind(text: str) -> str:
            return ""

    counts: dict[str | None, collections.Counter] = collections.defaultdict(collections.Counter)
    for example in train:
        counts[question_kind(example.input)][example.label] += 1
    hits = 0
    for example in test:
        common = counts.get(question_kind(example.input))
        hits += bool(common) and common.most_common(1)[0][0] == example.label
    return hits / max(len(test), 1)


def task_floor(task: str, train: Sequence, test: Sequence) -> tuple[float, str]:
    """The accuracy a student gets without learning the task: the higher of the majority
    answer and (world) a uniform guess among the answers of the asked attribute."""
    majority = majority_floor(task, train, test)
    if task == "world":
        from sbsd_jax.data.synthetic_world import KINDS

        chance = 1.0 / len(KINDS)
        if chance >= majority:
            return chance, f"chance: 1 of the {len(KINDS)} answers of the asked attribute"
    return majority, "majority answer"


def run_demo(
    workdir: str, task: str, members: Sequence[Member], config: ml_collections.ConfigDict
) -> tuple[list[MethodTiming], object]:
    """Data, vocabulary, every student, the report; returns the timings and the report files."""
    from sbsd_jax.data.sources import load_dataset_splits
    from sbsd_jax.data.vocabulary import WORD_VOCABULARY_SPEC, train_word_vocabulary
    from sbsd_jax.experiments import report as report_lib
    from sbsd_jax.experiments.demo_training import evaluate_members, train_members
    from sbsd_jax.settings import from_config

    data_dir = os.path.join(workdir, "data")
    config = ml_collections.ConfigDict(config.to_dict())
    config.data_dir = data_dir
    write_task_data(task, data_dir, config)
    loaded = load_dataset_splits(from_config.dataset_spec(config))
    print(loaded.report.format(), flush=True)
    splits = loaded.splits
    if config.vocabulary == WORD_VOCABULARY_SPEC:
        config.vocabulary = train_word_vocabulary(
            vocabulary_texts(splits["train"]), os.path.join(data_dir, "vocabulary")
        )
    timings = []
    for method in METHODS:
        method_members = [m for m in members if m.method == method]
        if not method_members:
            continue
        # Each student's settings, validated once and typed (the vocabulary exists by now).
        specs = [from_config.run_spec(member_config(config, m)) for m in method_members]
        trained = train_members(specs, splits)
        timings.append(
            MethodTiming(
                method,
                len(specs),
                trained.steps,
                trained.compile_seconds,
                trained.train_seconds,
                trained.examples_per_step,
            )
        )
        evaluate_members(trained, specs, splits, [m.workdir(workdir) for m in method_members])
    teacher = loaded.report.splits["test"].teacher_accuracy
    floor, floor_name = task_floor(task, splits["train"], splits["test"])
    lines = report_lib.ReferenceLines(teacher_accuracy=teacher, floor=floor, floor_name=floor_name)
    report_lib.write_reference_lines(workdir, lines)
    title = f"Synthetic {task} task, tiny T5 from scratch"
    return timings, report_lib.write_report(workdir, lines=lines, title=title)


def format_timings(timings: Sequence[MethodTiming]) -> str:
    lines = [
        "| method | students | steps each | compile | training | steps/s (one student) "
        "| examples/s (all) |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in timings:
        lines.append(
            f"| {t.method} | {t.students} | {t.steps} | {t.compile_seconds:.0f} s "
            f"| {t.train_seconds:.0f} s | {t.steps_per_second:.1f} | {t.examples_per_second:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = load_config_file(TASK_CONFIGS[_TASK.value])
    if _STEPS.value is not None:
        if _STEPS.value < 2:
            print("sbsd_jax.experiments.demo: --steps must be >= 2", file=sys.stderr)
            return 2
        config.num_train_steps = _STEPS.value
        config.warmup_steps = min(int(config.warmup_steps), _STEPS.value // 4)
    try:
        members = grid_members(config, _GRID.value == "full", _SEEDS.value, _FRACTIONS.value)
    except ValueError as error:
        print(f"sbsd_jax.experiments.demo: {error}", file=sys.stderr)
        return 2
    if problem := local_folder_problem(_WORKDIR.value):
        print(f"sbsd_jax.experiments.demo: --workdir: {problem}", file=sys.stderr)
        return 2
    apply_default_xla_flags()  # as sbsd_jax.main does, before JAX starts
    skip_absent_accelerators()  # as sbsd_jax.main does
    started = time.perf_counter()
    workdir = os.path.abspath(_WORKDIR.value)
    timings, files = run_demo(workdir, _TASK.value, members, config)
    print(
        f"\nSynthetic {_TASK.value} task (generated, rule-based teacher); teacher labels for "
        "both methods; only `predict` is decoded at test time."
    )
    print(files.table)
    print("\n" + format_timings(timings))
    print(f"\nreport:  {files.markdown}\nruns:    {files.csv}\nfigure:  {files.fraction_figure}")
    print(f"students: {os.path.join(workdir, 'runs')}/<method>/frac_<f>/seed_<s>")
    print(f"Total: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    restart_with_huge_page_malloc()  # as sbsd_jax.main does
    app.run(main)
