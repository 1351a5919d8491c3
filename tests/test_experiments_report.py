"""The sweep/demo report builder on fixture run directories: no training involved."""

from __future__ import annotations

import csv
import json
import pathlib

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
    num_params: int = 1000,
) -> None:
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
            "num_params": num_params,
        },
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


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
