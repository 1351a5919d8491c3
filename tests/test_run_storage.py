"""Where a run's files live: local folders and URLs behind one path type, and the clean-up of a
run that stopped on bad input before it wrote anything."""

from __future__ import annotations

import pathlib

from sbsd_jax.runtime.run_storage import absolute_path, is_url, remove_empty_folders


def test_urls_are_kept_and_local_paths_made_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert is_url("gs://bucket/run") and not is_url("runs/a")
    assert str(absolute_path("gs://bucket/run")) == "gs://bucket/run"
    assert str(absolute_path("runs/a")) == str(tmp_path / "runs" / "a")


def test_a_tree_of_empty_folders_is_removed(tmp_path: pathlib.Path) -> None:
    (tmp_path / "run" / "checkpoints" / "tmp").mkdir(parents=True)
    remove_empty_folders(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_file_anywhere_keeps_its_folders_and_itself(tmp_path: pathlib.Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "empty").mkdir(parents=True)
    (run / "logs").mkdir()
    (run / "logs" / "mine.txt").write_text("keep")
    remove_empty_folders(run)
    assert (run / "logs" / "mine.txt").read_text() == "keep"
    assert not (run / "checkpoints").exists()  # the empty branch went


def test_a_file_or_a_url_is_left_alone(tmp_path: pathlib.Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    remove_empty_folders(tmp_path / "notes.txt")
    remove_empty_folders("gs://bucket/run")
    assert (tmp_path / "notes.txt").read_text() == "mine"
