r"""Results of a sweep or the demo from its run directories: a table, a CSV and the paper's figures.

  python -m sbsd_jax.experiments.report --root=DIR [--teacher_accuracy=0.77] [--split=test]

Every run directory below DIR that holds a `config.json` and a `metrics.jsonl` (what
sbsd_jax.main and the demo write) is one run: its method, model, training fraction and seed come
from config.json, its accuracies from the last metrics row that has them, its inference cost
from `efficiency.json` when the run wrote one (sbsd_jax.main does, at the end of a run that
evaluates). Runs that differ only in seed are one point: mean and standard deviation over
seeds. Written to DIR:

  report.md                    the table (mean ± std and n per method x model x fraction)
  runs.csv                     one row per run
  accuracy_vs_fraction.png     accuracy against training-data fraction, one line per method,
                               error bars over seeds, the teacher (and the floor) as lines
  accuracy_vs_model_size.png   when the runs hold more than one model: accuracy against model
                               parameters at the largest fraction, teacher as a line
  accuracy_vs_latency.png      when runs have efficiency.json: accuracy against greedy-decoding
                               latency per example, each point named with its parameters,
                               the teacher's accuracy (and size, when given) as a line

Nothing is trained: re-run it any time, e.g. while a sweep is still going. Reference lines (the
teacher's accuracy and size, a floor such as the majority answer) come from flags or from
DIR/reference_lines.json, which the demo writes. The teacher's size is the reference for the
students' (e.g. `--teacher_params=540e9 --teacher_name="PaLM 540B"`, the paper's teacher).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence

from sbsd_jax.eval.efficiency import EFFICIENCY_FILE
from sbsd_jax.train.metric_writers import read_metrics

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
    # From efficiency.json, when the run wrote one (None otherwise).
    latency_ms: float | None = None  # greedy decoding, per example at batch 1
    throughput_examples_per_s: float | None = None  # at the run's eval batch
    inference_mib: float | None = None  # XLA memory analysis of the batch decode, per device
    efficiency_device: str | None = None


@dataclasses.dataclass(frozen=True)
class Point:
    """The runs of one (method, model, fraction) cell, aggregated over seeds."""

    method: str
    model: str
    num_params: int | None
    train_fraction: float
    accuracies: tuple[float, ...]
    latency_ms: float | None = None  # mean over the seeds' runs that measured it
    throughput_examples_per_s: float | None = None
    inference_mib: float | None = None

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
    teacher_params: float | None = None  # the teacher's size, the students' reference
    teacher_name: str = "teacher"


def _last_value(rows: Sequence[Mapping], name: str) -> tuple[int | None, float | None]:
    for row in reversed(rows):
        if row.get(name) is not None:
            return row.get("step"), float(row[name])
    return None, None


def read_efficiency(workdir: str) -> dict[str, float | str | None]:
    """RunResult's efficiency fields (and `parameters`) from workdir/efficiency.json; {} when
    the run wrote none or it cannot be read."""
    path = os.path.join(workdir, EFFICIENCY_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
        latency = float(saved["latency_seconds_per_example"])
        throughput = float(saved["throughput_examples_per_second"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    memory = saved.get("compiled_decode_bytes")
    return {
        "latency_ms": 1e3 * latency,
        "throughput_examples_per_s": throughput,
        "inference_mib": None if memory is None else float(memory) / 2**20,
        "efficiency_device": str(saved.get("device", "?")),
        "parameters": saved.get("parameters"),
    }


def read_run(workdir: str) -> RunResult | None:
    """The run in `workdir`, or None when it has no config.json or no metrics.jsonl yet."""
    config_path = os.path.join(workdir, "config.json")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if not (os.path.isfile(config_path) and os.path.isfile(metrics_path)):
        return None
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        print(f"skipped {config_path}: not valid JSON ({error})", file=sys.stderr)
        return None
    if not isinstance(config, dict):
        print(f"skipped {config_path}: not a JSON object", file=sys.stderr)
        return None
    try:
        return _run_from(workdir, config)
    except (TypeError, ValueError) as error:
        print(
            f"skipped {workdir}: a field of config.json or metrics.jsonl ({error})", file=sys.stderr
        )
        return None


def _run_from(workdir: str, config: Mapping) -> RunResult:
    """The RunResult of a run folder whose config.json parsed (TypeError or ValueError for a
    field of the wrong type)."""
    rows = read_metrics(workdir)  # half-written or damaged lines skipped
    step, test = _last_value(rows, "test_accuracy")
    _, valid = _last_value(rows, "valid_accuracy")
    _, num_params = _last_value(rows, "num_params")
    measured = read_efficiency(workdir)
    parameters = measured.pop("parameters", None)
    if num_params is None and parameters is not None:
        num_params = parameters
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
        **measured,
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


def _mean_of(members: Sequence[RunResult], field: str) -> float | None:
    values = [getattr(run, field) for run in members if getattr(run, field) is not None]
    return statistics.fmean(values) if values else None


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
                latency_ms=_mean_of(members, "latency_ms"),
                throughput_examples_per_s=_mean_of(members, "throughput_examples_per_s"),
                inference_mib=_mean_of(members, "inference_mib"),
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
    cost = efficiency_table(points, split, lines)
    return "\n".join(out) + (f"\n\n{cost}" if cost else "")


def format_params(count: float | None) -> str:
    """1234567 -> '1.23M', 5.4e11 -> '540B'."""
    if count is None:
        return "n/a"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.3g}{suffix}"
    return f"{count:g}"


def efficiency_table(points: Sequence[Point], split: str, lines: ReferenceLines) -> str:
    """Accuracy against size and inference cost, one row per point that measured it ('' when
    none did); the teacher's size as the reference the students are measured against."""
    measured = [p for p in points if p.latency_ms is not None]
    if not measured:
        return ""
    out = [
        f"{split} accuracy against inference cost (efficiency.json; mean over seeds)",
        "",
        "| method | model | train fraction | parameters | accuracy (%) | latency, ms per "
        "example (batch 1) | throughput, examples/s | inference memory (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(measured, key=lambda p: (p.num_params or 0, p.method, p.train_fraction)):
        throughput = p.throughput_examples_per_s
        out.append(
            f"| {p.method} | {p.model} | {p.train_fraction:g} | {format_params(p.num_params)} | "
            f"{100 * p.mean:.1f} | {p.latency_ms:.1f} | "
            + ("n/a" if throughput is None else f"{throughput:.1f}")
            + " | "
            + ("n/a" if p.inference_mib is None else f"{p.inference_mib:.1f}")
            + " |"
        )
    if lines.teacher_params:
        smallest = min((p.num_params for p in measured if p.num_params), default=None)
        line = (
            f"\nReference: {lines.teacher_name}, {format_params(lines.teacher_params)} parameters"
        )
        if lines.teacher_accuracy is not None:
            line += f", {100 * lines.teacher_accuracy:.1f}%"
        if smallest:
            line += f"; the smallest student is {lines.teacher_params / smallest:,.0f}x smaller"
        out.append(line + ".")
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


def _teacher_label(lines: ReferenceLines) -> str:
    name = "Teacher" if lines.teacher_name == "teacher" else f"Teacher {lines.teacher_name}"
    size = f", {format_params(lines.teacher_params)} params" if lines.teacher_params else ""
    accuracy = "" if lines.teacher_accuracy is None else f"{100 * lines.teacher_accuracy:.1f}%"
    return f"{name} ({accuracy}{size})" if accuracy else f"{name} ({size[2:]})"


def _reference(axes, lines: ReferenceLines) -> None:
    if lines.teacher_accuracy is not None:
        axes.axhline(
            100 * lines.teacher_accuracy,
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=_teacher_label(lines),
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


def plot_accuracy_vs_latency(
    path: str, points: Sequence[Point], lines: ReferenceLines, split: str
) -> None:
    """Accuracy against greedy-decoding latency per example, one series per method, each point
    named with its model's parameters; the teacher (with its size) as the reference line."""
    plt, figure, axes = _axes()
    measured = [p for p in points if p.latency_ms is not None]
    for method in dict.fromkeys(p.method for p in measured):
        members = sorted((p for p in measured if p.method == method), key=lambda p: p.latency_ms)
        axes.errorbar(
            [p.latency_ms for p in members],
            [100 * p.mean for p in members],
            yerr=[100 * p.std for p in members],
            marker="o",
            linestyle="none",
            capsize=4,
            label=METHOD_LABELS.get(method, method),
        )
        for p in members:
            axes.annotate(
                f"{format_params(p.num_params)}, {p.train_fraction:g}",
                (p.latency_ms, 100 * p.mean),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    _reference(axes, lines)
    if lines.teacher_accuracy is None and lines.teacher_params:  # no line to label: a note
        axes.text(0.02, 0.98, _teacher_label(lines), transform=axes.transAxes, va="top")
    if len({p.latency_ms for p in measured}) > 1:
        axes.set_xscale("log")
    axes.set_xlabel("Greedy-decoding latency per example, batch 1 (ms)")
    axes.set_ylabel(f"{split.capitalize()} accuracy (%)")
    axes.set_title("Accuracy vs inference latency (labels: parameters, data fraction)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


class ReportInputError(ValueError):
    """A file or flag the report cannot use; the message names it (one line, no traceback)."""


def read_reference_lines(root: str) -> ReferenceLines:
    """ReferenceLines from root/reference_lines.json (none drawn when there is no such file)."""
    path = os.path.join(root, REFERENCE_LINES_FILE)
    if not os.path.isfile(path):
        return ReferenceLines()
    try:
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportInputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(payload, dict):
        raise ReportInputError(f"{path}: not a JSON object")
    lines = {}
    for field in dataclasses.fields(ReferenceLines):
        value = payload.get(field.name)
        if value is None:
            continue  # the field's default
        wants_text = field.name.endswith("_name")
        if not isinstance(value, str if wants_text else (int, float)) or isinstance(value, bool):
            kind = "text" if wants_text else "a number"
            raise ReportInputError(f"{path}: field {field.name!r} must be {kind}, got {value!r}")
        lines[field.name] = value
    return ReferenceLines(**lines)


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
    latency_figure: str | None = None


def write_report(
    root: str,
    *,
    split: str = "test",
    lines: ReferenceLines | None = None,
    title: str = "",
    runs: Sequence[RunResult] | None = None,
) -> ReportFiles:
    """Writes report.md, runs.csv and the figures of `runs` (default: those below `root`)."""
    runs = collect_runs(root) if runs is None else runs
    lines = lines if lines is not None else read_reference_lines(root)
    points = aggregate(runs, split)
    table = markdown_table(points, split, lines)
    markdown = os.path.join(root, "report.md")
    with open(markdown, "w", encoding="utf-8") as handle:
        handle.write(table + "\n")
    csv_path = os.path.join(root, "runs.csv")
    write_runs_csv(csv_path, runs)
    fraction_figure = model_figure = latency_figure = None
    if any(p.latency_ms is not None for p in points):
        latency_figure = os.path.join(root, "accuracy_vs_latency.png")
        plot_accuracy_vs_latency(latency_figure, points, lines, split)
    if points:
        fraction_figure = os.path.join(root, "accuracy_vs_fraction.png")
        plot_accuracy_vs_fraction(fraction_figure, points, lines, split, title)
        if len({p.model for p in points}) > 1:
            model_figure = os.path.join(root, "accuracy_vs_model_size.png")
            plot_accuracy_vs_model_size(model_figure, points, lines, split)
    return ReportFiles(markdown, csv_path, fraction_figure, model_figure, table, latency_figure)


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def main(argv: Sequence[str]) -> int:
    from absl import flags

    del argv
    args = flags.FLAGS
    if not os.path.isdir(args.root):
        print(f"sbsd_jax.experiments.report: --root {args.root!r} is not a folder")
        return 2
    runs = collect_runs(args.root)
    if not runs:
        print(
            f"sbsd_jax.experiments.report: no runs under --root {args.root!r} (a run folder "
            "holds config.json and metrics.jsonl); nothing written"
        )
        return 2
    try:
        stored = read_reference_lines(args.root)
    except ReportInputError as error:
        print(f"sbsd_jax.experiments.report: {error}")
        return 2
    lines = ReferenceLines(
        teacher_accuracy=_finite_or_none(args.teacher_accuracy) or stored.teacher_accuracy,
        floor=_finite_or_none(args.floor) or stored.floor,
        floor_name=stored.floor_name,
        teacher_params=_finite_or_none(args.teacher_params) or stored.teacher_params,
        teacher_name=args.teacher_name or stored.teacher_name,
    )
    files = write_report(args.root, split=args.split, lines=lines, runs=runs)
    print(files.table)
    print(f"\nreport: {files.markdown}\nruns:   {files.csv}")
    for figure in (files.fraction_figure, files.model_size_figure, files.latency_figure):
        if figure:
            print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("root", None, "Folder holding the run directories.", required=True)
    flags.DEFINE_enum("split", "test", ["test", "valid"], "Which accuracy to report.")
    flags.DEFINE_float(
        "teacher_accuracy",
        None,
        "Teacher's accuracy on the split (0-1).",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.DEFINE_float(
        "floor",
        None,
        "A floor to draw, e.g. the majority answer (0-1).",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    flags.DEFINE_float(
        "teacher_params",
        None,
        "Teacher's parameters, e.g. 540e9 (PaLM 540B).",
        lower_bound=1.0,
    )
    flags.DEFINE_string("teacher_name", None, "Teacher's name for the reference, e.g. PaLM 540B.")
    app.run(main)
