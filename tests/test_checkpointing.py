"""Checkpoints: what is kept, what is resumed from, and how bad directories are reported."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sbsd_jax.train.checkpointing import (
    Checkpointer,
    CheckpointPolicy,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    abstract_like,
    read_state_arrays,
)


def _mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))


def _state(mesh: Mesh, value: float) -> dict:
    """A tiny stand-in for the train state: sharded params, optimizer moments, a step."""
    weight = jnp.full((8, 4), value, jnp.float32)
    return {
        "params": {"w": jax.device_put(weight, NamedSharding(mesh, P("data", "model")))},
        "opt": {"mu": jnp.full((3,), value * 2, jnp.float32)},
        "step": jnp.asarray(int(value), jnp.int32),
    }


def test_round_trip_restores_values_data_position_and_target_shardings(tmp_path):
    mesh = _mesh()
    state = _state(mesh, 3.0)
    with Checkpointer(tmp_path / "ckpt", CheckpointPolicy()) as checkpointer:
        checkpointer.save(3, state, {"epoch": np.int64(1), "index": 17})
        checkpointer.wait_until_finished()
        target = abstract_like(state)
        # Restore into a different layout than the one saved: shardings come from the target.
        target["params"]["w"] = jax.ShapeDtypeStruct(
            (8, 4), jnp.float32, sharding=NamedSharding(mesh, P(None, "data"))
        )
        restored = checkpointer.restore_latest(target)
    assert restored is not None and restored.step == 3
    assert restored.data_state == {"epoch": 1, "index": 17}
    assert restored.metrics is None
    assert restored.state["params"]["w"].sharding.spec == P(None, "data")
    np.testing.assert_array_equal(restored.state["params"]["w"], state["params"]["w"])
    np.testing.assert_array_equal(restored.state["opt"]["mu"], state["opt"]["mu"])
    assert int(restored.state["step"]) == 3


def test_keeps_the_last_n_and_the_best_by_validation_accuracy(tmp_path):
    mesh = _mesh()
    accuracies = {2: 0.9, 4: 0.5, 6: 0.7}
    with Checkpointer(tmp_path, CheckpointPolicy(keep_last=2, keep_best=1)) as checkpointer:
        for step in range(1, 8):
            metrics = {"valid_accuracy": accuracies[step]} if step in accuracies else None
            checkpointer.save(step, _state(mesh, step), {"index": step}, metrics=metrics)
        checkpointer.wait_until_finished()
        assert checkpointer.all_steps() == [2, 6, 7]
        assert checkpointer.latest_step() == 7
        assert checkpointer.best_step() == 2
        assert checkpointer.metrics(2) == {"valid_accuracy": 0.9}


def test_best_step_is_none_without_any_evaluated_checkpoint(tmp_path):
    with Checkpointer(tmp_path, CheckpointPolicy()) as checkpointer:
        checkpointer.save(1, _state(_mesh(), 1), {})
        checkpointer.wait_until_finished()
        assert checkpointer.best_step() is None


def test_saving_an_existing_step_is_a_no_op(tmp_path):
    mesh = _mesh()
    with Checkpointer(tmp_path, CheckpointPolicy()) as checkpointer:
        assert checkpointer.save(5, _state(mesh, 5), {"index": 5})
        checkpointer.wait_until_finished()
        assert not checkpointer.save(5, _state(mesh, 6), {"index": 6})


def test_a_partial_checkpoint_left_by_a_crash_is_never_resumed_from(tmp_path):
    mesh = _mesh()
    with Checkpointer(tmp_path, CheckpointPolicy()) as checkpointer:
        checkpointer.save(4, _state(mesh, 4), {"index": 4})
    # What a process killed mid-save leaves: Orbax's uncommitted temporary directory.
    partial = tmp_path / "9.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\x00" * 10)
    with Checkpointer(tmp_path, CheckpointPolicy()) as checkpointer:
        assert checkpointer.latest_step() == 4
        restored = checkpointer.restore_latest(abstract_like(_state(mesh, 0)))
    assert restored is not None and restored.data_state == {"index": 4}


def test_a_corrupt_committed_checkpoint_raises_an_error_naming_its_directory(tmp_path):
    mesh = _mesh()
    with Checkpointer(tmp_path, CheckpointPolicy()) as checkpointer:
        checkpointer.save(4, _state(mesh, 4), {"index": 4})
    state_dir = tmp_path / "4" / "state"
    for root, _, files in os.walk(state_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as handle:
                handle.write(b"not a checkpoint")
    with (
        Checkpointer(tmp_path, CheckpointPolicy()) as checkpointer,
        pytest.raises(CorruptCheckpointError, match=str(tmp_path / "4")),
    ):
        checkpointer.restore_latest(abstract_like(_state(mesh, 0)))


def test_a_checkpoint_of_another_model_names_the_arrays_that_differ(tmp_path):
    mesh = _mesh()
    with Checkpointer(tmp_path, CheckpointPolicy()) as checkpointer:
        checkpointer.save(4, _state(mesh, 4), {"index": 4})
    other_model = abstract_like(_state(mesh, 0))
    other_model["params"]["w"] = jax.ShapeDtypeStruct((8, 2), jnp.float32)
    other_model["params"]["b"] = jax.ShapeDtypeStruct((2,), jnp.float32)
    del other_model["opt"]
    with (
        Checkpointer(tmp_path, CheckpointPolicy()) as checkpointer,
        pytest.raises(IncompatibleCheckpointError) as caught,
    ):
        checkpointer.restore_latest(other_model)
    message = str(caught.value)
    assert str(tmp_path / "4") in message and "(3 arrays differ)" in message
    assert "params/w: checkpoint shape (8, 4), this run (8, 2)" in message
    assert "params/b: in this run, not in the checkpoint" in message
    assert "opt/mu: in the checkpoint, not in this run" in message
    assert "Delete" not in message  # the checkpoint is fine; the config is what changed


def test_a_step_whose_evaluation_was_cut_short_is_marked_until_replaced(tmp_path):
    mesh = _mesh()
    with Checkpointer(tmp_path, CheckpointPolicy(keep_last=1, keep_best=1)) as checkpointer:
        checkpointer.save(2, _state(mesh, 2), {"index": 2}, metrics={"valid_accuracy": 0.5})
        checkpointer.save(4, _state(mesh, 4), {"index": 4}, evaluation_pending=True)
        checkpointer.wait_until_finished()
    with Checkpointer(tmp_path, CheckpointPolicy(keep_last=1, keep_best=1)) as checkpointer:
        restored = checkpointer.restore_latest(abstract_like(_state(mesh, 0)))
        assert restored is not None and (restored.step, restored.evaluation_pending) == (4, True)
        checkpointer.replace(
            4, restored.state, restored.data_state, metrics={"valid_accuracy": 0.8}
        )
        checkpointer.wait_until_finished()
        assert not checkpointer.evaluation_pending(4)
        assert checkpointer.best_step() == 4
        assert checkpointer.all_steps() == [4]  # step 2 is no longer the best
        again = checkpointer.restore(4, abstract_like(_state(mesh, 0)))
    np.testing.assert_array_equal(again.state["params"]["w"], _state(mesh, 4)["params"]["w"])
    assert again.data_state == {"index": 4} and not again.evaluation_pending


def test_the_only_checkpoint_is_never_deleted_to_be_replaced(tmp_path):
    mesh = _mesh()
    with Checkpointer(tmp_path, CheckpointPolicy(keep_last=1, keep_best=0)) as checkpointer:
        checkpointer.save(4, _state(mesh, 4), {"index": 4}, evaluation_pending=True)
        assert not checkpointer.replace(4, _state(mesh, 4), {}, metrics={"valid_accuracy": 1.0})
        checkpointer.wait_until_finished()
        assert checkpointer.all_steps() == [4] and checkpointer.evaluation_pending(4)


def test_restoring_a_missing_step_lists_the_committed_ones(tmp_path):
    with Checkpointer(tmp_path, CheckpointPolicy()) as checkpointer:
        checkpointer.save(1, _state(_mesh(), 1), {})
        checkpointer.wait_until_finished()
        with pytest.raises(FileNotFoundError, match=r"committed steps: \[1\]"):
            checkpointer.restore(2, abstract_like(_state(_mesh(), 1)))


def test_bad_policies_are_rejected():
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointPolicy(keep_last=0)
    with pytest.raises(ValueError, match="keep_best"):
        CheckpointPolicy(keep_best=-1)


def test_read_state_arrays_gives_numpy_arrays_by_path(tmp_path):
    with Checkpointer(tmp_path, CheckpointPolicy()) as checkpointer:
        checkpointer.save(2, _state(_mesh(), 2), {})
    arrays = read_state_arrays(tmp_path / "2")
    assert sorted(arrays) == ["opt/mu", "params/w", "step"]
    np.testing.assert_array_equal(arrays["params/w"], np.full((8, 4), 2.0, np.float32))


def test_a_url_directory_reaches_orbax_as_given(monkeypatch, tmp_path):
    """gs:// is not made a local '<cwd>/gs:' folder (Orbax is stubbed: no network)."""
    import orbax.checkpoint as ocp

    opened: list[str] = []

    class FakeManager:
        def __init__(self, directory, **kwargs):
            opened.append(os.fspath(directory))

        def wait_until_finished(self):
            pass

        def close(self):
            pass

    class FakeReader:
        def __init__(self, handler):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            pass

        def restore(self, path, args):
            opened.append(os.fspath(path))
            return {}

    from sbsd_jax.train import checkpointing

    monkeypatch.setattr(checkpointing, "_Manager", FakeManager)  # Orbax's, less a metrics quirk
    monkeypatch.setattr(ocp, "Checkpointer", FakeReader)
    monkeypatch.chdir(tmp_path)
    with Checkpointer("gs://my-bucket/runs/cqa/checkpoints", CheckpointPolicy()) as checkpointer:
        assert checkpointer.directory == "gs://my-bucket/runs/cqa/checkpoints"
        assert checkpointer.step_directory(7) == "gs://my-bucket/runs/cqa/checkpoints/7"
    with Checkpointer("local/checkpoints", CheckpointPolicy()) as checkpointer:
        assert checkpointer.directory == str(tmp_path / "local" / "checkpoints")
    assert read_state_arrays("gs://my-bucket/runs/cqa/checkpoints/7") == {}
    assert opened == [
        "gs://my-bucket/runs/cqa/checkpoints",
        str(tmp_path / "local" / "checkpoints"),
        "gs://my-bucket/runs/cqa/checkpoints/7/state",
    ]
