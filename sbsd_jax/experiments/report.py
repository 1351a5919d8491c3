r"""Results of a sweep or the demo from its run directories: a table, a CSV and the paper's figures.

  python -m sbsd_jax.experiments.report --root=DIR [--teacher_accuracy=0.77] [--split=test]

Every run directory below DIR that holds a `config.json` and a `metrics.jsonl` (what
sbsd_jax.main and the demo write) is one run: its method, model, training fraction and seed come
from config.json, its accuracies from the last metrics row that has them. Runs that differ only
in seed are one point: mean and standard deviation over seeds. Written to DIR:

  report.md                    the table (mean ± std and n per method x model x fraction)
  runs.csv                     one row per run
  accuracy_vs_fraction.png     accuracy against training-data fraction, one line per method,
                               error bars over seeds, the teacher (and the floor) as lines
  accuracy_vs_model_size.png   when the runs hold more than one model: accuracy against model
                               parameters at the largest fraction, teacher as a line

Nothing is trained: re-run it any time, e.g. while a sweep is still going. Reference lines (the
teacher's accuracy, a floor such as the majority answer) come from flags or from
DIR/reference_lines.json, which the demo writes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence

REFERENCE_LINES_FILE = "reference_lines.json"
METHOD_LABELS: dict[str, str] = {
    "standard": "Standard (teacher labels)",
    "step_by_step": "Distilling step-by-step",
    "cot": "CoT fine-tuning",
}


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One finished (or partly finished) run, as read from its directory."""

    workdir: str
    method: str
    label_type: str
    model: str
    num_params: int | None
    train_fraction: float
    seed: int
    step: int | None
    valid_accuracy: float | None
    test_accuracy: float | None


@dataclasses.dataclass(frozen=True)
class Point:
    """The runs of one (method, model, fraction) cell, aggregated over seeds."""

    method: str
    model: str
    num_params: int | None
    train_fraction: float
    accuracies: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


@dataclasses.dataclass(frozen=True)
class ReferenceLines:
    teacher_accuracy: float | None = None
    floor: float | None = None
    floor_name: str = "floor"


def _last_value(rows: Sequence[Mapping], name: str) -> tuple[int | None, float | None]:
    for row in reversed(rows):
        if row.get(name) is not None:
            return row.get("step"), float(row[name])
    return None, None


def read_run(workdir: str) -> RunResult | None:
    """The run in `workdir`, or None when it has no config.json or no metrics.jsonl yet."""
    config_path = os.path.join(workdir, "config.json")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if not (os.path.isfile(config_path) and os.path.isfile(metrics_path)):
        return None
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    with open(metrics_path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    step, test = _last_value(rows, "test_accuracy")
    _, valid = _last_value(rows, "valid_accuracy")
    _, num_params = _last_value(rows, "num_params")
    return RunResult(
        workdir=workdir,
        method=str(config.get("method", "?")),
        label_type=str(config.get("label_type", "?")),
        model=str(config.get("model", "?")),
        num_params=None if num_params is None else int(num_params),
        train_fraction=float(config.get("train_fraction", 1.0)),
        seed=int(config.get("seed", 0)),
        step=step,
        valid_accuracy=valid,
        test_accuracy=test,
    )


def collect_runs(root: str) -> list[RunResult]:
    """Every run directory below `root` (sorted by path)."""
    runs = []
    for folder, _, files in sorted(os.walk(root)):
        if "config.json" in files and "metrics.jsonl" in files:
            run = read_run(folder)
            if run is not None:
                runs.append(run)
    return runs


def aggregate(runs: Sequence[RunResult], split: str = "test") -> list[Point]:
    """Runs with an accuracy on `split`, grouped by (method, model, fraction) over seeds."""
    groups: dict[tuple[str, str, float], list[RunResult]] = {}
    for run in runs:
        if getattr(run, f"{split}_accuracy") is not None:
            groups.setdefault((run.method, run.model, run.train_fraction), []).append(run)
    points = []
    for (method, model, fraction), members in sorted(groups.items()):
        points.append(
            Point(
                method=method,
                model=model,
                num_params=members[0].num_params,
                train_fraction=fraction,
                accuracies=tuple(getattr(run, f"{split}_accuracy") for run in members),
            )
        )
    return points


def markdown_table(points: Sequence[Point], split: str, lines: ReferenceLines) -> str:
    """Methods as columns, (model, fraction) as rows: 'mean ± std (n)' in percent."""
    methods = list(dict.fromkeys(point.method for point in points))
    cells = {(p.model, p.train_fraction, p.method): p for p in points}
    rows = sorted({(p.model, p.train_fraction) for p in points})
    out = [
        f"{split} accuracy (%), mean ± std over seeds (n runs)",
        "",
        "| model | train fraction | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for model, fraction in rows:
        values = []
        for method in methods:
            point = cells.get((model, fraction, method))
            values.append(
                "n/a"
                if point is None
                else f"{100 * point.mean:.1f} ± {100 * point.std:.1f} ({len(point.accuracies)})"
            )
        out.append(f"| {model} | {fraction:g} | " + " | ".join(values) + " |")
    if lines.teacher_accuracy is not None:
        out.append(f"\nTeacher: {100 * lines.teacher_accuracy:.1f}%.")
    if lines.floor is not None:
        out.append(f"Floor ({lines.floor_name}): {100 * lines.floor:.1f}%.")
    return "\n".join(out)


def write_runs_csv(path: str, runs: Sequence[RunResult]) -> None:
    fields = [field.name for field in dataclasses.fields(RunResult)]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for run in runs:
            writer.writerow(dataclasses.asdict(run))


def _axes():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a TPU VM or in CI
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    return plt, figure, axes


def _reference(axes, lines: ReferenceLines) -> None:
    if lines.teacher_accuracy is not None:
        axes.axhline(
            100 * lines.teacher_accuracy,
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=f"Teacher ({100 * lines.teacher_accuracy:.1f}%)",
        )
    if lines.floor is not None:
        axes.axhline(
            100 * lines.floor,
            color="gray",
            linestyle=":",
            linewidth=1.2,
            label=f"{lines.floor_name.capitalize()} ({100 * lines.floor:.1f}%)",
        )


def plot_accuracy_vs_fraction(
    path: str, points: Sequence[Point], lines: ReferenceLines, split: str, title: str = ""
) -> None:
    """The paper's data-efficiency figure: one line per (method, model), error bars over seeds."""
    plt, figure, axes = _axes()
    series: dict[tuple[str, str], list[Point]] = {}
    for point in points:
        series.setdefault((point.method, point.model), []).append(point)
    several_models = len({model for _, model in series}) > 1
    for (method, model), members in series.items():
        members = sorted(members, key=lambda p: p.train_fraction)
        label = METHOD_LABELS.get(method, method) + (f", {model}" if several_models else "")
        axes.errorbar(
            [100 * p.train_fraction for p in members],
            [100 * p.mean for p in members],
            yerr=[100 * p.std for p in members],
            marker="o",
            capsize=4,
            linewidth=2,
            label=label,
        )
    _reference(axes, lines)
    fractions = sorted({100 * p.train_fraction for p in points})
    if fractions and min(fractions) > 0:
        axes.set_xscale("log", base=2)
        axes.set_xticks(fractions, [f"{f:g}" for f in fractions])
    axes.set_xlabel("% of training set used")
    axes.set_ylabel(f"{split.capitalize()} accuracy (%)")
    axes.set_title(title or "Accuracy vs training data")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_accuracy_vs_model_size(
    path: str, points: Sequence[Point], lines: ReferenceLines, split: str
) -> None:
    """Accuracy against student parameters at each method's largest fraction."""
    plt, figure, axes = _axes()
    for method in dict.fromkeys(p.method for p in points):
        largest = max(p.train_fraction for p in points if p.method == method)
        members = sorted(
            (p for p in points if p.method == method and p.train_fraction == largest),
            key=lambda p: p.num_params or 0,
        )
        known = all(p.num_params for p in members)
        sizes = [p.num_params if known else index for index, p in enumerate(members)]
        axes.errorbar(
            sizes,
            [100 * p.mean for p in members],
            yerr=[100 * p.std for p in members],
            marker="o",
            capsize=4,
            linewidth=2,
            label=f"{METHOD_LABELS.get(method, method)} ({largest:g} of the data)",
        )
        if not known:  # runs without a parameter count: models in order, by name
            axes.set_xticks(sizes, [p.model for p in members])
    _reference(axes, lines)
    if all(p.num_params for p in points):
        axes.set_xscale("log")
    axes.set_xlabel("Student parameters")
    axes.set_ylabel(f"{split.capitalize()} accuracy (%)")
    axes.set_title("Accuracy vs model size")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def read_reference_lines(root: str) -> ReferenceLines:
    path = os.path.join(root, REFERENCE_LINES_FILE)
    if not os.path.isfile(path):
        return ReferenceLines()
    with open(path, encoding="utf-8") as handle:
        payload = json.load(handle)
    return ReferenceLines(
        **{k: v for k, v in payload.items() if k in ("teacher_accuracy", "floor", "floor_name")}
    )


def write_reference_lines(root: str, lines: ReferenceLines) -> None:
    with open(os.path.join(root, REFERENCE_LINES_FILE), "w", encoding="utf-8") as handle:
        json.dump(dataclasses.asdict(lines), handle, indent=2)


@dataclasses.dataclass(frozen=True)
class ReportFiles:
    markdown: str
    csv: str
    fraction_figure: str | None
    model_size_figure: str | None
    table: str


def write_report(
    root: str,
    *,
    split: str = "test",
    lines: ReferenceLines | None = None,
    title: str = "",
) -> ReportFiles:
    """Collects the runs below `root` and writes report.md, runs.csv and the figures there."""
    runs = collect_runs(root)
    lines = lines if lines is not None else read_reference_lines(root)
    points = aggregate(runs, split)
    table = markdown_table(points, split, lines)
    markdown = os.path.join(root, "report.md")
    with open(markdown, "w", encoding="utf-8") as handle:
        handle.write(table + "\n")
    csv_path = os.path.join(root, "runs.csv")
    write_runs_csv(csv_path, runs)
    fraction_figure = model_figure = None
    if points:
        fraction_figure = os.path.join(root, "accuracy_vs_fraction.png")
        plot_accuracy_vs_fraction(fraction_figure, points, lines, split, title)
        if len({p.model for p in points}) > 1:
            model_figure = os.path.join(root, "accuracy_vs_model_size.png")
            plot_accuracy_vs_model_size(model_figure, points, lines, split)
    return ReportFiles(markdown, csv_path, fraction_figure, model_figure, table)


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def main(argv: Sequence[str]) -> int:
    from absl import flags

    del argv
    args = flags.FLAGS
    if not os.path.isdir(args.root):
        print(f"sbsd_jax.experiments.report: --root {args.root!r} is not a folder")
        return 2
    stored = read_reference_lines(args.root)
    lines = ReferenceLines(
        teacher_accuracy=_finite_or_none(args.teacher_accuracy) or stored.teacher_accuracy,
        floor=_finite_or_none(args.floor) or stored.floor,
        floor_name=stored.floor_name,
    )
    files = write_report(args.root, split=args.split, lines=lines)
    print(files.table)
    print(f"\nreport: {files.markdown}\nruns:   {files.csv}")
    for figure in (files.fraction_figure, files.model_size_figure):
        if figure:
            print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("root", None, "Folder holding the run directories.", required=True)
    flags.DEFINE_enum("split", "test", ["test", "valid"], "Which accuracy to report.")
    flags.DEFINE_float("teacher_accuracy", None, "Teacher's accuracy on the split (0-1).")
    flags.DEFINE_float("floor", None, "A floor to draw, e.g. the majority answer (0-1).")
    app.run(main)
