"""The train loop: build, resume, train, evaluate, checkpoint, export. One function to read.

    train_and_evaluate(config, workdir)

1. Validate the config (every group before any side effect, the mesh again once the devices
   are known), join the other processes (multi-host), load and tokenise the data; only then
   create the workdir, so bad flags or data files leave nothing behind.
2. Build the mesh and the compiled train program (sharded init + jitted step, from
   sbsd_jax.train.step); the training iterator is deterministic and resumable.
3. Resume from the newest committed checkpoint in <workdir>/checkpoints (state restored straight
   into its shardings, data iterator moved to the saved position), else start from
   config.init_checkpoint (a Hugging Face T5) or from scratch.
4. Train. Step metrics stay on the device and are fetched every `log_every` steps only.
   Every `eval_every` steps: greedy-decode the eval splits, log accuracy, write predictions.
   Every `checkpoint_every` steps (and after each validation): an asynchronous checkpoint.
   SIGTERM: checkpoint this step and return (the process exits 0), also in the middle of an
   evaluation (that step is saved as evaluation-pending and evaluated first on resume).
5. At the end: evaluate every eval split (config.eval_splits, valid and test by default) on
   all its examples, checkpoint, optionally export the best or
   final student as a Hugging Face folder, write <workdir>/DONE (what a launcher watching the
   run looks for), and say where everything is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from sbsd_jax.data.examples import Example
from sbsd_jax.eval.evaluator import (
    EvalResult,
    EvalSettings,
    EvaluationInterrupted,
    TextCodec,
    evaluate,
)
from sbsd_jax.eval.metrics import score
from sbsd_jax.eval.predictions import predictions_path, write_predictions
from sbsd_jax.train import config_validation
from sbsd_jax.train import mesh as mesh_lib
from sbsd_jax.train.checkpointing import (
    CHECKPOINT_SUBDIR,
    Checkpointer,
    CheckpointPolicy,
    IncompatibleCheckpointError,
)
from sbsd_jax.train.config_validation import ConfigError
from sbsd_jax.train.metric_writers import (
    METRICS_FILE,
    TENSORBOARD_DIR,
    MetricsLogger,
    ProgressBar,
    eval_summary,
)
from sbsd_jax.train.preemption import PreemptionWatcher
from sbsd_jax.train.run_storage import absolute_path

__all__ = ["ConfigError", "RunSummary", "train_and_evaluate"]

VALID_SPLIT = "valid"
# Written into the workdir when a run has trained every step and evaluated (see _mark_finished).
FINISHED_MARKER = "DONE"
# Metrics averaged over a log interval; the others are reported at the interval's last step.
_LAST_VALUE_METRICS = frozenset({"learning_rate"})


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where a run's files are: under a local folder or a URL (gs://...), as strings."""

    workdir: str
    checkpoints: str
    metrics: str
    tensorboard: str
    predictions: str
    config: str

    @classmethod
    def of(cls, workdir: str | os.PathLike[str]) -> RunPaths:
        """Local workdirs are made absolute; URLs are kept as given (`os.path.abspath` would
        turn gs://b/x into a local '<cwd>/gs:/b/x' folder and nothing would reach the bucket)."""
        root = absolute_path(workdir)
        return cls(
            workdir=str(root),
            checkpoints=str(root / CHECKPOINT_SUBDIR),
            metrics=str(root / METRICS_FILE),
            tensorboard=str(root / TENSORBOARD_DIR),
            predictions=str(root / "predictions"),
            config=str(root / "config.json"),
        )


@dataclasses.dataclass
class RunSummary:
    """What a call to train_and_evaluate did (returned, and printed by main)."""

    paths: RunPaths
    start_step: int
    final_step: int
    num_train_steps: int
    preempted: bool
    train_seconds: float
    eval_metrics: dict[str, float]  # of the last evaluation of each split
    best_step: int | None
    best_valid_accuracy: float | None
    exported_to: str | None = None
    exported_step: int | None = None
    report_lines: tuple[str, ...] = ()  # efficiency and reasoning (sbsd_jax.eval.run_reports)

    def describe(self) -> str:
        lines = []
        if self.preempted:
            lines.append(
                f"Stopped by SIGTERM at step {self.final_step}/{self.num_train_steps}; "
                "checkpoint saved, run the same command again to resume."
            )
        else:
            lines.append(
                f"Trained steps {self.start_step}..{self.final_step} in {self.train_seconds:.1f}s."
            )
        for name, value in sorted(self.eval_metrics.items()):
            if name.endswith("accuracy"):
                lines.append(f"  {name}: {value:.4f}")
        if self.best_step is not None and self.best_valid_accuracy is not None:
            lines.append(
                f"  best checkpoint: step {self.best_step} "
                f"(valid_accuracy {self.best_valid_accuracy:.4f})"
            )
        lines.append(f"Run files in {self.paths.workdir}:")
        lines.append(f"  checkpoints: {self.paths.checkpoints}")
        lines.append(f"  metrics:     {self.paths.metrics}")
        lines.append(f"  tensorboard: {self.paths.tensorboard}")
        lines.append(f"  predictions: {self.paths.predictions}")
        if self.exported_to:
            lines.append(f"  Hugging Face export: {self.exported_to} (step {self.exported_step})")
        lines.extend(self.report_lines)
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Pieces the loop is made of


def _host_metrics(window: Sequence[Mapping[str, jax.Array]]) -> dict[str, float]:
    """Averages a log window of on-device step metrics on the host (the one fetch)."""
    fetched = jax.device_get(list(window))
    values: dict[str, float] = {}
    for name in fetched[-1]:
        series = np.asarray([float(m[name]) for m in fetched])
        values[name] = float(series[-1] if name in _LAST_VALUE_METRICS else series.mean())
    return values


def _to_host(array: jax.Array) -> np.ndarray:
    if array.is_fully_addressable:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _bound_steps_in_flight(
    in_flight: list[jax.Array], metrics: Mapping[str, jax.Array], step: int, watcher: Any
) -> None:
    """Step `step` was just dispatched: wait for step - 1 to finish, so that at most two steps
    are ever queued on the devices. The host would otherwise run ahead until the next metrics
    fetch (log_every steps), and a SIGTERM would be acted on, and the save wait for, that many
    steps late. Waiting for the step before the last keeps the next batch's preparation and
    dispatch overlapped with the running step."""
    in_flight.append(jax.tree.leaves(metrics)[0])
    if len(in_flight) > 1:
        jax.block_until_ready(in_flight.pop(0))
        watcher.note_completed(step - 1)


def _make_generate(program: Any, params: Any):
    """Host function: (padded numpy encoder tokens, output length) -> numpy output tokens,
    decoded on the mesh (one compiled decoder per input shape and output length)."""
    from sbsd_jax.model import sharding as model_sharding
    from sbsd_jax.model.decode import greedy_decode

    def generate(tokens: np.ndarray, max_decode_length: int) -> np.ndarray:
        global_tokens = jax.make_array_from_callback(
            tokens.shape, program.batch_sharding, lambda index: tokens[index]
        )
        with model_sharding.activation_rules(program.mesh, program.rules):
            output = greedy_decode(
                program.graphdef,
                global_tokens,
                state=params,
                max_decode_length=max_decode_length,
            )
        return _to_host(output)

    return generate


def _text_codec(vocabulary: Any, method: str) -> TextCodec:
    from sbsd_jax.data.features import METHOD_EVAL_TASK, TASK_KINDS

    label_task = TASK_KINDS[METHOD_EVAL_TASK[method]]
    explain = TASK_KINDS["explain"] if method == "step_by_step" else None
    return TextCodec(
        encode=lambda text: vocabulary.encode(text),
        decode=lambda ids: vocabulary.decode(list(ids)),
        label_input=lambda example: label_task.inputs({"input": example.input}),
        rationale_input=(
            (lambda example: explain.inputs({"input": example.input})) if explain else None
        ),
    )


def _eval_settings(config: ml_collections.ConfigDict, *, full: bool) -> EvalSettings:
    return EvalSettings(
        dataset=config.dataset,
        method=config.method,
        batch_size=int(config.eval_batch_size),
        max_input_length=int(config.max_input_length),
        max_decode_length=int(config.eval_max_decode_length),
        decode_rationales=bool(config.decode_rationales),
        # Rationales were trained at the target length; labels need only a few tokens.
        rationale_max_decode_length=int(config.max_target_length),
        max_examples=0 if full else int(config.eval_max_examples),
    )


def _run_evaluation(
    *,
    splits: Mapping[str, Sequence[Example]],
    split_names: Sequence[str],
    step: int,
    params: Any,
    full: bool,
    config: ml_collections.ConfigDict,
    program: Any,
    codec: TextCodec,
    paths: RunPaths,
    logger: MetricsLogger,
    progress: ProgressBar,
    should_stop: Any,
) -> dict[str, EvalResult]:
    """Decodes every split, then writes metrics, predictions and summaries: an evaluation cut
    short by `should_stop` (EvaluationInterrupted) leaves no trace, so resuming redoes it."""
    settings = _eval_settings(config, full=full)
    generate = _make_generate(program, params)
    results: dict[str, EvalResult] = {}
    for split in split_names:
        results[split] = evaluate(
            splits[split],
            split=split,
            step=step,
            settings=settings,
            codec=codec,
            generate=generate,
            should_stop=should_stop,
        )
    for split, result in results.items():
        metrics = result.metrics()
        metrics[f"{split}_eval_seconds"] = result.seconds
        logger.write(step, metrics)
        if jax.process_index() == 0:
            write_predictions(predictions_path(paths.workdir, split, step), result.records)
        progress.message(eval_summary(step, split, metrics, result.seconds))
    logger.flush()
    return results


def _checkpoint_metrics(
    results: Mapping[str, EvalResult], config: ml_collections.ConfigDict
) -> dict[str, float] | None:
    """What ranks a step for keep_best / export best: its validation accuracy, always over the
    same examples (with eval_max_examples, the final full evaluation is scored on that prefix
    too, so that it is compared like with like)."""
    if VALID_SPLIT not in results:
        return None
    result = results[VALID_SPLIT]
    report = result.report
    limit = int(config.eval_max_examples)
    if 0 < limit < len(result.records):
        records = result.records[:limit]
        report = score(config.dataset, [r.prediction for r in records], [r.label for r in records])
    return {"valid_accuracy": report.primary, "valid_exact_match": report.accuracy}


def _initial_state(program: Any, config: ml_collections.ConfigDict) -> Any:
    """A fresh state: from a Hugging Face T5 (config.init_checkpoint) or random init."""
    if config.init_checkpoint:
        from sbsd_jax.model.hf_checkpoint import load_hf_t5

        _, params, _ = load_hf_t5(config.init_checkpoint, dtype=config.param_dtype)
        logging.info("initialised from %s", config.init_checkpoint)
        return program.init_from_params_fn(params)
    return program.init_fn(jax.random.key(int(config.seed)))


def _export(
    program: Any,
    config: ml_collections.ConfigDict,
    checkpointer: Checkpointer,
    final_state: Any,
) -> tuple[str, int]:
    """Writes the best (by validation accuracy) or final student as a Hugging Face folder;
    returns the folder and the step exported."""
    from sbsd_jax.model.hf_checkpoint import save_hf_t5

    params = final_state.params
    step = int(jax.device_get(final_state.step))
    best = checkpointer.best_step()
    if config.export_which == "best" and best is not None and best != step:
        restored = checkpointer.restore(best, program.abstract_state_with_shardings)
        params, step = restored.state.params, best
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    tokenizer = config.vocabulary if os.path.isfile(str(config.vocabulary)) else None
    out_dir = os.path.abspath(config.export_hf_dir)
    if jax.process_index() == 0:
        save_hf_t5(
            jax.device_get(params),
            program.model_config,
            out_dir,
            tokenizer_file=tokenizer,
            byte_vocabulary=config.vocabulary == "byte",
        )
    return out_dir, step


def _config_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True) + "\n"


def _write_config(config: ml_collections.ConfigDict, path: str) -> None:
    """config.json next to the checkpoints (through epath: the workdir may be gs://...)."""
    if jax.process_index() == 0:
        epath.Path(path).write_text(_config_json(config), encoding="utf-8")


def _flat_fields(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flat_fields(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): tree}


def config_changes(previous_json: str | None, config: ml_collections.ConfigDict) -> list[str]:
    """'field: old -> new' for every field that differs from a run's saved config.json."""
    if previous_json is None:
        return []
    try:
        previous = _flat_fields(json.loads(previous_json))
    except json.JSONDecodeError:
        return ["config.json of the earlier run is not valid JSON"]
    current = _flat_fields(json.loads(_config_json(config)))

    def shown(fields: dict[str, Any], name: str) -> str:
        return repr(fields[name]) if name in fields else "(absent)"

    return [
        f"{name}: {shown(previous, name)} -> {shown(current, name)}"
        for name in sorted(previous.keys() | current.keys())
        if shown(previous, name) != shown(current, name)
    ]


def _mark_finished(summary: RunSummary) -> None:
    """<workdir>/DONE (JSON: final step, best and exported step), written last: what tells a
    launcher that watches the run (sbsd_jax.cloud watch) that there is nothing left to do."""
    if jax.process_index() == 0:
        record = {
            "final_step": summary.final_step,
            "num_train_steps": summary.num_train_steps,
            "best_step": summary.best_step,
            "exported_to": summary.exported_to,
            "exported_step": summary.exported_step,
        }
        marker = epath.Path(summary.paths.workdir) / FINISHED_MARKER
        marker.write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")


def _clear_finished_marker(paths: RunPaths) -> None:
    """A run that starts again (say with more steps) is not finished until it ends."""
    marker = epath.Path(paths.workdir) / FINISHED_MARKER
    if jax.process_index() == 0 and marker.exists():
        marker.unlink()


def _read_text(path: str) -> str | None:
    """The file's text (a local path or a URL), None when it does not exist."""
    try:
        return epath.Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# The loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> RunSummary:
    """Trains config.num_train_steps steps (resuming from workdir), evaluates, exports."""
    with contextlib.ExitStack() as cleanup:
        # First thing: a SIGTERM during start-up (data, compilation) must not kill the run.
        # Hosts compare their flags every step (a small collective; none on one host), so the
        # stop lands within two steps of the signal on every host.
        watcher = cleanup.enter_context(PreemptionWatcher(sync_every=1))
        return _train_and_evaluate(config, workdir, watcher, cleanup)


def _train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    watcher: PreemptionWatcher,
    cleanup: contextlib.ExitStack,
) -> RunSummary:
    # 1. Config (every group, before any side effect), processes, data, then the workdir: bad
    # flags or bad data files stop the run before anything is written or compiled.
    config_validation.validate(config, None)  # first: answers before TensorFlow is imported
    from sbsd_jax.data import pipeline
    from sbsd_jax.train.partitioning import host_local_to_global
    from sbsd_jax.train.step import build_train_program

    mesh_lib.maybe_initialize_distributed(config)
    config_validation.validate(config, jax.device_count(), jax.process_count())
    prepared = pipeline.prepare_data(config)
    if prepared.report is not None and jax.process_index() == 0:
        print(prepared.report.format(), flush=True)
    paths = RunPaths.of(workdir)
    epath.Path(paths.workdir).mkdir(parents=True, exist_ok=True)

    # 2. Mesh, compiled program, this process's data iterator.
    mesh = mesh_lib.make_mesh(config)
    program = build_train_program(config, mesh)
    # This process loads the batch rows its devices hold (shared when 'tensor' spans hosts).
    train_iterator = pipeline.make_train_iterator(
        config, prepared=prepared, batch_sharding=program.batch_sharding
    )
    codec = _text_codec(prepared.registered.vocabulary, config.method)

    # 3. Resume or start.
    policy = CheckpointPolicy(
        keep_last=int(config.keep_checkpoints), keep_best=1 if config.keep_best else 0
    )
    checkpointer = cleanup.enter_context(Checkpointer(paths.checkpoints, policy))
    changes = config_changes(_read_text(paths.config), config)
    try:
        restored = checkpointer.restore_latest(program.abstract_state_with_shardings)
    except IncompatibleCheckpointError as error:
        raise ConfigError(
            [str(error)]
            + [f"changed since {paths.config} was written: {change}" for change in changes]
        ) from error
    if restored is not None:
        state = restored.state
        try:
            train_iterator.set_state(restored.data_state)
        except pipeline.IteratorStateError as error:
            raise ConfigError(
                [
                    f"--workdir={paths.workdir} holds checkpoints of a different run "
                    f"({error}); use a new --workdir or the original config"
                ]
            ) from error
    else:
        state = _initial_state(program, config)
    _write_config(config, paths.config)  # only now: a refused resume keeps the old record
    _clear_finished_marker(paths)
    start_step = int(jax.device_get(state.step))
    total_steps = int(config.num_train_steps)
    if restored is not None and jax.process_index() == 0:
        for skipped in restored.skipped:  # a newer checkpoint that does not restore
            print(skipped.describe())
    if start_step > 0 and jax.process_index() == 0:
        print(f"Resuming from step {start_step} ({checkpointer.step_directory(start_step)})")
        for change in changes:
            print(f"  config changed since the last start: {change}")

    # 4. Train.
    logger = MetricsLogger(paths.workdir, is_primary=jax.process_index() == 0)
    cleanup.callback(logger.close)
    logger.discard_after(start_step)  # rows of steps lost with a crash are logged again
    progress = ProgressBar(total_steps, start_step=start_step)
    evaluate_splits = functools.partial(
        _run_evaluation,
        splits=prepared.splits,
        split_names=tuple(config.eval_splits),
        config=config,
        program=program,
        codec=codec,
        paths=paths,
        logger=logger,
        progress=progress,
        should_stop=watcher.should_stop_now,
    )
    last_results: dict[str, EvalResult] = {}
    window: list[Mapping[str, jax.Array]] = []
    preempted = False
    step = start_step
    if restored is not None and restored.evaluation_pending:
        # A SIGTERM cut this step's evaluation short: do it now, then rank the step with it.
        try:
            last_results = evaluate_splits(step=step, params=state.params, full=step == total_steps)
        except EvaluationInterrupted:
            preempted = True
            progress.message(f"SIGTERM during the evaluation of step {step}, exiting")
        else:
            checkpointer.replace(
                step,
                state,
                train_iterator.get_state(),
                metrics=_checkpoint_metrics(last_results, config),
            )
    watcher.note_completed(step)
    in_flight: list[jax.Array] = []  # one small output of each dispatched, unfinished step
    started = time.perf_counter()
    while step < total_steps and not preempted:
        batch = host_local_to_global(next(train_iterator), mesh, program.batch_sharding)
        state, metrics = program.train_step(state, batch)
        _bound_steps_in_flight(in_flight, metrics, step + 1, watcher)
        step += 1
        window.append(metrics)  # stays on the device until the next log step
        is_last = step == total_steps
        if step == start_step + 1 and step % int(config.log_every) and not is_last:
            # The first call compiled the step: say so now, not log_every steps later.
            progress.message(
                f"training from step {start_step}; progress every {config.log_every} steps"
            )

        if step % int(config.log_every) == 0 or is_last:
            values = _host_metrics(window)
            window.clear()
            logger.write(step, {f"train_{k}": v for k, v in values.items()})
            progress.update(step, {k: values[k] for k in ("loss",) if k in values})

        results: dict[str, EvalResult] = {}
        evaluation_interrupted = False
        if step % int(config.eval_every) == 0 or is_last:
            try:
                results = evaluate_splits(step=step, params=state.params, full=is_last)
            except EvaluationInterrupted:
                evaluation_interrupted = True
            last_results.update(results)
            progress.reset_clock(step)

        stop = evaluation_interrupted or watcher.should_stop(step)
        if step % int(config.checkpoint_every) == 0 or results or is_last or stop:
            checkpointer.save(
                step,
                state,
                train_iterator.get_state(),
                metrics=_checkpoint_metrics(results, config),
                evaluation_pending=evaluation_interrupted,
            )
        if evaluation_interrupted or (stop and not is_last):
            preempted = True
            progress.message(
                f"SIGTERM after step {watcher.signal_step}: checkpointed step {step}, exiting"
            )
            break
    train_seconds = time.perf_counter() - started

    # 5. Wrap up.
    checkpointer.wait_until_finished()
    exported_to = exported_step = None
    if config.export_hf_dir and not preempted:
        exported_to, exported_step = _export(program, config, checkpointer, state)
    report_lines: list[str] = []
    if not preempted:
        from sbsd_jax.eval.run_reports import for_training_run

        report_lines = for_training_run(
            config,
            program,
            state.params,
            prepared.splits,
            codec,
            last_results,
            _make_generate(program, state.params),
            paths.workdir,
        )
    best = checkpointer.best_step()
    best_metrics = checkpointer.metrics(best) if best is not None else None
    eval_metrics: dict[str, float] = {}
    for result in last_results.values():
        eval_metrics.update(result.metrics())
    summary = RunSummary(
        paths=paths,
        start_step=start_step,
        final_step=step,
        num_train_steps=total_steps,
        preempted=preempted,
        train_seconds=train_seconds,
        eval_metrics=eval_metrics,
        best_step=best,
        best_valid_accuracy=(best_metrics or {}).get("valid_accuracy"),
        exported_to=exported_to,
        exported_step=exported_step,
        report_lines=tuple(report_lines),
    )
    if not preempted:
        _mark_finished(summary)
    return summary


def summary_json(summary: RunSummary) -> str:
    """The summary as JSON (for scripts that drive several runs, e.g. the demo)."""
    payload = dataclasses.asdict(summary)
    return json.dumps(payload, indent=2, sort_keys=True)
