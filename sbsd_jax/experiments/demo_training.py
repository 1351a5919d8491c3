"""Training and evaluating the demo's students: every (fraction, seed) of one method at once.

The data is tokenised once per method (the SeqIO tasks of the trainer); each student's training
set is the subset `subsample_indices(train, fraction, seed)` of it (the same selection
`config.train_fraction` makes in sbsd_jax.main), batched by the trainer's own iterator, and
all students take their steps together in one vmapped program (sbsd_jax.train.ensemble).
Evaluation is the trainer's: greedy decoding of the label task, exact match, one predictions
file per split; each student gets a run directory that the report builder reads like any run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sbsd_jax.data.examples import DatasetSpec, Example
from sbsd_jax.data.pipeline import PreparedData, make_train_iterator, prepare_data
from sbsd_jax.data.subsample import subsample_indices
from sbsd_jax.eval.evaluator import EvalSettings, evaluate, text_codec
from sbsd_jax.eval.predictions import predictions_path, write_predictions
from sbsd_jax.model.decode import greedy_decode
from sbsd_jax.settings.spec import RunSpec
from sbsd_jax.train.ensemble import (
    EnsembleProgram,
    build_ensemble_program,
    member_params,
    stack_batches,
)


@dataclasses.dataclass(frozen=True)
class TrainedMembers:
    """The students of one method after training (state leaves have a leading student axis)."""

    program: EnsembleProgram
    state: Any
    prepared: PreparedData
    steps: int
    compile_seconds: float
    train_seconds: float
    examples_per_step: int
    final_losses: Mapping[str, np.ndarray]  # per student, last step


def member_train_set(prepared: PreparedData, dataset: DatasetSpec) -> PreparedData:
    """`prepared` restricted to the student's subset of the training split (its
    train_fraction and subsample_seed)."""
    kept = subsample_indices(
        len(prepared.splits["train"]), dataset.train_fraction, dataset.subsample_seed
    )
    indices = np.intersect1d(prepared.train_set.example_indices, kept)
    return dataclasses.replace(
        prepared, train_set=dataclasses.replace(prepared.train_set, example_indices=indices)
    )


def train_members(
    specs: Sequence[RunSpec], splits: Mapping[str, Sequence[Example]]
) -> TrainedMembers:
    """Trains one student per run spec (same method and shapes, own seed and subset)."""
    base = specs[0]
    prepared = prepare_data(base.data, splits=splits)
    iterators = [
        make_train_iterator(
            member_train_set(prepared, spec.data.dataset),
            spec.batching,
            process_index=0,
            process_count=1,
        )
        for spec in specs
    ]
    program = build_ensemble_program(base.model, base.optimizer, base.step, len(specs))
    seeds = jnp.asarray([spec.step.seed for spec in specs], jnp.int32)
    state = program.init_fn(seeds)
    steps = base.loop.num_train_steps
    started = time.perf_counter()
    compile_seconds = 0.0
    metrics: dict[str, jax.Array] = {}
    for step in range(steps):
        batch = stack_batches([next(iterator) for iterator in iterators])
        state, metrics = program.train_step(state, seeds, batch)
        if step == 0:
            jax.block_until_ready(metrics)
            compile_seconds = time.perf_counter() - started
            started = time.perf_counter()
    jax.block_until_ready(state)
    return TrainedMembers(
        program=program,
        state=state,
        prepared=prepared,
        steps=steps,
        compile_seconds=compile_seconds,
        train_seconds=time.perf_counter() - started,
        examples_per_step=base.batching.batch_size,
        final_losses={k: np.asarray(v) for k, v in jax.device_get(metrics).items()},
    )


def _num_params(params: Any) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def _eval_settings(spec: RunSpec) -> EvalSettings:
    """Labels only (the explain task is never decoded here)."""
    return EvalSettings(
        dataset=spec.data.dataset.dataset,
        method=spec.data.method,
        batch_size=spec.evaluation.batch_size,
        max_input_length=spec.data.max_input_length,
        max_decode_length=spec.evaluation.max_decode_length,
    )


def _write_run_files(workdir: str, spec: RunSpec, row: Mapping) -> None:
    """config.json and a one-row metrics.jsonl: what the report builder reads from any run."""
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as handle:
        handle.write(spec.config_json)
    with open(os.path.join(workdir, "metrics.jsonl"), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(dict(row)) + "\n")


def evaluate_members(
    trained: TrainedMembers,
    specs: Sequence[RunSpec],
    splits: Mapping[str, Sequence[Example]],
    workdirs: Sequence[str],
    eval_splits: Sequence[str] = ("valid", "test"),
) -> list[dict[str, float]]:
    """Decodes each student on `eval_splits`; writes config.json, metrics.jsonl and predictions
    into its workdir; returns each student's metrics row."""
    rows = []
    codec = text_codec(trained.prepared.registered.vocabulary, specs[0].data.method)
    for index, (spec, workdir) in enumerate(zip(specs, workdirs, strict=True)):
        params = member_params(trained.state, index)

        def generate(tokens: np.ndarray, length: int, params: Any = params) -> np.ndarray:
            graphdef = trained.program.graphdef
            return np.asarray(
                greedy_decode(graphdef, tokens, state=params, max_decode_length=length)
            )

        row: dict[str, float] = {"step": trained.steps, "num_params": _num_params(params)}
        row.update({f"train_{k}": float(v[index]) for k, v in trained.final_losses.items()})
        os.makedirs(workdir, exist_ok=True)
        for split in eval_splits:
            result = evaluate(
                splits[split],
                split=split,
                step=trained.steps,
                settings=_eval_settings(spec),
                codec=codec,
                generate=generate,
            )
            row.update(result.metrics())
            write_predictions(predictions_path(workdir, split, trained.steps), result.records)
        _write_run_files(workdir, spec, row)
        rows.append(row)
    return rows
