"""The demo: a shrunken run end to end, and its fairness rules as tests."""

from __future__ import annotations

import csv
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from tiny_run import xla_flags

from sbsd_jax.data import synthetic, synthetic_world
from sbsd_jax.data.features import METHOD_EVAL_TASK, TASK_KINDS
from sbsd_jax.data.sources import load_dataset_splits
from sbsd_jax.experiments import demo
from sbsd_jax.experiments.config_files import load_config_file
from sbsd_jax.settings import from_config

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_end_to_end_writes_table_csv_figure_and_one_run_per_student(tmp_path) -> None:
    env = dict(os.environ, XLA_FLAGS=xla_flags(None), JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sbsd_jax.experiments.demo",
            f"--workdir={tmp_path}",
            "--steps=3",
            "--seeds=2",
            "--fractions=0.5,1.0",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "teacher acc" in out  # the data report
    assert "| t5_v1_1_tiny | 0.5 |" in out and "| t5_v1_1_tiny | 1 |" in out
    assert "Floor (chance: 1 of the 8 answers of the asked attribute): 12.5%" in out
    assert "| step_by_step | 4 | 3 |" in out  # timing table: 4 students of 3 steps
    with open(tmp_path / "runs.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8  # 2 methods x 2 fractions x 2 seeds
    assert {(r["method"], r["train_fraction"], r["seed"]) for r in rows} == {
        (m, f, s) for m in ("standard", "step_by_step") for f in ("0.5", "1.0") for s in "01"
    }
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "accuracy_vs_fraction.png")
    assert image.shape[0] > 200 and np.std(image[..., :3]) > 0.05
    student = tmp_path / "runs" / "step_by_step" / "frac_0.5" / "seed_1"
    assert (student / "predictions" / "test_step_3.jsonl").is_file()
    assert (tmp_path / "data" / "vocabulary.model").is_file()


def test_the_grid_has_every_method_fraction_and_seed() -> None:
    config = load_config_file(demo.TASK_CONFIGS["world"])
    members = demo.grid_members(config, full=True, seeds=3, fractions=None)
    assert len(members) == 2 * 4 * 3
    assert {m.fraction for m in members} == set(config.demo.full_fractions)
    with pytest.raises(ValueError, match="not in"):
        demo.grid_members(config, full=False, seeds=3, fractions=["1.5"])
    with pytest.raises(ValueError, match="seeds"):
        demo.grid_members(config, full=False, seeds=0, fractions=None)


@pytest.fixture(scope="module")
def world_splits(tmp_path_factory):
    config = load_config_file(demo.TASK_CONFIGS["world"])
    config.data_dir = str(tmp_path_factory.mktemp("world"))
    demo.write_task_data("world", config.data_dir, config)
    return config, load_dataset_splits(from_config.dataset_spec(config)).splits


def test_both_methods_get_the_same_question_at_test_time(world_splits) -> None:
    """The label task's input is the question itself for both methods (step-by-step adds
    only the paper's task prefix), and neither ever sees a rationale at test time."""
    config, splits = world_splits
    for example in splits["test"]:
        inputs = {
            method: TASK_KINDS[METHOD_EVAL_TASK[method]].inputs({"input": example.input})
            for method in demo.METHODS
        }
        assert inputs["standard"] == example.input
        assert inputs["step_by_step"] == "predict: " + example.input
        assert example.rationale is None or example.rationale not in inputs["step_by_step"]


def test_both_methods_train_on_the_same_examples_for_the_same_seed(world_splits) -> None:
    from sbsd_jax.data.pipeline import prepare_data
    from sbsd_jax.experiments.demo_training import member_train_set

    config, splits = world_splits
    config = ml_collections.ConfigDict(config.to_dict())
    config.vocabulary = "byte"
    chosen = {}
    for method in demo.METHODS:
        member = demo.member_config(config, demo.Member(method, 0.5, seed=2))
        spec = from_config.to_run_spec(member)
        prepared = member_train_set(prepare_data(spec.data, splits=splits), spec.data.dataset)
        chosen[method] = prepared.train_set.example_indices.tolist()
    assert chosen["standard"] == chosen["step_by_step"]
    assert 0.45 * len(splits["train"]) < len(chosen["standard"]) < 0.55 * len(splits["train"])
    other = from_config.to_run_spec(
        demo.member_config(config, demo.Member("standard", 0.5, seed=3))
    )
    assert (
        member_train_set(
            prepare_data(other.data, splits=splits), other.data.dataset
        ).train_set.example_indices.tolist()
        != chosen["standard"]
    )


def test_no_test_question_occurs_in_training_for_either_task(tmp_path) -> None:
    config = load_config_file(demo.TASK_CONFIGS["arithmetic"])
    demo.write_task_data("arithmetic", str(tmp_path / "a"), config)
    world = load_config_file(demo.TASK_CONFIGS["world"])
    demo.write_task_data("world", str(tmp_path / "w"), world)
    for name, folder in ((synthetic.DATASET_NAME, "a"), (synthetic_world.DATASET_NAME, "w")):
        spec_config = config if name == "synthetic" else world
        spec_config.dataset, spec_config.data_dir = name, str(tmp_path / folder)
        splits = load_dataset_splits(from_config.dataset_spec(spec_config)).splits
        train = {e.input for e in splits["train"]} | {e.input for e in splits["valid"]}
        assert not train & {e.input for e in splits["test"]}, name


def test_the_floor_is_the_better_of_chance_and_the_majority_answer(world_splits) -> None:
    _, splits = world_splits
    floor, name = demo.task_floor("world", splits["train"], splits["test"])
    assert floor == pytest.approx(1 / 8) and "chance" in name
    majority = demo.majority_floor("arithmetic", splits["train"], splits["test"])
    assert 0.0 <= majority < 0.2
