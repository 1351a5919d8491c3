"""Pieces of the train loop, in process: which step is exported, and what changed in a config
since a run directory's config.json was written."""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np

from sbsd_jax.experiments.config_files import load_config_file
from sbsd_jax.model.hf_checkpoint import load_hf_t5
from sbsd_jax.runtime.distributed import maybe_initialize_distributed
from sbsd_jax.settings import from_config
from sbsd_jax.train import loop
from sbsd_jax.train import mesh as mesh_lib
from sbsd_jax.train.checkpointing import Checkpointer, CheckpointPolicy
from sbsd_jax.train.step import build_train_program

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def tiny_config() -> ml_collections.ConfigDict:
    config = load_config_file(CONFIGS / "base.py")
    config.model = "t5_tiny"
    config.model_overrides.vocab_size = 384
    config.mesh.update(data=1, fsdp=1, tensor=1)
    return config


def _params(state) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def test_export_writes_the_best_validated_step_or_the_final_one(tmp_path):
    config = tiny_config()
    spec = from_config.to_run_spec(config)
    mesh = mesh_lib.make_mesh(spec.mesh, jax.devices()[:1])
    program = build_train_program(spec.model, spec.optimizer, spec.step, mesh, spec.mesh.rules)
    # Two different students: the better one (validated at step 1) and the last (step 6).
    best_state = program.init_fn(jax.random.key(1)).replace(step=np.int32(1))
    final_state = program.init_fn(jax.random.key(2)).replace(step=np.int32(6))
    with Checkpointer(tmp_path / "checkpoints", CheckpointPolicy()) as checkpointer:
        checkpointer.save(1, best_state, {}, metrics={"valid_accuracy": 0.75})
        checkpointer.save(6, final_state, {}, metrics={"valid_accuracy": 0.25})
        checkpointer.wait_until_finished()

        config.export_hf_dir, config.export_which = str(tmp_path / "best"), "best"
        export = from_config.checkpoint_spec(config)
        assert loop._export(program, export, config.vocabulary, checkpointer, final_state) == (
            str(tmp_path / "best"),
            1,
        )
        config.export_hf_dir, config.export_which = str(tmp_path / "final"), "final"
        export = from_config.checkpoint_spec(config)
        assert loop._export(program, export, config.vocabulary, checkpointer, final_state)[1] == 6

    for folder, state in (("best", best_state), ("final", final_state)):
        _, exported, _ = load_hf_t5(tmp_path / folder)
        expected = _params(state)
        got = {
            jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(exported)[0]
        }
        assert sorted(got) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value, err_msg=f"{folder}: {name}")


def test_config_changes_name_each_field_that_differs_from_the_saved_config():
    saved = tiny_config()
    config = tiny_config()
    assert (
        loop.config_changes(from_config.config_json(saved), from_config.config_json(config)) == []
    )
    config.num_train_steps = 20_000
    config.model_overrides.d_ff = 48
    config.mesh.tensor = 2
    assert loop.config_changes(from_config.config_json(saved), from_config.config_json(config)) == [
        "mesh.tensor: 1 -> 2",
        "model_overrides.d_ff: None -> 48",
        "num_train_steps: 10000 -> 20000",
    ]
    assert loop.config_changes(None, from_config.config_json(config)) == []  # a new run directory
    assert loop.config_changes("{not json", from_config.config_json(config)) == [
        "config.json of the earlier run is not valid JSON"
    ]


def test_checkpoints_are_ranked_on_the_same_validation_examples_every_time():
    """With eval_max_examples, mid-run evaluations score a prefix of the valid split and the
    final one scores all of it; the final step is ranked on that prefix too."""
    from sbsd_jax.eval.evaluator import EvalResult
    from sbsd_jax.eval.metrics import score
    from sbsd_jax.eval.predictions import PredictionRecord

    labels, predictions = ["a", "b", "c", "d"], ["a", "x", "c", "d"]
    records = [
        PredictionRecord(id=str(i), input="", label=gold, prediction=guess, correct=gold == guess)
        for i, (gold, guess) in enumerate(zip(labels, predictions, strict=True))
    ]
    full = EvalResult("valid", 10, score("cqa", predictions, labels), records, 1.0)
    config = tiny_config()
    config.dataset = "cqa"
    assert (
        loop._checkpoint_metrics({"valid": full}, config.dataset, config.eval_max_examples)[
            "valid_accuracy"
        ]
        == 0.75
    )
    config.eval_max_examples = 2
    assert (
        loop._checkpoint_metrics({"valid": full}, config.dataset, config.eval_max_examples)[
            "valid_accuracy"
        ]
        == 0.5
    )
    assert (
        loop._checkpoint_metrics({"test": full}, config.dataset, config.eval_max_examples) is None
    )


def test_a_process_that_already_joined_its_job_does_not_join_again(monkeypatch):
    """The sweep trains several cells in one process: only the first may initialise."""

    def initialize_again(*args, **kwargs):
        raise AssertionError("jax.distributed.initialize called twice")

    monkeypatch.setenv("SBSD_COORDINATOR", "127.0.0.1:1234")
    monkeypatch.setenv("SBSD_NUM_PROCESSES", "2")
    monkeypatch.setenv("SBSD_PROCESS_ID", "0")
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax.distributed, "initialize", initialize_again)
    assert maybe_initialize_distributed(from_config.distributed_spec(tiny_config())) is True
