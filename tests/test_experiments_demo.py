"""`python -m sbsd_jax.experiments.demo` end to end, shortened: tiny data, a few steps."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from sbsd_jax.experiments.demo import DemoRow, format_table

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_table_lists_each_method_with_its_files() -> None:
    rows = [
        DemoRow(
            "standard",
            0.25,
            64,
            4,
            12.0,
            "/w/standard",
            "/w/standard/metrics.jsonl",
            "/w/standard/predictions",
        ),
        DemoRow(
            "step_by_step",
            None,
            64,
            4,
            15.0,
            "/w/sbs",
            "/w/sbs/metrics.jsonl",
            "/w/sbs/predictions",
        ),
    ]
    table = format_table(rows)
    assert "| standard | 25.0% | 64 | 4 | 12 s |" in table
    assert "| step_by_step | n/a | 64 | 4 | 15 s |" in table
    assert "/w/sbs/predictions" in table


def test_demo_end_to_end_writes_data_runs_both_methods_and_prints_table(
    tmp_path: pathlib.Path,
) -> None:
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sbsd_jax.experiments.demo",
            f"--workdir={tmp_path}",
            "--num_train=40",
            "--num_test=8",
            "--steps=2",
            "--batch_size=4",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| standard |" in out and "| step_by_step |" in out
    assert "teacher acc" in out  # the data report
    assert (tmp_path / "data" / "synthetic" / "synthetic_train.json").is_file()
    for method in ("standard", "step_by_step"):
        assert (tmp_path / method / "metrics.jsonl").is_file()
        assert list((tmp_path / method / "predictions").glob("test_step_2.jsonl"))
