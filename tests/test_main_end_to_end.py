"""`python -m sbsd_jax.main` end to end on a tiny model and fixture data, and its flag errors.

The fixture is a tiny arithmetic dataset in the JSONL layout (train/valid/test.jsonl with
rationales), a byte vocabulary and a two-layer 64-wide T5; everything runs on the CPU.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from tiny_run import REPO, run_env, write_tiny_run

from sbsd_jax.train.metric_writers import MetricsLogger, ProgressBar, eval_summary, read_metrics

# 30 steps of a two-layer 64-wide T5 on 64 'a plus b' examples, evaluated (with rationales)
# at steps 15 and 30.
FIELDS = {
    "model_overrides.dropout_rate": 0.0,
    "learning_rate": 3e-3,
    "num_train_steps": 30,
    "log_every": 5,
    "eval_every": 15,
    "eval_splits": ("valid", "test"),
    "checkpoint_every": 10,
    "eval_max_decode_length": 8,
    "decode_rationales": True,
}


def write_fixture(root: pathlib.Path) -> pathlib.Path:
    """Tiny 'a plus b' dataset + a config file that trains on it; returns the config path."""
    return write_tiny_run(root, FIELDS, train_examples=64, seed=0)


def run_main(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sbsd_jax.main", *args],
        cwd=REPO,
        env=run_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_training_run_logs_falling_loss_evaluates_and_writes_every_file(tmp_path):
    config = write_fixture(tmp_path)
    workdir = tmp_path / "run"
    export_dir = tmp_path / "hf_export"
    result = run_main(
        f"--config={config}", f"--workdir={workdir}", f"--config.export_hf_dir={export_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]

    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["train_loss"] for row in rows if "train_loss" in row]
    assert len(losses) == 6  # every 5 of 30 steps
    assert losses[-1] < 0.7 * losses[0]
    train_rows = [row for row in rows if "train_loss" in row]
    assert all("train_label_loss" in r and "train_rationale_loss" in r for r in train_rows)
    # Step times: none for the window that compiled the step, one for every later window
    # (timed again after the evaluation at 15 and the saves at 10, 20); measured MFU from them.
    timed = [row["step"] for row in train_rows if row.get("train_step_seconds", 0) > 0]
    assert timed == [10, 15, 20, 25, 30]
    mfu = json.loads((workdir / "mfu.json").read_text())
    assert mfu["windows"] == 5 and 0 < mfu["mfu"] < 1 and mfu["model_flops"] > 0
    assert "measured MFU of training:" in result.stdout
    eval_rows = [row for row in rows if "valid_accuracy" in row]
    assert [row["step"] for row in eval_rows] == [15, 30]
    assert any("test_accuracy" in row and row["step"] == 30 for row in rows)

    predictions = workdir / "predictions" / "test_step_30.jsonl"
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(records) == 8
    assert set(records[0]) == {"id", "input", "label", "prediction", "correct", "rationale"}
    assert records[0]["rationale"] is not None  # decode_rationales: the explain task's output

    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "checkpoints" / "30").is_dir()
    assert (export_dir / "config.json").is_file()
    assert (export_dir / "model.safetensors").is_file()
    assert json.loads((export_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "ByT5Tokenizer"  # the byte vocabulary, readable by AutoTokenizer
    )
    # The summary says where the run's files are.
    assert str(workdir / "metrics.jsonl") in result.stdout
    assert f"Hugging Face export: {export_dir} (step " in result.stdout


def test_an_unknown_config_field_is_rejected_by_name(tmp_path):
    config = write_fixture(tmp_path)
    result = run_main(f"--config={config}", f"--workdir={tmp_path}", "--config.no_such_field=1")
    assert result.returncode == 2
    assert (
        "sbsd_jax.main: unknown config field 'no_such_field' in --config.no_such_field=1"
        in result.stderr
    )


def test_a_missing_data_folder_is_a_config_error_without_a_traceback(tmp_path):
    config = write_fixture(tmp_path)
    nowhere = tmp_path / "nowhere"
    result = run_main(f"--config={config}", f"--workdir={tmp_path}", f"--config.data_dir={nowhere}")
    assert result.returncode == 2
    assert f"config.data_dir='{nowhere}': no such directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_data_file_is_named_with_its_line_without_a_traceback(tmp_path):
    config = write_fixture(tmp_path)
    with (tmp_path / "data" / "train.jsonl").open("a") as handle:
        handle.write('{"input": "1 plus 2", "label": \n')  # line 65: cut off mid-object
    # PYTHONPROFILEIMPORTTIME: the process lists every module it imports on stderr.
    result = run_main(
        f"--config={config}", f"--workdir={tmp_path / 'run'}", PYTHONPROFILEIMPORTTIME="1"
    )
    assert result.returncode == 1
    assert "DataFormatError" in result.stderr and "train.jsonl" in result.stderr
    assert "65" in result.stderr
    assert "Traceback" not in result.stderr
    # The files are read before the data pipeline imports TensorFlow (seconds of start-up).
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "jax" in imported and "tensorflow" not in imported


def test_a_value_of_the_wrong_type_is_rejected(tmp_path):
    config = write_fixture(tmp_path)
    result = run_main(f"--config={config}", f"--workdir={tmp_path}", "--config.alpha=lots")
    assert result.returncode != 0
    assert "alpha" in result.stderr


def test_a_config_that_cannot_work_says_what_to_change(tmp_path):
    config = write_fixture(tmp_path)
    result = run_main(
        f"--config={config}",
        f"--workdir={tmp_path / 'run'}",
        "--config.alpha=1.5",
        "--config.model=t5_gigantic",
    )
    assert result.returncode == 2
    assert "config.alpha=1.5: must be in [0, 1]" in result.stderr
    assert "config.model='t5_gigantic'" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_workdir_is_required(tmp_path):
    config = write_fixture(tmp_path)
    result = run_main(f"--config={config}")
    assert result.returncode != 0
    assert "workdir" in result.stderr


def test_progress_line_shows_step_rate_eta_and_loss():
    stream = io.StringIO()
    bar = ProgressBar(100, start_step=0, stream=stream)
    line = bar.update(50, {"loss": 1.23456})
    assert line.startswith("step 50/100 [############............]")
    assert "steps/s ETA " in line and line.endswith("loss=1.235")
    assert stream.getvalue() == line + "\n"  # not a terminal: one line per update


def test_evaluation_summary_is_one_line_per_split():
    values = {
        "valid_accuracy": 0.5,
        "valid_exact_match": 0.25,
        "valid_num_examples": 8.0,
        "valid_eval_seconds": 1.25,
    }
    assert eval_summary(15, "valid", values, 1.25) == (
        "eval step 15 valid (8 examples, 1.2s): accuracy=0.5000 exact_match=0.2500"
    )


def test_metrics_logger_appends_json_lines(tmp_path):
    logger = MetricsLogger(tmp_path, is_primary=True, tensorboard=False)
    logger.write(5, {"train_loss": np.float32(2.5)})
    logger.write(10, {"valid_accuracy": 0.75})
    assert read_metrics(tmp_path) == [
        {"step": 5, "train_loss": 2.5},
        {"step": 10, "valid_accuracy": 0.75},
    ]
    MetricsLogger(tmp_path / "other", is_primary=False).write(1, {"x": 1.0})
    assert not (tmp_path / "other").exists()  # only process 0 writes


def test_a_resumed_run_drops_the_rows_of_steps_it_will_redo(tmp_path):
    logger = MetricsLogger(tmp_path, is_primary=True, tensorboard=False)
    for step in (5, 10, 15):
        logger.write(step, {"train_loss": 1.0 / step})
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 20, "train_lo')  # a SIGKILL in the middle of a write
    assert logger.discard_after(10) == 2
    assert [row["step"] for row in read_metrics(tmp_path)] == [5, 10]
    logger.write(15, {"train_loss": 0.5})
    assert [row["step"] for row in read_metrics(tmp_path)] == [5, 10, 15]


def test_damaged_or_torn_metrics_lines_are_skipped_by_every_reader_and_dropped_on_resume(
    tmp_path,
):
    from sbsd_jax.eval.mfu import read_metrics_rows
    from sbsd_jax.experiments.report import read_run

    logger = MetricsLogger(tmp_path, is_primary=True, tensorboard=False)
    for step in (5, 10):
        logger.write(step, {"train_loss": 1.0 / step})
    with (tmp_path / "metrics.jsonl").open("ab") as handle:
        handle.write(b'\xff\xfe{"step": 12}\n{"step": 15, "train_lo')  # bad bytes, then torn
    (tmp_path / "config.json").write_text('{"method": "standard", "model": "t5_tiny"}')
    expected = [{"step": 5, "train_loss": 0.2}, {"step": 10, "train_loss": 0.1}]
    assert read_metrics(tmp_path) == expected
    assert read_metrics_rows(tmp_path) == expected
    assert read_run(str(tmp_path)) is not None
    for damaged in ("{", "[]", "\udcff"):  # the sweep report skips such a run, naming it
        (tmp_path / "config.json").write_text(damaged, errors="surrogateescape")
        assert read_run(str(tmp_path)) is None
    assert logger.discard_after(10) == 2
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(
        json.dumps(row) + "\n" for row in expected
    )


# --- Workdirs at a URL (gs://), served offline -------------------------------------------------


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    """gs:// served from <tmp>/gcs through etils' own epath test backend, without append (like
    GCS). The cwd moves to <tmp>/cwd, where a URL mangled into a local path would land."""
    from etils.epath import gpath
    from etils.epath import testing as epath_testing

    store, cwd = tmp_path / "gcs", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # Else epath sends gs:// to TF's gfile (the network); EPATH_USE_TF is read once and cached.
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)

    def local(path):
        text = os.fspath(path)
        return os.fspath(store / text.removeprefix("gs://")) if text.startswith("gs://") else text

    def one(original, path, *args, **kwargs):
        return original(local(path), *args, **kwargs)

    def two(original, path, dst, *args, **kwargs):
        return original(local(path), local(dst), *args, **kwargs)

    def open_(original, path, mode):
        if os.fspath(path).startswith("gs://"):
            if "a" in mode:
                raise OSError(f"{path}: an object store cannot append")
            if "w" in mode:  # objects need no parent directories
                os.makedirs(os.path.dirname(local(path)), exist_ok=True)
        return original(local(path), mode)

    functions = ("exists", "isdir", "listdir", "glob", "makedirs", "mkdir", "remove", "rmtree")
    with epath_testing.mock_epath(
        open=open_,
        rename=two,
        replace=two,
        copy=two,
        stat=one,
        walk=one,
        **dict.fromkeys(functions, one),
    ):
        yield store
    assert not (cwd / "gs:").exists()


def test_run_paths_keep_urls_and_make_local_paths_absolute(tmp_path, monkeypatch):
    from sbsd_jax.train.loop import RunPaths

    paths = RunPaths.of("gs://my-bucket/runs/cqa")
    assert paths == RunPaths(
        workdir="gs://my-bucket/runs/cqa",
        checkpoints="gs://my-bucket/runs/cqa/checkpoints",
        metrics="gs://my-bucket/runs/cqa/metrics.jsonl",
        tensorboard="gs://my-bucket/runs/cqa/tensorboard",
        predictions="gs://my-bucket/runs/cqa/predictions",
        config="gs://my-bucket/runs/cqa/config.json",
    )
    monkeypatch.chdir(tmp_path)
    local = RunPaths.of("runs/../runs/cqa")
    assert local.workdir == str(tmp_path / "runs" / "cqa")
    assert local.checkpoints == os.path.join(tmp_path, "runs", "cqa", "checkpoints")


def test_metrics_logger_rewrites_metrics_jsonl_at_a_url(fake_gcs):
    logger = MetricsLogger("gs://bucket/run", is_primary=True, tensorboard=False)
    for step in (5, 10, 15):
        logger.write(step, {"train_loss": 1.0 / step})
    assert [row["step"] for row in read_metrics("gs://bucket/run")] == [5, 10, 15]
    stored = fake_gcs / "bucket" / "run" / "metrics.jsonl"
    stored.write_text(stored.read_text() + '{"step": 20, "train_lo')  # a half-written upload
    assert logger.discard_after(10) == 2
    assert [row["step"] for row in read_metrics("gs://bucket/run")] == [5, 10]
    logger.write(15, {"train_loss": 0.5})
    assert read_metrics("gs://bucket/run")[-1] == {"step": 15, "train_loss": 0.5}
    assert sorted(p.name for p in stored.parent.iterdir()) == ["metrics.jsonl"]


def test_predictions_and_config_json_land_under_a_url_workdir(fake_gcs):
    import ml_collections

    from sbsd_jax.eval.predictions import (
        PredictionRecord,
        predictions_path,
        read_predictions,
        write_predictions,
    )
    from sbsd_jax.train.loop import RunPaths, _read_text, _write_config

    paths = RunPaths.of("gs://bucket/run")
    assert _read_text(paths.config) is None
    _write_config(ml_collections.ConfigDict({"model": "t5_tiny"}), paths.config)
    assert json.loads(_read_text(paths.config)) == {"model": "t5_tiny"}
    records = [PredictionRecord(id="a", input="q", label="x", prediction="x", correct=True)]
    written = write_predictions(predictions_path(paths.workdir, "valid", 10), records)
    assert os.fspath(written) == "gs://bucket/run/predictions/valid_step_10.jsonl"
    assert read_predictions(written) == records
    assert sorted(p.name for p in (fake_gcs / "bucket" / "run").rglob("*") if p.is_file()) == [
        "config.json",
        "valid_step_10.jsonl",
    ]
