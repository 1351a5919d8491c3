"""The sweep/demo report builder on fixture run directories: no training involved."""

from __future__ import annotations

import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from sbsd_jax.experiments import report


def make_run(
    root: pathlib.Path,
    method: str,
    fraction: float,
    seed: int,
    test: float,
    model: str = "t5_v1_1_tiny",
    num_params: int | None = 1000,
    efficiency: dict | None = None,
) -> pathlib.Path:
    folder = root / model / method / f"frac_{fraction:g}" / f"seed_{seed}"
    folder.mkdir(parents=True)
    config = {
        "method": method,
        "train_fraction": fraction,
        "seed": seed,
        "model": model,
        "label_type": "llm",
    }
    (folder / "config.json").write_text(json.dumps(config))
    rows = [
        {"step": 10, "train_loss": 1.0},
        {
            "step": 20,
            "valid_accuracy": test - 0.01,
            "test_accuracy": test,
            **({} if num_params is None else {"num_params": num_params}),
        },
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if efficiency is not None:  # what sbsd_jax.eval.efficiency writes
        (folder / "efficiency.json").write_text(json.dumps(efficiency))
    return folder


def efficiency_json(parameters: int, latency_s: float, throughput: float) -> dict:
    return {
        "parameters": parameters,
        "device": "cpu:cpu",
        "compute_dtype": "float32",
        "input_length": 112,
        "max_decode_length": 8,
        "latency_examples": 8,
        "latency_seconds_per_example": latency_s,
        "latency_batch_size": 1,
        "throughput_batch_size": 64,
        "throughput_examples_per_second": throughput,
        "compiled_decode_bytes": 3 * 2**20,
        "device_peak_bytes": None,
        "device_peak_note": "this device keeps no memory statistics",
    }


@pytest.fixture
def sweep_root(tmp_path: pathlib.Path) -> pathlib.Path:
    for seed, noise in enumerate((-0.02, 0.0, 0.02)):
        make_run(tmp_path, "standard", 0.25, seed, 0.30 + noise)
        make_run(tmp_path, "standard", 1.0, seed, 0.60 + noise)
        make_run(tmp_path, "step_by_step", 0.25, seed, 0.50 + noise)
        make_run(tmp_path, "step_by_step", 1.0, seed, 0.80 + noise)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.json").write_text("{}")  # no metrics yet: skipped
    return tmp_path


def test_runs_are_read_from_config_and_the_last_metrics_row(sweep_root) -> None:
    runs = report.collect_runs(str(sweep_root))
    assert len(runs) == 12
    run = next(
        r for r in runs if r.method == "step_by_step" and r.train_fraction == 1.0 and r.seed == 2
    )
    assert (run.step, run.test_accuracy, run.num_params) == (20, pytest.approx(0.82), 1000)
    assert run.valid_accuracy == pytest.approx(0.81)


def test_seeds_are_aggregated_into_mean_and_sample_std(sweep_root) -> None:
    points = report.aggregate(report.collect_runs(str(sweep_root)))
    point = next(p for p in points if p.method == "standard" and p.train_fraction == 0.25)
    assert len(point.accuracies) == 3
    assert point.mean == pytest.approx(0.30)
    assert point.std == pytest.approx(0.02)  # sample standard deviation of -2, 0, +2 points


def test_report_writes_table_csv_and_a_real_figure(sweep_root) -> None:
    lines = report.ReferenceLines(teacher_accuracy=0.9, floor=0.125, floor_name="chance")
    files = report.write_report(str(sweep_root), lines=lines)
    table = pathlib.Path(files.markdown).read_text()
    assert "| t5_v1_1_tiny | 0.25 | 30.0 ± 2.0 (3) | 50.0 ± 2.0 (3) |" in table
    assert "Teacher: 90.0%" in table and "Floor (chance): 12.5%" in table
    with open(files.csv) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and {r["method"] for r in rows} == {"standard", "step_by_step"}
    import matplotlib.image

    image = matplotlib.image.imread(files.fraction_figure)
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert np.std(image[..., :3]) > 0.05  # lines and text, not a blank canvas
    assert files.model_size_figure is None  # one model only


def test_several_models_get_the_model_size_figure(sweep_root) -> None:
    for seed in range(2):
        make_run(sweep_root, "standard", 1.0, seed, 0.7, model="t5_v1_1_small", num_params=10**6)
        make_run(
            sweep_root, "step_by_step", 1.0, seed, 0.9, model="t5_v1_1_small", num_params=10**6
        )
    files = report.write_report(str(sweep_root))
    assert files.model_size_figure is not None
    assert pathlib.Path(files.model_size_figure).stat().st_size > 5000


def test_reference_lines_round_trip_through_the_root(tmp_path) -> None:
    lines = report.ReferenceLines(teacher_accuracy=0.77, floor=0.2, floor_name="majority answer")
    report.write_reference_lines(str(tmp_path), lines)
    assert report.read_reference_lines(str(tmp_path)) == lines
    assert report.read_reference_lines(str(tmp_path / "none")) == report.ReferenceLines()


def test_efficiency_json_puts_accuracy_against_latency_and_size(tmp_path) -> None:
    for seed, (accuracy, latency) in enumerate(((0.5, 0.004), (0.7, 0.006))):
        make_run(
            tmp_path,
            "step_by_step",
            1.0,
            seed,
            accuracy,
            num_params=None,
            efficiency=efficiency_json(886_528, latency, 150.0),
        )
    small = efficiency_json(77_000_000, 0.020, 40.0)
    make_run(
        tmp_path, "standard", 1.0, 0, 0.4, model="t5_v1_1_small", num_params=None, efficiency=small
    )
    make_run(tmp_path, "standard", 0.5, 0, 0.3, model="t5_v1_1_small")  # no efficiency.json
    broken = make_run(tmp_path, "cot", 1.0, 0, 0.2)
    (broken / "efficiency.json").write_text("{not json")  # ignored, not fatal

    runs = {(r.method, r.train_fraction, r.seed): r for r in report.collect_runs(str(tmp_path))}
    run = runs[("step_by_step", 1.0, 1)]
    assert run.num_params == 886_528  # from efficiency.json when metrics.jsonl has none
    assert run.latency_ms == pytest.approx(6.0) and run.inference_mib == pytest.approx(3.0)
    assert run.throughput_examples_per_s == 150.0 and run.efficiency_device == "cpu:cpu"
    assert (
        runs[("standard", 0.5, 0)].latency_ms is None and runs[("cot", 1.0, 0)].latency_ms is None
    )

    lines = report.ReferenceLines(
        teacher_accuracy=0.77, teacher_params=540e9, teacher_name="PaLM 540B"
    )
    files = report.write_report(str(tmp_path), lines=lines)
    table = pathlib.Path(files.markdown).read_text()
    assert "| step_by_step | t5_v1_1_tiny | 1 | 887K | 60.0 | 5.0 | 150.0 | 3.0 |" in table
    assert "| standard | t5_v1_1_small | 1 | 77M | 40.0 | 20.0 | 40.0 | 3.0 |" in table
    assert "| standard | t5_v1_1_small | 0.5 |" not in table.split("inference cost")[1]
    assert "Reference: PaLM 540B, 540B parameters, 77.0%; the smallest student is 609,118x" in table
    with open(files.csv) as handle:
        csv_rows = {
            (r["method"], r["train_fraction"], r["seed"]): r for r in csv.DictReader(handle)
        }
    assert float(csv_rows[("standard", "1.0", "0")]["latency_ms"]) == pytest.approx(20.0)
    import matplotlib.image

    image = matplotlib.image.imread(files.latency_figure)
    assert files.latency_figure.endswith("accuracy_vs_latency.png")
    assert image.shape[0] > 200 and np.std(image[..., :3]) > 0.05
    report.write_reference_lines(str(tmp_path), lines)
    assert report.read_reference_lines(str(tmp_path)) == lines


def test_no_efficiency_json_no_latency_table_or_figure(sweep_root) -> None:
    files = report.write_report(str(sweep_root))
    assert files.latency_figure is None and "inference cost" not in files.table
    assert report.format_params(540e9) == "540B" and report.format_params(886_528) == "887K"


def run_report_cli(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sbsd_jax.experiments.report", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_writes_the_report_of_the_runs_under_root(sweep_root) -> None:
    result = run_report_cli(f"--root={sweep_root}", "--teacher_accuracy=0.9")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (sweep_root / "report.md").is_file() and (sweep_root / "runs.csv").is_file()
    assert "Teacher: 90.0%" in result.stdout


def test_a_root_without_runs_is_one_line_and_writes_nothing(tmp_path) -> None:
    (tmp_path / "not_a_run").mkdir()
    result = run_report_cli(f"--root={tmp_path}")
    assert result.returncode == 2
    assert result.stdout.strip().splitlines() == [
        f"sbsd_jax.experiments.report: no runs under --root {str(tmp_path)!r} (a run folder "
        "holds config.json and metrics.jsonl); nothing written"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_run"]


@pytest.mark.parametrize(
    "flag", ["--teacher_accuracy=2", "--floor=-0.1", "--teacher_params=0", "--split=train"]
)
def test_a_reference_flag_out_of_range_is_named_and_writes_nothing(sweep_root, flag) -> None:
    result = run_report_cli(f"--root={sweep_root}", flag)
    assert result.returncode != 0
    name = flag.split("=")[0].lstrip("-")
    assert f"flag --{name}=" in result.stderr and "Traceback" not in result.stderr
    assert not (sweep_root / "report.md").exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "not valid JSON (Expecting property name"),
        ("[0.5]", "not a JSON object"),
        ('{"teacher_accuracy": "high"}', "field 'teacher_accuracy' must be a number"),
        ('{"teacher_name": 540}', "field 'teacher_name' must be text"),
    ],
)
def test_a_damaged_reference_lines_file_is_named(sweep_root, content, says) -> None:
    path = sweep_root / report.REFERENCE_LINES_FILE
    path.write_text(content)
    result = run_report_cli(f"--root={sweep_root}")
    assert result.returncode == 2
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith(f"sbsd_jax.experiments.report: {path}: {says}")
    assert not (sweep_root / "report.md").exists()


def test_a_run_with_a_wrong_typed_field_is_skipped_with_its_folder_named(sweep_root) -> None:
    bad = make_run(sweep_root, "standard", 0.5, 0, 0.4)
    (bad / "config.json").write_text(json.dumps({"method": "standard", "train_fraction": "half"}))
    result = run_report_cli(f"--root={sweep_root}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"skipped {bad}: a field of config.json or metrics.jsonl" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(report.collect_runs(str(sweep_root))) == 12
