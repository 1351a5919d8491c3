r"""The README's demo: standard distillation vs distilling step-by-step on the synthetic task.

  python -m sbsd_jax.experiments.demo [--workdir=/tmp/sbsd_demo]

1. Writes the synthetic arithmetic dataset (deterministic in --seed) into <workdir>/data in the
   paper authors' layout, so the real reader, parser and report load it.
2. Trains configs/demo.py from scratch twice on the same training examples and teacher labels
   (label_type=llm): method=standard ("standard distillation" in the paper's figures) and
   method=step_by_step (alpha 0.5); only `predict` is decoded at test time.
3. Prints a table: test accuracy (exact match on the number), examples seen, steps, wall time,
   and each run's files.
The task is synthetic (generated here, with a rule-based teacher), not a benchmark.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from collections.abc import Sequence

import ml_collections
from absl import app, flags, logging

from sbsd_jax.data.synthetic import SyntheticConfig, write_paper_layout
from sbsd_jax.experiments.config_files import load_config_file
from sbsd_jax.train.host_malloc import restart_with_huge_page_malloc
from sbsd_jax.train.xla_flags import apply_default_xla_flags

DEMO_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.py"
METHODS: tuple[str, ...] = ("standard", "step_by_step")

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/sbsd_demo", "Data and both runs go under here.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic dataset and of both runs.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 2000, "Synthetic training problems (10% -> valid).")
_NUM_TEST = flags.DEFINE_integer("num_test", 200, "Synthetic test problems.")
_STEPS = flags.DEFINE_integer("steps", None, "Override configs/demo.py's num_train_steps.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Override configs/demo.py's batch_size.")


@dataclasses.dataclass(frozen=True)
class DemoRow:
    """One run of the comparison."""

    method: str
    test_accuracy: float | None
    examples_seen: int  # optimizer steps x batch size (step_by_step: 2 sequences per example)
    train_steps: int
    wall_seconds: float  # the whole call: data, compilation, training, evaluation
    workdir: str
    metrics: str
    predictions: str


def load_demo_config(path: os.PathLike[str] | str = DEMO_CONFIG) -> ml_collections.ConfigDict:
    return load_config_file(path)


def run_demo(
    workdir: str,
    synthetic: SyntheticConfig,
    config: ml_collections.ConfigDict,
    methods: Sequence[str] = METHODS,
) -> list[DemoRow]:
    """Writes the data once, then trains one run per method under <workdir>/<method>."""
    from sbsd_jax.train.loop import train_and_evaluate

    data_dir = os.path.join(workdir, "data")
    write_paper_layout(data_dir, synthetic)
    rows = []
    for method in methods:
        run_config = ml_collections.ConfigDict(config.to_dict())
        run_config.data_dir = data_dir
        run_config.method = method
        if method == "standard":
            # No rationale targets: label rows only need the label's few bytes. Same examples,
            # same steps; only the padding differs.
            run_config.max_target_length = int(config.label_max_target_length)
        run_config.seed = synthetic.seed
        started = time.perf_counter()
        summary = train_and_evaluate(run_config, os.path.join(workdir, method))
        rows.append(
            DemoRow(
                method=method,
                test_accuracy=summary.eval_metrics.get("test_accuracy"),
                examples_seen=summary.final_step * int(run_config.batch_size),
                train_steps=summary.final_step,
                wall_seconds=time.perf_counter() - started,
                workdir=summary.paths.workdir,
                metrics=summary.paths.metrics,
                predictions=summary.paths.predictions,
            )
        )
    return rows


def format_table(rows: Sequence[DemoRow]) -> str:
    """A markdown table of the comparison and, below it, where each run's files are."""
    lines = [
        "| method | test accuracy | training examples seen | train steps | wall time |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        accuracy = "n/a" if row.test_accuracy is None else f"{row.test_accuracy:.1%}"
        lines.append(
            f"| {row.method} | {accuracy} | {row.examples_seen} | {row.train_steps} "
            f"| {row.wall_seconds:.0f} s |"
        )
    lines.append("")
    for row in rows:
        lines.append(f"{row.method}: workdir {row.workdir}")
        lines.append(f"  metrics:     {row.metrics}")
        lines.append(f"  predictions: {row.predictions}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = load_demo_config()
    if _STEPS.value is not None:
        config.num_train_steps = _STEPS.value
        config.warmup_steps = min(int(config.warmup_steps), _STEPS.value // 4)
    if _BATCH_SIZE.value is not None:
        config.batch_size = _BATCH_SIZE.value
    synthetic = SyntheticConfig(
        seed=_SEED.value,
        num_train=_NUM_TRAIN.value,
        num_test=_NUM_TEST.value,
        min_steps=int(config.synthetic_min_steps),
        max_steps=int(config.synthetic_max_steps),
    )
    apply_default_xla_flags()  # as sbsd_jax.main does, before JAX starts
    started = time.perf_counter()
    rows = run_demo(os.path.abspath(_WORKDIR.value), synthetic, config)
    print("\nSynthetic arithmetic task (generated, rule-based teacher); teacher labels for both.")
    print(format_table(rows))
    print(f"Total: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    restart_with_huge_page_malloc()  # as sbsd_jax.main does
    app.run(main)
