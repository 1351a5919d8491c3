"""The sweep's grid, dry-run commands, skipping of finished cells and results table.

Finished runs are faked by writing metrics.jsonl; nothing is trained.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from sbsd_jax.experiments import sweep
from sbsd_jax.experiments.config_files import load_config_file
from sbsd_jax.experiments.sweep import Cell

REPO = pathlib.Path(__file__).resolve().parents[1]


def fake_finished_run(workdir: str, step: int, accuracy: float) -> None:
    path = pathlib.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    rows = [{"step": step, "train_loss": 1.0}, {"step": step, "test_accuracy": accuracy}]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_grid_is_every_model_fraction_method_models_outermost() -> None:
    cells = sweep.expand_grid(["s", "b"], ["0.5", "1"], ["standard", "step_by_step"])
    assert len(cells) == 8
    assert cells[0] == Cell("s", 0.5, "standard")
    assert cells[-1] == Cell("b", 1.0, "step_by_step")


def test_fraction_outside_unit_interval_or_not_a_number_is_rejected_naming_the_flag() -> None:
    with pytest.raises(ValueError, match=r"--fractions: '1.5' is not in \(0, 1\]"):
        sweep.expand_grid(["s"], ["1.5"], ["standard"])
    with pytest.raises(ValueError, match="--fractions: 'abc' is not a number"):
        sweep.expand_grid(["s"], ["abc"], ["standard"])


def test_each_cell_has_its_own_workdir_and_command() -> None:
    cell = Cell("t5_v1_1_small", 0.125, "step_by_step")
    assert cell.workdir("/r") == "/r/t5_v1_1_small/frac_0.125/step_by_step"
    argv = sweep.command_for(cell, "configs/cqa.py", "/r", {"alpha": "0.3"})
    assert argv[:4] == ["python", "-m", "sbsd_jax.main", "--config=configs/cqa.py"]
    assert "--workdir=/r/t5_v1_1_small/frac_0.125/step_by_step" in argv
    assert "--config.train_fraction=0.125" in argv
    assert "--config.method=step_by_step" in argv
    assert "--config.alpha=0.3" in argv


def test_cell_config_sets_model_fraction_method_and_typed_overrides() -> None:
    base = load_config_file(str(REPO / "configs" / "cqa.py"))
    config = sweep.cell_config(
        base, Cell("t5_v1_1_small", 0.25, "standard"), {"alpha": "0.3", "num_train_steps": "7"}
    )
    assert (config.model, config.train_fraction, config.method) == (
        "t5_v1_1_small",
        0.25,
        "standard",
    )
    assert config.alpha == 0.3 and config.num_train_steps == 7
    assert config.subsample_seed == base.subsample_seed  # same examples in every cell


def test_overrides_are_parsed_exactly_as_the_trainers_command_line() -> None:
    base = load_config_file(str(REPO / "configs" / "cqa.py"))
    config = sweep.cell_config(
        base,
        Cell("t5_v1_1_small", 1.0, "standard"),
        {"model_overrides.dropout_rate": "0.0", "eval_splits": "('test',)", "pack": "True"},
    )
    assert config.model_overrides.dropout_rate == 0.0
    assert isinstance(config.model_overrides.dropout_rate, float)
    assert config.eval_splits == ("test",) and config.pack is True
    assert base.model_overrides.dropout_rate is None  # the base config is left alone
    with pytest.raises(ValueError, match="unknown config field 'nope'"):
        sweep.cell_config(base, Cell("t5_v1_1_small", 1.0, "standard"), {"nope": "1"})
    with pytest.raises(ValueError, match="alpha"):
        sweep.cell_config(base, Cell("t5_v1_1_small", 1.0, "standard"), {"alpha": "lots"})


def test_cells_start_from_each_models_pretrained_checkpoint() -> None:
    hub = sweep.parse_init_checkpoints(["hub"], ["t5_v1_1_small", "flan_t5_base"])
    assert hub == {"t5_v1_1_small": "google/t5-v1_1-small", "flan_t5_base": "google/flan-t5-base"}
    cells = sweep.expand_grid(["t5_v1_1_small", "flan_t5_base"], ["1.0"], ["standard"], hub)
    argv = sweep.command_for(cells[1], "configs/cqa.py", "/r")
    assert "--config.init_checkpoint=google/flan-t5-base" in argv
    local = sweep.parse_init_checkpoints(["t5_v1_1_small=/ckpt/small"], ["t5_v1_1_small"])
    assert sweep.expand_grid(["t5_v1_1_small"], ["1"], ["cot"], local)[0].init_checkpoint == (
        "/ckpt/small"
    )
    with pytest.raises(ValueError, match="no checkpoint for t5_v1_1_base"):
        sweep.expand_grid(["t5_v1_1_small", "t5_v1_1_base"], ["1"], ["cot"], local)
    with pytest.raises(ValueError, match="no released checkpoint for t5_tiny"):
        sweep.parse_init_checkpoints(["hub"], ["t5_tiny"])
    assert sweep.expand_grid(["t5_tiny"], ["1"], ["cot"])[0].init_checkpoint == ""  # scratch


def test_finished_means_test_accuracy_at_the_final_step(tmp_path: pathlib.Path) -> None:
    fake_finished_run(str(tmp_path / "done"), step=100, accuracy=0.5)
    fake_finished_run(str(tmp_path / "halfway"), step=50, accuracy=0.4)
    assert sweep.is_finished(str(tmp_path / "done"), 100)
    assert not sweep.is_finished(str(tmp_path / "halfway"), 100)
    assert not sweep.is_finished(str(tmp_path / "missing"), 100)


def test_finished_cells_are_skipped_and_tabulated(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cells = sweep.expand_grid(["m"], ["0.5", "1.0"], ["standard", "step_by_step"])
    for index, cell in enumerate(cells):
        fake_finished_run(cell.workdir(str(tmp_path)), step=10_000, accuracy=0.1 * (index + 1))

    def must_not_train(config, workdir):
        raise AssertionError(f"trained a finished cell: {workdir}")

    monkeypatch.setattr("sbsd_jax.train.loop.train_and_evaluate", must_not_train)
    results = sweep.run_sweep(str(REPO / "configs" / "cqa.py"), str(tmp_path), cells, {})
    table = sweep.write_results(str(tmp_path), results)
    assert table.splitlines()[0] == "| model | train fraction | standard | step_by_step |"
    assert "| m | 0.5 | 10.0 | 20.0 |" in table
    assert "| m | 1 | 30.0 | 40.0 |" in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [row["test_accuracy"] for row in saved] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert (tmp_path / "results.md").read_text().startswith("Test accuracy")


def test_missing_result_shows_as_na() -> None:
    table = sweep.results_table([(Cell("m", 1.0, "standard"), None)])
    assert "| m | 1 | n/a |" in table


def dry_run(workdir_root: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m sbsd_jax.experiments.sweep --config=configs/cqa.py ... --dry_run`."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sbsd_jax.experiments.sweep",
            "--config=configs/cqa.py",
            f"--workdir_root={workdir_root}",
            *args,
            "--dry_run",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dry_run_prints_one_command_per_cell_and_trains_nothing(tmp_path: pathlib.Path) -> None:
    result = dry_run(
        tmp_path,
        "--models=t5_v1_1_small,t5_v1_1_base",
        "--fractions=0.125,0.25,0.5,1.0",
        "--methods=standard,step_by_step",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    commands = [line for line in result.stdout.splitlines() if line.startswith("python -m")]
    assert len(commands) == 16
    assert all("sbsd_jax.main --config=configs/cqa.py" in c for c in commands)
    assert not any(tmp_path.iterdir())


def test_an_override_the_trainer_would_refuse_stops_the_sweep_before_anything_runs(
    tmp_path: pathlib.Path,
) -> None:
    result = dry_run(tmp_path, "--override=no_such_field=1")
    assert result.returncode == 2
    assert "unknown config field 'no_such_field'" in result.stderr
    assert "python -m" not in result.stdout


def test_the_sweep_report_has_the_fraction_and_model_size_figures_with_the_teacher(
    tmp_path: pathlib.Path,
) -> None:
    """Cells as sbsd_jax.main leaves them (config.json + metrics.jsonl) feed the report builder."""
    base = load_config_file(REPO / "configs" / "cqa.py")
    cells = sweep.expand_grid(
        ["t5_v1_1_small", "t5_v1_1_base"], ["0.5", "1.0"], ["standard", "step_by_step"]
    )
    for index, cell in enumerate(cells):
        workdir = pathlib.Path(cell.workdir(str(tmp_path)))
        fake_finished_run(str(workdir), step=10_000, accuracy=0.05 * (index + 1))
        config = sweep.cell_config(base, cell, {})
        (workdir / "config.json").write_text(config.to_json_best_effort())
    text = sweep.describe_report(str(tmp_path), teacher_accuracy=0.77)
    assert (tmp_path / "accuracy_vs_fraction.png").stat().st_size > 5000
    assert (tmp_path / "accuracy_vs_model_size.png").stat().st_size > 5000
    assert "figure: " in text and str(tmp_path / "report.md") in text
    table = (tmp_path / "report.md").read_text()
    assert "| t5_v1_1_small | 0.5 | 5.0 ± 0.0 (1) | 10.0 ± 0.0 (1) |" in table
    assert "| t5_v1_1_base | 1 | 35.0 ± 0.0 (1) | 40.0 ± 0.0 (1) |" in table
    assert "Teacher: 77.0%" in table


def test_a_damaged_reference_lines_file_leaves_the_sweep_report_unwritten(tmp_path) -> None:
    (tmp_path / "reference_lines.json").write_text("{not json")
    text = sweep.describe_report(str(tmp_path), teacher_accuracy=None)
    assert text.startswith(f"report: not written: {tmp_path / 'reference_lines.json'}: not valid")
    assert not (tmp_path / "report.md").exists()
