"""The train loop: build, resume, train, evaluate, checkpoint, export. One function to read.

    train_and_evaluate(spec, workdir)          # spec: a RunSpec (or a config, resolved here)

1. Settings: a RunSpec resolved once at the entry point (every config group validated before
   any side effect; sbsd_jax.settings); join the other processes (multi-host), check the mesh
   against the devices, load and tokenise the data; only then create the workdir, so bad flags
   or data files leave nothing behind.
2. Build the mesh and the compiled train program (sharded init + jitted step, from
   sbsd_jax.train.step); the training iterator is deterministic and resumable and loads the
   batch rows this process's devices hold.
3. Resume from the newest committed checkpoint in <workdir>/checkpoints (state restored straight
   into its shardings, data iterator moved to the saved position), else start from the model's
   init_checkpoint (a Hugging Face T5) or from scratch.
4. Train. Step metrics stay on the device and are fetched every `log_every` steps only.
   Every `eval_every` steps: greedy-decode the eval splits, log accuracy, write predictions.
   Every `checkpoint_every` steps (and after each validation): an asynchronous checkpoint.
   SIGTERM: checkpoint this step and return (the process exits 0), also in the middle of an
   evaluation (that step is saved as evaluation-pending and evaluated first on resume). The
   cadence and the stop rules are one object, loop_control.LoopControl.
5. At the end: evaluate every eval split (valid and test by default) on all its examples,
   checkpoint, optionally export the best or final student as a Hugging Face folder, write
   <workdir>/DONE (what a launcher watching the run looks for), and say where everything is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from etils import epath

from sbsd_jax.data.examples import Example
from sbsd_jax.eval.evaluator import (
    EvalResult,
    EvalSettings,
    EvaluationInterrupted,
    OutputsFn,
    TextCodec,
    codec_outputs,
    evaluate,
    text_codec,
)
from sbsd_jax.eval.metrics import score
from sbsd_jax.eval.predictions import predictions_path, write_predictions
from sbsd_jax.runtime.distributed import maybe_initialize_distributed
from sbsd_jax.runtime.preemption import PreemptionWatcher
from sbsd_jax.runtime.run_storage import absolute_path
from sbsd_jax.settings.spec import CheckpointSpec, ConfigError, RunSpec
from sbsd_jax.train import mesh as mesh_lib
from sbsd_jax.train import partitioning
from sbsd_jax.train.checkpointing import (
    CHECKPOINT_SUBDIR,
    Checkpointer,
    CheckpointPolicy,
    IncompatibleCheckpointError,
)
from sbsd_jax.train.loop_control import LoopControl
from sbsd_jax.train.metric_writers import (
    METRICS_FILE,
    TENSORBOARD_DIR,
    MetricsLogger,
    ProgressBar,
    eval_summary,
)

if TYPE_CHECKING:  # the data pipeline imports TensorFlow: only once the settings are checked
    from sbsd_jax.data import pipeline

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
    decoded on the mesh (one compiled decoder per input shape, output length and sharding)."""
    greedy_decode = program.model_spec.family.greedy_decode

    def generate(tokens: np.ndarray, max_decode_length: int) -> np.ndarray:
        global_tokens = jax.make_array_from_callback(
            tokens.shape, program.batch_sharding, lambda index: tokens[index]
        )
        output = greedy_decode(
            program.graphdef,
            global_tokens,
            state=params,
            max_decode_length=max_decode_length,
            activation_sharding=program.activation_sharding,
        )
        return _to_host(output)

    return generate


def _make_causal_generate(program: Any, params: Any):
    """Host function for a decoder-only student: (left-padded prompts, segment ids, output
    length) -> numpy output tokens, decoded on the mesh."""
    greedy_decode = program.model_spec.family.greedy_decode

    def generate(tokens: np.ndarray, segments: np.ndarray, max_decode_length: int) -> np.ndarray:
        def on_mesh(array: np.ndarray) -> jax.Array:
            return jax.make_array_from_callback(
                array.shape, program.batch_sharding, lambda index: array[index]
            )

        output = greedy_decode(
            program.graphdef,
            on_mesh(tokens),
            state=params,
            max_decode_length=max_decode_length,
            prompt_segment_ids=on_mesh(segments),
        )
        return _to_host(output)

    return generate


def _outputs(
    spec: RunSpec, program: Any, params: Any, codec: TextCodec | None, settings: EvalSettings
) -> OutputsFn:
    """How the student decodes an evaluation task: T5 from its encoded input, a decoder-only
    student from its prompt (sbsd_jax.eval.causal_outputs)."""
    if spec.causal is None:
        return codec_outputs(codec, _make_generate(program, params), settings)
    from sbsd_jax.eval.causal_outputs import causal_outputs

    return causal_outputs(
        codec,
        method=spec.data.method,
        dataset=spec.data.dataset.dataset,
        generate=_make_causal_generate(program, params),
        batch_size=settings.batch_size,
        max_prompt_length=spec.causal.max_prompt_length,
    )


def _eval_settings(spec: RunSpec, *, full: bool) -> EvalSettings:
    evaluation = spec.evaluation
    return EvalSettings(
        dataset=spec.data.dataset.dataset,
        method=spec.data.method,
        batch_size=evaluation.batch_size,
        max_input_length=spec.data.max_input_length,
        max_decode_length=evaluation.max_decode_length,
        decode_rationales=evaluation.decode_rationales,
        # Rationales were trained at the target length; labels need only a few tokens.
        rationale_max_decode_length=spec.data.max_target_length,
        max_examples=0 if full else evaluation.max_examples,
    )


@dataclasses.dataclass(frozen=True)
class _Evaluator:
    """Decodes every eval split of a run at a step and writes what an evaluation leaves."""

    spec: RunSpec
    splits: Mapping[str, Sequence[Example]]
    program: Any
    codec: Any  # TextCodec (T5) or the decoder-only CausalFormat
    paths: RunPaths
    logger: MetricsLogger
    progress: ProgressBar
    should_stop: Any
    frozen: Any = None  # a LoRA student's frozen base (program.model_params merges it)

    def __call__(self, *, step: int, params: Any, full: bool) -> dict[str, EvalResult]:
        """Decodes every split, then writes metrics, predictions and summaries: an evaluation
        cut short by `should_stop` (EvaluationInterrupted) leaves no trace, so resuming redoes
        it."""
        settings = _eval_settings(self.spec, full=full)
        model_state = self.program.model_params(params, self.frozen)
        outputs = _outputs(self.spec, self.program, model_state, self.codec, settings)
        results: dict[str, EvalResult] = {}
        for split in self.spec.evaluation.splits:
            results[split] = evaluate(
                self.splits[split],
                split=split,
                step=step,
                settings=settings,
                outputs=outputs,
                has_rationale_task=self.spec.data.method == "step_by_step",
                should_stop=self.should_stop,
            )
        for split, result in results.items():
            metrics = result.metrics()
            metrics[f"{split}_eval_seconds"] = result.seconds
            self.logger.write(step, metrics)
            if jax.process_index() == 0:
                write_predictions(predictions_path(self.paths.workdir, split, step), result.records)
            self.progress.message(eval_summary(step, split, metrics, result.seconds))
        self.logger.flush()
        return results


def _checkpoint_metrics(
    results: Mapping[str, EvalResult], dataset: str, max_examples: int
) -> dict[str, float] | None:
    """What ranks a step for keep_best / export best: its validation accuracy, always over the
    same examples (with eval_max_examples, the final full evaluation is scored on that prefix
    too, so that it is compared like with like)."""
    if VALID_SPLIT not in results:
        return None
    result = results[VALID_SPLIT]
    report = result.report
    if 0 < max_examples < len(result.records):
        records = result.records[:max_examples]
        report = score(dataset, [r.prediction for r in records], [r.label for r in records])
    return {"valid_accuracy": report.primary, "valid_exact_match": report.accuracy}


def _state_and_frozen_base(program: Any, spec: RunSpec, restored: Any) -> tuple[Any, Any]:
    """The state to train from (the restored one, else from the model's init_checkpoint, e.g.
    a Hugging Face T5, else random init) and a LoRA student's frozen base, rebuilt from what
    made it (never checkpointed): the same pretrained params, read once, or the seed."""
    checkpoint = spec.model.init_checkpoint
    pretrained = None
    if checkpoint and (restored is None or program.frozen is not None):
        pretrained = spec.model.family.load_pretrained(checkpoint, spec.model.param_dtype)
        logging.info("initialised from %s", checkpoint)
    key = jax.random.key(spec.step.seed)
    if restored is not None:
        state = restored.state
    elif pretrained is not None:
        state = program.init_from_params_fn(pretrained)
    else:
        state = program.init_fn(key)
    if program.frozen is None:
        return state, None
    if pretrained is not None:
        return state, program.frozen.from_params(pretrained)
    return state, program.frozen.from_key(key)


def _export(
    program: Any,
    export: CheckpointSpec,
    vocabulary: str,
    checkpointer: Checkpointer,
    final_state: Any,
    frozen: Any = None,
) -> tuple[str, int]:
    """Writes the best (by validation accuracy) or final student as a Hugging Face folder
    (LoRA adapters merged into the base); returns the folder and the step exported."""
    params = final_state.params
    step = int(jax.device_get(final_state.step))
    best = checkpointer.best_step()
    if export.export_which == "best" and best is not None and best != step:
        restored = checkpointer.restore(best, program.abstract_state_with_shardings)
        params, step = restored.state.params, best
    params = program.model_params(params, frozen)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    tokenizer = vocabulary if os.path.isfile(vocabulary) else None
    extra = {}
    if program.model_spec.family.causal and os.path.isdir(vocabulary):  # a HF tokenizer
        from sbsd_jax.model.decoder_only.hf_checkpoint import tokenizer_files_in

        extra["tokenizer_files"] = tokenizer_files_in(vocabulary)
    out_dir = os.path.abspath(export.export_hf_dir)
    if jax.process_index() == 0:
        program.model_spec.family.save_pretrained(
            jax.device_get(params),
            program.model_config,
            out_dir,
            tokenizer_file=tokenizer,
            byte_vocabulary=vocabulary == "byte",
            **extra,
        )
    return out_dir, step


def _write_config(config_json: str | Any, path: str) -> None:
    """config.json next to the checkpoints (through epath: the workdir may be gs://...).
    `config_json`: the RunSpec's config_json, or a config (anything with to_json_best_effort)."""
    if not isinstance(config_json, str):
        config_json = config_json.to_json_best_effort(indent=2, sort_keys=True) + "\n"
    if jax.process_index() == 0:
        epath.Path(path).write_text(config_json, encoding="utf-8")


def _flat_fields(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flat_fields(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): tree}


def config_changes(previous_json: str | None, current_json: str) -> list[str]:
    """'field: old -> new' for every field that differs from a run's saved config.json."""
    if previous_json is None:
        return []
    try:
        previous = _flat_fields(json.loads(previous_json))
    except json.JSONDecodeError:
        return ["config.json of the earlier run is not valid JSON"]
    current = _flat_fields(json.loads(current_json))

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


def train_and_evaluate(run: RunSpec | Any, workdir: str) -> RunSummary:
    """Trains run.loop.num_train_steps steps (resuming from workdir), evaluates, exports.

    `run`: a RunSpec from the entry point, or an ml_collections config, which is validated
    and converted here first (sbsd_jax.settings.from_config.run_spec)."""
    with contextlib.ExitStack() as cleanup:
        # First thing: a SIGTERM during start-up (data, compilation) must not kill the run.
        # Hosts compare their flags every step (a small collective; none on one host), so the
        # stop lands within two steps of the signal on every host.
        watcher = cleanup.enter_context(PreemptionWatcher(sync_every=1))
        if not isinstance(run, RunSpec):
            from sbsd_jax.settings.from_config import run_spec

            run = run_spec(run)  # every group, before any side effect and before TensorFlow
        return _train_and_evaluate(run, workdir, watcher, cleanup)


@dataclasses.dataclass
class _Started:
    """What the start of a run built: data, program, iterator, checkpoints, state."""

    paths: RunPaths
    prepared: pipeline.PreparedData
    program: Any
    train_iterator: pipeline.TrainIterator
    checkpointer: Checkpointer
    state: Any
    restored: Any
    changes: list[str]
    frozen: Any = None  # LoRA: the frozen base the step and evaluation take


def _start(spec: RunSpec, workdir: str, cleanup: contextlib.ExitStack) -> _Started:
    """Processes, devices, data, then the workdir, the program and the resume point: bad flags
    or bad data files stop the run before anything is written or compiled."""
    maybe_initialize_distributed(spec.distributed)
    spec.check_devices(jax.device_count(), jax.process_count())
    prepared = _prepare_data(spec)
    from sbsd_jax.data import pipeline
    from sbsd_jax.train.step import build_train_program

    if prepared.report is not None and jax.process_index() == 0:
        print(prepared.report.format(), flush=True)
    paths = RunPaths.of(workdir)
    epath.Path(paths.workdir).mkdir(parents=True, exist_ok=True)

    mesh = mesh_lib.make_mesh(spec.mesh)
    program = build_train_program(spec.model, spec.optimizer, spec.step, mesh, spec.mesh.rules)
    # This process loads the batch rows its devices hold (shared when 'tensor' spans hosts).
    rows = pipeline.rows_per_batch(prepared.train_set, spec.batching)
    host_rows = partitioning.process_batch_rows(program.batch_sharding, rows)
    train_iterator = pipeline.make_train_iterator(prepared, spec.batching, host_rows=host_rows)

    policy = CheckpointPolicy(
        keep_last=spec.checkpointing.keep, keep_best=1 if spec.checkpointing.keep_best else 0
    )
    checkpointer = cleanup.enter_context(Checkpointer(paths.checkpoints, policy))
    changes = config_changes(_read_text(paths.config), spec.config_json)
    restored = _restore(checkpointer, program, train_iterator, paths, changes)
    state, frozen = _state_and_frozen_base(program, spec, restored)
    _write_config(spec.config_json, paths.config)  # only now: a refused resume keeps the old one
    _clear_finished_marker(paths)
    return _Started(
        paths, prepared, program, train_iterator, checkpointer, state, restored, changes, frozen
    )


def _prepare_data(spec: RunSpec) -> pipeline.PreparedData:
    """The run's data; a decoder-only prompt that cannot fit its row is a config problem. The
    files are read before the pipeline imports TensorFlow (seconds): a bad file stops the run
    at once."""
    from sbsd_jax.data.sources import load_dataset_splits

    loaded = load_dataset_splits(spec.data.dataset)
    from sbsd_jax.data import pipeline
    from sbsd_jax.data.causal_lm import PromptTooLongError, TokenBoundaryError

    try:
        return pipeline.prepare_data(spec.data, causal=spec.causal, loaded=loaded)
    except PromptTooLongError as error:
        raise ConfigError(
            [f"{error} (config.decoder_row_length / config.max_input_length)"]
        ) from None
    except TokenBoundaryError as error:
        raise ConfigError([f"{error}; try --config.decoder_template=plain"]) from None


def _codec(spec: RunSpec, prepared: pipeline.PreparedData) -> Any:
    """T5: the TextCodec of its vocabulary; decoder-only: the CausalFormat of its rows."""
    if prepared.causal_format is not None:
        return prepared.causal_format
    return text_codec(prepared.registered.vocabulary, spec.data.method)


def _restore(
    checkpointer: Checkpointer,
    program: Any,
    train_iterator: pipeline.TrainIterator,
    paths: RunPaths,
    changes: Sequence[str],
) -> Any:
    """The newest checkpoint that restores (its iterator position applied), None without one;
    ConfigError when the workdir holds another run's checkpoints."""
    from sbsd_jax.data.pipeline import IteratorStateError

    try:
        restored = checkpointer.restore_latest(program.abstract_state_with_shardings)
    except IncompatibleCheckpointError as error:
        raise ConfigError(
            [str(error)]
            + [f"changed since {paths.config} was written: {change}" for change in changes]
        ) from error
    if restored is None:
        return None
    try:
        train_iterator.set_state(restored.data_state)
    except IteratorStateError as error:
        raise ConfigError(
            [
                f"--workdir={paths.workdir} holds checkpoints of a different run "
                f"({error}); use a new --workdir or the original config"
            ]
        ) from error
    return restored


def _say_where_it_starts(started: _Started, start_step: int) -> None:
    if jax.process_index() != 0:
        return
    if started.restored is not None:
        for skipped in started.restored.skipped:  # a newer checkpoint that does not restore
            print(skipped.describe())
    if start_step > 0:
        directory = started.checkpointer.step_directory(start_step)
        print(f"Resuming from step {start_step} ({directory})")
        for change in started.changes:
            print(f"  config changed since the last start: {change}")


def _train_and_evaluate(
    spec: RunSpec,
    workdir: str,
    watcher: PreemptionWatcher,
    cleanup: contextlib.ExitStack,
) -> RunSummary:
    started = _start(spec, workdir, cleanup)
    start_step = int(jax.device_get(started.state.step))
    _say_where_it_starts(started, start_step)
    logger = MetricsLogger(started.paths.workdir, is_primary=jax.process_index() == 0)
    cleanup.callback(logger.close)
    logger.discard_after(start_step)  # rows of steps lost with a crash are logged again
    progress = ProgressBar(spec.loop.num_train_steps, start_step=start_step)
    evaluate_splits = _Evaluator(
        spec=spec,
        splits=started.prepared.splits,
        program=started.program,
        codec=_codec(spec, started.prepared),
        paths=started.paths,
        logger=logger,
        progress=progress,
        should_stop=watcher.should_stop_now,
        frozen=started.frozen,
    )
    control = LoopControl(
        start_step=start_step,
        total_steps=spec.loop.num_train_steps,
        log_every=spec.loop.log_every,
        eval_every=spec.evaluation.every,
        checkpoint_every=spec.checkpointing.every,
    )
    last_results = _pending_evaluation(spec, started, evaluate_splits, control, progress)
    watcher.note_completed(start_step)
    begun = time.perf_counter()
    state, step = _train(spec, started, evaluate_splits, control, watcher, logger, last_results)
    return _wrap_up(
        spec, started, state, step, start_step, control, last_results, time.perf_counter() - begun
    )


def _pending_evaluation(
    spec: RunSpec,
    started: _Started,
    evaluate_splits: _Evaluator,
    control: LoopControl,
    progress: ProgressBar,
) -> dict[str, EvalResult]:
    """A SIGTERM cut the restored step's evaluation short: do it now, then rank the step."""
    restored, step = started.restored, control.start_step
    if restored is None or not restored.evaluation_pending:
        return {}
    full = step == control.total_steps
    try:
        results = evaluate_splits(step=step, params=started.state.params, full=full)
    except EvaluationInterrupted:
        control.pending_evaluation_interrupted()
        progress.message(f"SIGTERM during the evaluation of step {step}, exiting")
        return {}
    started.checkpointer.replace(
        step,
        started.state,
        started.train_iterator.get_state(),
        metrics=_checkpoint_metrics(
            results, spec.data.dataset.dataset, spec.evaluation.max_examples
        ),
    )
    return results


def _train(
    spec: RunSpec,
    started: _Started,
    evaluate_splits: _Evaluator,
    control: LoopControl,
    watcher: PreemptionWatcher,
    logger: MetricsLogger,
    last_results: dict[str, EvalResult],
) -> tuple[Any, int]:
    """Steps until the last one or a stop; returns the state and its step."""
    program, state, step = started.program, started.state, control.start_step
    progress = evaluate_splits.progress
    window: list[Mapping[str, jax.Array]] = []
    in_flight: list[jax.Array] = []  # one small output of each dispatched, unfinished step
    # (perf_counter, step) where the current log window's timing began; None in the window
    # that compiles the step. Restarted after each log fetch, evaluation and save, so a
    # window's step_seconds is training alone (eval/mfu.py reads it as train_step_seconds).
    clock: tuple[float, int] | None = None
    frozen_args = () if started.frozen is None else (started.frozen,)
    while control.keeps_training(step):
        local = next(started.train_iterator)
        batch = partitioning.host_local_to_global(local, program.mesh, program.batch_sharding)
        state, metrics = program.train_step(state, batch, *frozen_args)
        _bound_steps_in_flight(in_flight, metrics, step + 1, watcher)
        step += 1
        window.append(metrics)  # stays on the device until the next log step
        plan = control.plan(step)
        if plan.announce:  # the first call compiled the step: say so now, not later
            progress.message(
                f"training from step {control.start_step}; progress every "
                f"{spec.loop.log_every} steps"
            )
        if plan.log:
            values = _host_metrics(window)  # waits for the window's steps
            window.clear()
            if clock is not None and step > clock[1]:
                values["step_seconds"] = (time.perf_counter() - clock[0]) / (step - clock[1])
            clock = (time.perf_counter(), step)
            logger.write(step, {f"train_{k}": v for k, v in values.items()})
            progress.update(step, {k: values[k] for k in ("loss",) if k in values})
        results: dict[str, EvalResult] = {}
        interrupted = False
        if plan.evaluate:
            try:
                results = evaluate_splits(step=step, params=state.params, full=plan.full_evaluation)
            except EvaluationInterrupted:
                interrupted = True
            last_results.update(results)
            progress.reset_clock(step)
        outcome = control.finish(
            step,
            evaluated=bool(results),
            evaluation_interrupted=interrupted,
            stop_requested=watcher.should_stop(step),
        )
        if outcome.save:
            started.checkpointer.save(
                step,
                state,
                started.train_iterator.get_state(),
                metrics=_checkpoint_metrics(
                    results, spec.data.dataset.dataset, spec.evaluation.max_examples
                ),
                evaluation_pending=outcome.evaluation_pending,
            )
        if clock is not None and (plan.evaluate or outcome.save):
            clock = (time.perf_counter(), step)
        if outcome.leave:
            progress.message(
                f"SIGTERM after step {watcher.signal_step}: checkpointed step {step}, exiting"
            )
    return state, step


def _wrap_up(
    spec: RunSpec,
    started: _Started,
    state: Any,
    step: int,
    start_step: int,
    control: LoopControl,
    last_results: Mapping[str, EvalResult],
    train_seconds: float,
) -> RunSummary:
    """Waits for the checkpoints, exports, reports, and writes DONE unless preempted."""
    started.checkpointer.wait_until_finished()
    preempted = control.preempted
    exported_to = exported_step = None
    if spec.checkpointing.export_hf_dir and not preempted:
        exported_to, exported_step = _export(
            started.program,
            spec.checkpointing,
            spec.data.vocabulary,
            started.checkpointer,
            state,
            started.frozen,
        )
    report_lines: list[str] = []
    if not preempted:
        report_lines = _run_reports(spec, started, state, last_results)
    best = started.checkpointer.best_step()
    best_metrics = started.checkpointer.metrics(best) if best is not None else None
    eval_metrics: dict[str, float] = {}
    for result in last_results.values():
        eval_metrics.update(result.metrics())
    summary = RunSummary(
        paths=started.paths,
        start_step=start_step,
        final_step=step,
        num_train_steps=spec.loop.num_train_steps,
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


def _run_reports(
    spec: RunSpec, started: _Started, state: Any, last_results: Mapping[str, EvalResult]
) -> list[str]:
    """Measured MFU of the training (every student), then the efficiency and reasoning
    reports (sbsd_jax.eval.run_reports; T5 students: they time the encoder-decoder's
    generate). Process 0: it alone has metrics.jsonl."""
    from sbsd_jax.eval.mfu import TrainStepShape
    from sbsd_jax.eval.run_reports import for_training_run, training_mfu_lines

    program = started.program
    lines: list[str] = []
    if jax.process_index() == 0:
        lines += training_mfu_lines(
            TrainStepShape.of_run(spec),
            program.model_config,
            started.paths.workdir,
            chips=program.mesh.size,
            device=program.mesh.devices.flat[0],
        )
    params = program.model_params(state.params, started.frozen)
    if spec.causal is not None:
        return lines + _causal_efficiency_lines(spec, started, params)
    return lines + for_training_run(
        _eval_settings(spec, full=True),
        spec.evaluation.splits,
        program,
        params,
        started.prepared.splits,
        text_codec(started.prepared.registered.vocabulary, spec.data.method),
        last_results,
        _make_generate(program, params),
        started.paths.workdir,
    )


def _causal_efficiency_lines(spec: RunSpec, started: _Started, params: Any) -> list[str]:
    """A decoder-only student's efficiency report, timed on its evaluation prompts (the
    reasoning report reads decoded rationales, which decoder-only evaluation does not make)."""
    from sbsd_jax.data.causal_lm import METHOD_EVAL_TASK
    from sbsd_jax.eval.run_reports import for_causal_training_run

    fmt, kind = started.prepared.causal_format, METHOD_EVAL_TASK[spec.data.method]
    dataset = spec.data.dataset.dataset
    return for_causal_training_run(
        _eval_settings(spec, full=True),
        spec.evaluation.splits,
        started.program,
        params,
        started.prepared.splits,
        lambda example: fmt.prompt_ids(kind, dataset, example),
        spec.causal.max_prompt_length,
        _make_causal_generate(started.program, params),
        started.paths.workdir,
    )


def summary_json(summary: RunSummary) -> str:
    """The summary as JSON (for scripts that drive several runs, e.g. the demo)."""
    payload = dataclasses.asdict(summary)
    return json.dumps(payload, indent=2, sort_keys=True)
