"""A damaged checkpoint: one line naming the step, its directory and the item; resume falls back.

The matrix damages every kind of file a committed step holds (step metadata, array metadata
and sharding, the OCDBT index, array data, the data iterator's position, metrics, commit
markers), missing or corrupted, in the newest of two steps. Either Orbax does not need that
file (the step restores, bit for bit) or the newest step is reported, moved whole to
`corrupt_checkpoints/` and the older one restored, bit for bit. One trained pair of steps is
copied per case. The end-to-end tests do the same through `python -m sbsd_jax.main`.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_run import REPO, main_command, run_env, write_tiny_run

from sbsd_jax.train.checkpointing import (
    Checkpointer,
    CheckpointPolicy,
    CorruptCheckpointError,
    abstract_like,
    read_state_arrays,
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


def _array_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    """The largest file of the state's OCDBT data: where the parameter's bytes are."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def _index_node_file(step_dir: pathlib.Path) -> pathlib.Path:
    return next((step_dir / "state" / "d").iterdir())


def _damage(path: pathlib.Path, how: str) -> None:
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
    special = {"<array data>": _array_data_file, "<index node>": _index_node_file}
    damaged = special[name](newest) if name in special else newest / name
    _damage(damaged, how)
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
    _damage(directory / "2" / "state" / "_sharding", "truncated")
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
    _damage(directory / "2" / "data" / "metadata", "missing")
    _damage(_array_data_file(directory / "1"), "zeroed")
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
    _damage(_array_data_file(directory / "2"), "zeroed")
    with Checkpointer(directory, CheckpointPolicy(keep_last=2)) as checkpointer:
        assert checkpointer.restore_latest(abstract_like(_state(0.0))).step == 1
        assert checkpointer.save(2, _state(2.0), {"index": 2})
    with Checkpointer(directory, CheckpointPolicy(keep_last=2)) as checkpointer:
        restored = checkpointer.restore_latest(abstract_like(_state(0.0)))
    assert restored.step == 2 and not restored.skipped
    _assert_tree_equal(restored.state, _state(2.0))
    assert (tmp_path / "corrupt_checkpoints" / "2" / "state").is_dir()


# -- through the trainer's command line ---------------------------------------------------------

NUM_STEPS, CHECKPOINT_EVERY = 8, 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """(config, workdir) of an uninterrupted run with checkpoints at steps 4 and 8."""
    root = tmp_path_factory.mktemp("corrupt_resume")
    config = write_tiny_run(
        root,
        {
            "num_train_steps": NUM_STEPS,
            "checkpoint_every": CHECKPOINT_EVERY,
            "keep_checkpoints": 2,
            "log_every": 4,
        },
    )
    workdir = root / "uninterrupted"
    _main(config, workdir, expect=0)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "8"]
    return config, workdir


def _main(config: pathlib.Path, workdir: pathlib.Path, expect: int, *overrides: str):
    result = subprocess.run(
        main_command(config, workdir, *overrides),
        cwd=REPO,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == expect, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_resume_skips_a_damaged_newest_checkpoint_and_ends_bitwise_equal(trained, tmp_path):
    config, reference = trained
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    damaged = _array_data_file(workdir / "checkpoints" / str(NUM_STEPS))
    _damage(damaged, "zeroed")
    damaged_bytes = damaged.read_bytes()

    result = _main(config, workdir, 0)
    assert f"Skipped checkpoint step {NUM_STEPS} ({workdir}/checkpoints/{NUM_STEPS})" in (
        result.stdout
    )
    assert f"Resuming from step {CHECKPOINT_EVERY} " in result.stdout
    # Steps 5..8 trained again from step 4 end where the uninterrupted run ended.
    expected = read_state_arrays(reference / "checkpoints" / str(NUM_STEPS))
    got = read_state_arrays(workdir / "checkpoints" / str(NUM_STEPS))
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name, strict=True)
    moved = workdir / "corrupt_checkpoints" / str(NUM_STEPS)
    assert (moved / damaged.relative_to(workdir / "checkpoints" / str(NUM_STEPS))).read_bytes() == (
        damaged_bytes
    )


@pytest.mark.slow
def test_a_run_whose_checkpoints_all_fail_stops_with_a_short_message(trained, tmp_path):
    config, reference = trained
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    (workdir / "checkpoints" / str(NUM_STEPS) / "state" / "_sharding").write_text("{")
    (workdir / "checkpoints" / str(CHECKPOINT_EVERY) / "data" / "metadata").unlink()

    result = _main(config, workdir, 1)
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if "checkpoint" in line]
    assert ours[0].startswith("sbsd_jax.main: CorruptCheckpointError: no checkpoint in"), ours
    assert f"checkpoint step {NUM_STEPS}" in result.stderr and "_sharding" in result.stderr
    assert f"checkpoint step {CHECKPOINT_EVERY}" in result.stderr
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "8"]
