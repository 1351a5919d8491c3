"""A damaged checkpoint: one line naming the step, its directory and the item; resume falls back.

The matrix damages every kind of file a committed step holds (step metadata, array metadata
and sharding, the OCDBT index, array data, the data iterator's position, metrics, commit
markers), missing or corrupted, in the newest of two steps. Either Orbax does not need that
file (the step restores, bit for bit) or the newest step is reported, moved whole to
`corrupt_checkpoints/` and the older one restored, bit for bit. One trained pair of steps is
copied per case. tests/test_train_resume.py resumes a real run past a damaged newest step, and
checks the command line's message when no step restores.
"""

from __future__ import annotations

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbsd_jax.train.checkpointing import (
    Checkpointer,
    CheckpointPolicy,
    CorruptCheckpointError,
    abstract_like,
)

FALLS_BACK, RESTORES = "falls back to the older step", "restores"


def _state(value: float) -> dict:
    """Parameters large enough to be stored as array chunks (not inlined in the index) and
    random bits, so incompressible: stored as one raw zstd block, in which zeroed bytes decode
    without an error (the sharded, compressed layout of a real run is the end-to-end tests').
    Plus a small optimizer moment and the step."""
    bits = np.random.default_rng(0).integers(0, 2**32, size=(128, 64), dtype=np.uint32)
    return {
        "params": {"w": jnp.asarray(bits ^ np.uint32(value))},
        "opt": {"mu": jnp.full((3,), value * 2, jnp.float32)},
        "step": jnp.asarray(int(value), jnp.int32),
    }


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory) -> pathlib.Path:
    """checkpoints/1 (no metrics) and checkpoints/2 (with metrics), written once."""
    directory = tmp_path_factory.mktemp("corruption") / "checkpoints"
    with Checkpointer(directory, CheckpointPolicy(keep_last=2)) as checkpointer:
        checkpointer.save(1, _state(1.0), {"index": 1})
        checkpointer.save(2, _state(2.0), {"index": 2}, metrics={"valid_accuracy": 0.5})
    return directory


def array_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    """The largest file of the state's OCDBT data: where the parameter's bytes are."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def _index_node_file(step_dir: pathlib.Path) -> pathlib.Path:
    return next((step_dir / "state" / "d").iterdir())


def damage(path: pathlib.Path, how: str) -> None:
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zeroed":  # 64 bytes in the middle: what a bad disk block looks like
        middle = len(data) // 2
        path.write_bytes(data[:middle] + b"\0" * 64 + data[middle + 64 :])
    elif how == "zeroed start":
        path.write_bytes(b"\0" * 64 + data[64:])
    elif how == "not an object":
        path.write_text("[1, 2]")
    else:
        raise AssertionError(how)


# (file in the step, damage, outcome, words the message must contain)
MATRIX = [
    ("_CHECKPOINT_METADATA", "missing", FALLS_BACK, "step metadata"),
    ("_CHECKPOINT_METADATA", "truncated", FALLS_BACK, "step metadata"),
    ("state/_METADATA", "missing", RESTORES, ""),  # Orbax rebuilds the tree from the target
    ("state/_METADATA", "truncated", FALLS_BACK, "'state' metadata"),
    ("state/_sharding", "missing", RESTORES, ""),  # shardings come from the target
    ("state/_sharding", "truncated", FALLS_BACK, "'state' metadata"),
    ("state/array_metadatas/process_0", "missing", RESTORES, ""),
    ("state/array_metadatas/process_0", "truncated", FALLS_BACK, "'state' arrays"),
    ("state/manifest.ocdbt", "missing", FALLS_BACK, "'state' metadata"),
    ("state/manifest.ocdbt", "truncated", FALLS_BACK, "'state' metadata"),
    ("<index node>", "zeroed", FALLS_BACK, "'state'"),
    ("<array data>", "missing", FALLS_BACK, "'state' arrays"),
    ("<array data>", "truncated", FALLS_BACK, "'state' arrays"),
    ("<array data>", "zeroed start", FALLS_BACK, "'state' arrays"),
    # TensorStore does not checksum array chunks: these bytes would restore as wrong numbers.
    ("<array data>", "zeroed", FALLS_BACK, "differ from what was saved (checksum)"),
    ("data/metadata", "missing", FALLS_BACK, "'data' iterator position"),
    ("data/metadata", "truncated", FALLS_BACK, "'data' iterator position"),
    ("data/metadata", "not an object", FALLS_BACK, "not a JSON object"),
    ("metrics/metrics", "missing", RESTORES, ""),  # the step just loses its ranking
    ("metrics/metrics", "truncated", FALLS_BACK, "metrics (metrics/metrics)"),
    # On a local disk the commit is the rename of the temporary directory (test_checkpointing
    # covers a crash before it); the markers are for object stores.
    ("commit_success.txt", "missing", RESTORES, ""),
    ("state/commit_success.txt", "missing", RESTORES, ""),
    ("data/commit_success.txt", "truncated", RESTORES, ""),
]


def _assert_tree_equal(restored: dict, expected: dict) -> None:
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), strict=True)


@pytest.mark.parametrize(("name", "how", "outcome", "words"), MATRIX)
def test_each_damaged_file_is_named_and_the_older_step_restores(
    two_steps, tmp_path, name, how, outcome, words
):
    directory = tmp_path / "checkpoints"
    shutil.copytree(two_steps, directory)
    newest = directory / "2"
    special = {"<array data>": array_data_file, "<index node>": _index_node_file}
    damaged = special[name](newest) if name in special else newest / name
    damage(damaged, how)
    relative = damaged.relative_to(newest)
    damaged_bytes = None if how == "missing" else damaged.read_bytes()

    with Checkpointer(directory, CheckpointPolicy(keep_last=2)) as checkpointer:
        restored = checkpointer.restore_latest(abstract_like(_state(0.0)))
        steps_after = checkpointer.all_steps()
    assert restored is not None
    if outcome == RESTORES:
        assert restored.step == 2 and not restored.skipped
        _assert_tree_equal(restored.state, _state(2.0))
        assert restored.data_state == {"index": 2}
        return
    assert restored.step == 1
    _assert_tree_equal(restored.state, _state(1.0))
    assert restored.data_state == {"index": 1}
    (skipped,) = restored.skipped
    assert skipped.step == 2
    message = skipped.describe()
    assert "\n" not in message and len(message.replace(str(tmp_path), "")) < 400, message
    assert f"checkpoint step 2 ({newest})" in message and words in message, message
    # Never deleted: moved whole, damaged file as it was, out of the manager's sight.
    moved = tmp_path / "corrupt_checkpoints" / "2"
    assert skipped.moved_to == str(moved) and f"moved to {moved}" in message
    assert not newest.exists() and steps_after == [1]
    if damaged_bytes is not None:
        assert (moved / relative).read_bytes() == damaged_bytes
    assert (moved / "state").is_dir()


def test_restoring_a_damaged_step_directly_is_one_line_naming_step_and_item(two_steps, tmp_path):
    directory = tmp_path / "checkpoints"
    shutil.copytree(two_steps, directory)
    damage(directory / "2" / "state" / "_sharding", "truncated")
    with (
        Checkpointer(directory, CheckpointPolicy(keep_last=2)) as checkpointer,
        pytest.raises(CorruptCheckpointError) as caught,
    ):
        checkpointer.restore(2, abstract_like(_state(0.0)))
    message = str(caught.value)
    assert "\n" not in message and len(message.replace(str(tmp_path), "")) < 300, message
    assert message.startswith(f"checkpoint step 2 ({directory / '2'}): 'state' metadata")
    assert "_sharding" in message
    assert (directory / "2").is_dir()  # restore alone moves nothing


def test_when_no_step_restores_each_is_listed_and_nothing_is_moved(two_steps, tmp_path):
    directory = tmp_path / "checkpoints"
    shutil.copytree(two_steps, directory)
    damage(directory / "2" / "data" / "metadata", "missing")
    damage(array_data_file(directory / "1"), "zeroed")
    with (
        Checkpointer(directory, CheckpointPolicy(keep_last=2)) as checkpointer,
        pytest.raises(CorruptCheckpointError) as caught,
    ):
        checkpointer.restore_latest(abstract_like(_state(0.0)))
    lines = str(caught.value).splitlines()
    assert len(lines) == 4, lines
    assert "checkpoint step 2" in lines[1] and "'data' iterator position" in lines[1]
    assert "checkpoint step 1" in lines[2] and "checksum" in lines[2]
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2"]
    assert not (tmp_path / "corrupt_checkpoints").exists()


def test_the_step_set_aside_can_be_written_again_and_the_old_copy_stays(two_steps, tmp_path):
    directory = tmp_path / "checkpoints"
    shutil.copytree(two_steps, directory)
    damage(array_data_file(directory / "2"), "zeroed")
    with Checkpointer(directory, CheckpointPolicy(keep_last=2)) as checkpointer:
        assert checkpointer.restore_latest(abstract_like(_state(0.0))).step == 1
        assert checkpointer.save(2, _state(2.0), {"index": 2})
    with Checkpointer(directory, CheckpointPolicy(keep_last=2)) as checkpointer:
        restored = checkpointer.restore_latest(abstract_like(_state(0.0)))
    assert restored.step == 2 and not restored.skipped
    _assert_tree_equal(restored.state, _state(2.0))
    assert (tmp_path / "corrupt_checkpoints" / "2" / "state").is_dir()
