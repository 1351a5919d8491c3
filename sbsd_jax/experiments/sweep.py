r"""The paper's sweeps: one run per (model, training fraction, method), then a results table.

  python -m sbsd_jax.experiments.sweep --config=configs/cqa.py --workdir_root=DIR \
      --models=t5_v1_1_small,t5_v1_1_base --fractions=0.125,0.25,0.5,1.0 \
      --methods=standard,step_by_step --init_checkpoints=hub \
      --override=vocabulary=/path/to/spiece.model [--dry_run] [--override=alpha=0.3 ...]

--init_checkpoints starts each model's cells from a pretrained checkpoint, as the paper does:
`hub` is each model's released Hugging Face checkpoint (sbsd_jax.model.config.HUB_CHECKPOINTS),
or give `model=folder_or_hub_id` pairs (e.g. local copies on a machine without network).

Every cell uses the same subsampling seed (config.subsample_seed), so cells with equal fractions
see the same examples. Each cell has its own workdir, DIR/<model>/frac_<f>/<method>; a cell whose
metrics.jsonl already holds a test accuracy at the final step is skipped, and an interrupted one
resumes from its checkpoints. --dry_run prints one `python -m sbsd_jax.main` command per cell
(for a cluster) and runs nothing. The table goes to DIR/results.md and DIR/results.json, and
the report builder (sbsd_jax.experiments.report) writes report.md, runs.csv and the figures
(accuracy vs training fraction, and vs model size when several models ran).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence

import ml_collections
from absl import app, flags

from sbsd_jax.experiments.config_files import ConfigFileError, load_config_file, with_overrides
from sbsd_jax.train.metric_writers import read_metrics


def _define_flags() -> None:
    """The command line, defined only when run as a program: importing this module (tests,
    notebooks) must not claim flag names such as --config that other tools also use."""
    flags.DEFINE_string("config", None, "Experiment config file, e.g. configs/cqa.py.")
    flags.DEFINE_string("workdir_root", None, "One workdir per cell goes under here.")
    flags.DEFINE_list("models", ["t5_v1_1_base"], "Student models (MODEL_NAMES).")
    flags.DEFINE_list("fractions", ["1.0"], "Training fractions (config.train_fraction).")
    flags.DEFINE_list("methods", ["standard", "step_by_step"], "config.method values.")
    flags.DEFINE_multi_string(
        "override", [], "field=value applied to every cell, as --config.field=value."
    )
    flags.DEFINE_list(
        "init_checkpoints",
        [],
        "'hub' (each model's released checkpoint) or model=checkpoint pairs; empty: from scratch.",
    )
    flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
    flags.DEFINE_float(
        "teacher_accuracy",
        None,
        "The teacher's test accuracy (0-1), drawn as a line in the figures.",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.mark_flags_as_required(["config", "workdir_root"])


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the sweep."""

    model: str
    fraction: float
    method: str
    init_checkpoint: str = ""  # a Hugging Face folder or hub id; "" trains from scratch

    def workdir(self, root: str) -> str:
        return os.path.join(root, self.model, f"frac_{self.fraction:g}", self.method)


def expand_grid(
    models: Sequence[str],
    fractions: Sequence[float | str],
    methods: Sequence[str],
    init_checkpoints: Mapping[str, str] | None = None,
) -> list[Cell]:
    """Every (model, fraction, method), models outermost; fractions must lie in (0, 1].

    init_checkpoints: model -> checkpoint to start that model's cells from (None: scratch);
    when given, every model needs one."""
    parsed = []
    for text in fractions:
        try:
            fraction = float(text)
        except ValueError:
            raise ValueError(f"--fractions: {text!r} is not a number") from None
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"--fractions: {text!r} is not in (0, 1]")
        parsed.append(fraction)
    if init_checkpoints:
        missing = [model for model in models if model not in init_checkpoints]
        if missing:
            raise ValueError(f"--init_checkpoints: no checkpoint for {', '.join(missing)}")
    return [
        Cell(m, f, k, (init_checkpoints or {}).get(m, ""))
        for m, f, k in itertools.product(models, parsed, methods)
    ]


def parse_init_checkpoints(values: Sequence[str], models: Sequence[str]) -> dict[str, str]:
    """--init_checkpoints: ['hub'] -> each model's released checkpoint, else model=checkpoint."""
    if list(values) == ["hub"]:
        from sbsd_jax.model.config import HUB_CHECKPOINTS

        unknown = [model for model in models if model not in HUB_CHECKPOINTS]
        if unknown:
            raise ValueError(
                f"--init_checkpoints=hub: no released checkpoint for {', '.join(unknown)}"
            )
        return {model: HUB_CHECKPOINTS[model] for model in models}
    pairs = {}
    for value in values:
        model, sep, checkpoint = value.partition("=")
        if not sep or not model or not checkpoint:
            raise ValueError(
                f"--init_checkpoints: expected 'hub' or model=checkpoint, got {value!r}"
            )
        pairs[model] = checkpoint
    return pairs


def cell_overrides(cell: Cell) -> dict[str, str]:
    overrides = {
        "model": cell.model,
        "train_fraction": f"{cell.fraction:g}",
        "method": cell.method,
    }
    if cell.init_checkpoint:
        overrides["init_checkpoint"] = cell.init_checkpoint
    return overrides


def command_for(
    cell: Cell, config_path: str, workdir_root: str, overrides: Mapping[str, str] = {}
) -> list[str]:
    """The `python -m sbsd_jax.main` argv that trains the cell (what --dry_run prints)."""
    argv = [
        "python",
        "-m",
        "sbsd_jax.main",
        f"--config={config_path}",
        f"--workdir={cell.workdir(workdir_root)}",
    ]
    for field, value in {**overrides, **cell_overrides(cell)}.items():
        argv.append(f"--config.{field}={value}")
    return argv


def final_test_accuracy(workdir: str, final_step: int | None = None) -> float | None:
    """The last test accuracy in workdir/metrics.jsonl (at final_step, when given), else None."""
    for row in reversed(read_metrics(workdir)):
        if "test_accuracy" in row and (final_step is None or row["step"] >= final_step):
            return float(row["test_accuracy"])
    return None


def is_finished(workdir: str, num_train_steps: int) -> bool:
    """A run is done when its final step's test evaluation is in metrics.jsonl."""
    return final_test_accuracy(workdir, num_train_steps) is not None


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field:
            raise ValueError(f"--override: expected field=value, got {pair!r}")
        parsed[field] = value
    return parsed


def cell_config(
    base: ml_collections.ConfigDict, cell: Cell, overrides: Mapping[str, str]
) -> ml_collections.ConfigDict:
    """The cell's config, parsed like its `python -m sbsd_jax.main` command line."""
    return with_overrides(base, {**overrides, **cell_overrides(cell)})


def results_table(results: Sequence[tuple[Cell, float | None]]) -> str:
    """Markdown: one row per (model, fraction), one column per method, test accuracy in %."""
    methods = list(dict.fromkeys(cell.method for cell, _ in results))
    rows: dict[tuple[str, float], dict[str, float | None]] = {}
    for cell, accuracy in results:
        rows.setdefault((cell.model, cell.fraction), {})[cell.method] = accuracy
    lines = [
        "| model | train fraction | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for (model, fraction), by_method in rows.items():
        cells = [
            "n/a" if by_method.get(m) is None else f"{100 * by_method[m]:.1f}" for m in methods
        ]
        lines.append(f"| {model} | {fraction:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(workdir_root: str, results: Sequence[tuple[Cell, float | None]]) -> str:
    """DIR/results.md and DIR/results.json; returns the markdown."""
    os.makedirs(workdir_root, exist_ok=True)
    table = results_table(results)
    with open(os.path.join(workdir_root, "results.md"), "w") as handle:
        handle.write("Test accuracy (%)\n\n" + table + "\n")
    payload = [
        {**dataclasses.asdict(cell), "workdir": cell.workdir(workdir_root), "test_accuracy": acc}
        for cell, acc in results
    ]
    with open(os.path.join(workdir_root, "results.json"), "w") as handle:
        json.dump(payload, handle, indent=2)
    return table


def run_sweep(
    config_path: str,
    workdir_root: str,
    cells: Sequence[Cell],
    overrides: Mapping[str, str],
) -> list[tuple[Cell, float | None]]:
    """Trains the unfinished cells one after another in this process; returns the accuracies."""
    from sbsd_jax.runtime.jax_platforms import skip_absent_accelerators
    from sbsd_jax.runtime.xla_flags import apply_default_xla_flags

    apply_default_xla_flags()  # no effect once JAX has started its backends
    skip_absent_accelerators()  # as sbsd_jax.main does
    from sbsd_jax.settings.from_config import run_spec
    from sbsd_jax.train.loop import train_and_evaluate

    base = load_config_file(config_path)
    results = []
    for cell in cells:
        config = cell_config(base, cell, overrides)
        workdir = cell.workdir(workdir_root)
        if is_finished(workdir, int(config.num_train_steps)):
            print(f"skip (finished): {workdir}", flush=True)
        else:
            print(f"run: {workdir}", flush=True)
            train_and_evaluate(run_spec(config), workdir)  # validated once, then typed
        results.append((cell, final_test_accuracy(workdir, int(config.num_train_steps))))
    return results


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {' '.join(argv[1:])}")
    args = flags.FLAGS
    try:
        init_checkpoints = parse_init_checkpoints(args.init_checkpoints, args.models)
        cells = expand_grid(args.models, args.fractions, args.methods, init_checkpoints)
        overrides = parse_overrides(args.override)
        base = load_config_file(args.config)
        from sbsd_jax.settings.from_config import run_spec

        for cell in cells:  # an override or value the trainer would refuse fails here, at once
            run_spec(cell_config(base, cell, overrides), check_data=False)  # data: per cell
    except (ValueError, ConfigFileError) as error:  # settings.spec.ConfigError is a ValueError
        print(f"sbsd_jax.experiments.sweep: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        for cell in cells:
            print(shlex.join(command_for(cell, args.config, args.workdir_root, overrides)))
        return 0
    results = run_sweep(args.config, args.workdir_root, cells, overrides)
    print(write_results(args.workdir_root, results))
    print(describe_report(args.workdir_root, args.teacher_accuracy))
    return 0


def describe_report(workdir_root: str, teacher_accuracy: float | None) -> str:
    """The report builder's files for the sweep's run directories (re-run it any time with
    `python -m sbsd_jax.experiments.report --root=DIR`)."""
    from sbsd_jax.experiments import report

    try:
        lines = report.read_reference_lines(workdir_root)
    except report.ReportInputError as error:
        return f"report: not written: {error}"
    if teacher_accuracy is not None:
        lines = dataclasses.replace(lines, teacher_accuracy=teacher_accuracy)
        report.write_reference_lines(workdir_root, lines)
    files = report.write_report(workdir_root, lines=lines)
    figures = [f for f in (files.fraction_figure, files.model_size_figure) if f]
    return "\n".join(
        [f"report: {files.markdown}", f"runs:   {files.csv}", *(f"figure: {f}" for f in figures)]
    )


if __name__ == "__main__":
    from sbsd_jax.runtime.host_malloc import restart_with_huge_page_malloc

    restart_with_huge_page_malloc()  # as sbsd_jax.main does
    _define_flags()
    app.run(main)
