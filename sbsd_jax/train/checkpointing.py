"""Orbax checkpoints of the train state and the input pipeline's position.

One `CheckpointManager` under `<workdir>/checkpoints` holds every checkpoint. Each step directory
has two items: `state` (the train-state pytree: parameters, optimizer state, step; saved with
`StandardSave`, restored straight into the shardings of an abstract target) and `data` (the
data iterator's JSON position). Which steps survive is one preservation policy: the last
`keep_last` steps, plus the `keep_best` steps with the highest validation accuracy (saved with
`metrics`). Saves are asynchronous: `save` returns once the arrays are copied off the devices.

Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it when every host has
finished (on object stores it writes `commit_success.txt` instead), so a crash mid-save leaves a
temporary directory that `latest_step` never returns. Before reading a step its array shapes
are compared with the target: a checkpoint written for another model or optimizer raises
`IncompatibleCheckpointError` listing the arrays that differ. A committed step any of whose files
does not read (step metadata, array metadata and sharding, array data, data position, metrics)
raises `CorruptCheckpointError`, one line naming the step, its directory and the item.
`restore_latest` then falls back to the newest step that restores: the bad one is moved, whole,
to `<workdir>/corrupt_checkpoints/` (never deleted; out of the way of the retention policy and
of the resumed run, which writes that step afresh) and reported in `RestoredCheckpoint.skipped`.

A step saved while its evaluation was cut short (SIGTERM during decoding) carries
`evaluation_pending` in its Orbax custom metadata; the loop evaluates it after resuming and
`replace`s it with the same state plus the validation metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from sbsd_jax.runtime.run_storage import absolute_path
from sbsd_jax.train.failed_read_leftovers import log_failed_read_leftovers
from sbsd_jax.train.state_fingerprint import differing, fingerprints, path_name

STATE_ITEM = "state"
DATA_ITEM = "data"
BEST_METRIC = "valid_accuracy"
CHECKPOINT_SUBDIR = "checkpoints"
CORRUPT_SUBDIR = "corrupt_checkpoints"  # next to CHECKPOINT_SUBDIR: steps that did not restore


_EVALUATION_PENDING = "evaluation_pending"
_FINGERPRINTS = "state_fingerprints"
_MAX_LISTED_MISMATCHES = 8
_MAX_REASON_CHARS = 240
_STEP_METADATA_FILE = "_CHECKPOINT_METADATA"


class CorruptCheckpointError(ValueError):
    """A committed checkpoint directory that cannot be restored; the message names it."""


def _reason(error: BaseException) -> str:
    """The first line of an Orbax/TensorStore error, without the JSON specs and driver chain
    that make its messages tens of lines long, cut to a readable length."""
    text = str(error).split(" [tensorstore_spec", 1)[0].split(" See full TensorStore", 1)[0]
    text = re.sub(r'Error opening "\w+" driver: ', "", text).strip()
    # TensorStore chains its causes ('Error reading "x" in ... local file "state/": Error
    # decoding local file "state/manifest.ocdbt": ...'): the last file named is the damaged one.
    files = list(re.finditer(r'Error \w+ local file "', text))
    if files:
        status = re.match(r"[A-Z_]+: ", text)
        text = (status.group(0) if status else "") + text[files[-1].start() :]
    line = text.splitlines()[0] if text else ""
    if len(line) > _MAX_REASON_CHARS:
        line = line[: _MAX_REASON_CHARS - 3] + "..."
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


class IncompatibleCheckpointError(ValueError):
    """A readable checkpoint whose arrays do not match this run's train state (another model,
    optimizer or layer layout); the message names the directory and the arrays that differ."""


class _DropMissingMetricsWarning(logging.Filter):
    """Periodic saves carry no validation metrics on purpose; Orbax warns about each one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropMissingMetricsWarning())


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, except that a step whose `metrics` file does not parse is listed
    without metrics (and reported as corrupt when restored) instead of stopping the manager
    from opening the directory at all, older good steps included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.unreadable_metrics: dict[int, str] = {}  # read while the parent initialises
        super().__init__(*args, **kwargs)

    def close(self) -> None:
        # Orbax removes crashed saves' temporary folders in a thread started with the manager
        # and joins it only before a save: a run stopped before its first save (bad weights)
        # must not leave that thread listing a folder that is then removed.
        self._maybe_await_cleanup_tmp_directory()
        super().close()

    def _get_metrics(self, step: int) -> Any:
        try:
            return super()._get_metrics(step)
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.unreadable_metrics[step] = _reason(error)
            return None


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
    """Which checkpoints to write and keep.

    keep_last: the newest N steps are kept (resume points).
    keep_best: the N steps with the highest `valid_accuracy` are kept as well (0: none).
    async_save: write in a background thread while training continues.
    """

    keep_last: int = 2
    keep_best: int = 1
    async_save: bool = True

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise ValueError(f"checkpoint keep_last must be >= 1, got {self.keep_last}")
        if self.keep_best < 0:
            raise ValueError(f"checkpoint keep_best must be >= 0, got {self.keep_best}")


@dataclasses.dataclass(frozen=True)
class RestoredCheckpoint:
    """What a checkpoint gives back: the train state (in the target's shardings), the data
    iterator position, the step it was written at and its metrics (None for periodic saves)."""

    step: int
    state: Any
    data_state: dict[str, Any]
    metrics: dict[str, float] | None
    evaluation_pending: bool = False
    skipped: tuple[SkippedCheckpoint, ...] = ()


@dataclasses.dataclass(frozen=True)
class SkippedCheckpoint:
    """A newer step `restore_latest` could not read: why, and where its files are now."""

    step: int
    reason: str  # the CorruptCheckpointError message
    moved_to: str | None  # None when it could not be moved (it stays where it was)

    def describe(self) -> str:
        where = f"moved to {self.moved_to}" if self.moved_to else "left in place"
        return f"Skipped {self.reason}; {where}"


def _best_metric(metrics: Mapping[str, Any]) -> float:
    return float(metrics[BEST_METRIC])


def _jsonable(value: Any) -> Any:
    """Numpy scalars/arrays inside the data state become plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs with the shardings of `state`: a restore target from a live state."""

    def to_abstract(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(to_abstract, state)


def _agreed_failure(step: int, error: CorruptCheckpointError | None) -> str | None:
    """This process's failure to read `step`, or another process's: with several processes
    each reads its own shards, and all must fall back together (None: all read it)."""
    if jax.process_count() == 1:
        return None if error is None else str(error)
    from jax.experimental import multihost_utils

    failed = multihost_utils.process_allgather(np.asarray(error is not None))
    if not np.any(failed):
        return None
    return (
        str(error)
        if error is not None
        else f"checkpoint step {step}: unreadable on another process"
    )


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        path_name(path): tuple(leaf.shape)
        for path, leaf in leaves
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype")
    }


def shape_mismatches(saved: Any, target: Any) -> list[str]:
    """How the arrays of `saved` (e.g. Orbax's metadata tree) differ from `target`'s, one line
    per array: missing on either side, or another shape. Empty when they match. (A dtype
    change alone is not listed: Orbax casts on restore, e.g. float32 -> bfloat16 params.)"""
    saved_shapes, target_shapes = _shapes_by_path(saved), _shapes_by_path(target)
    lines = []
    for name in sorted(saved_shapes.keys() | target_shapes.keys()):
        if name not in target_shapes:
            lines.append(f"{name}: in the checkpoint, not in this run")
        elif name not in saved_shapes:
            lines.append(f"{name}: in this run, not in the checkpoint")
        elif saved_shapes[name] != target_shapes[name]:
            lines.append(
                f"{name}: checkpoint shape {saved_shapes[name]}, this run {target_shapes[name]}"
            )
    return lines


class Checkpointer:
    """Saves and restores (train state, data position) under `<directory>`.

    `directory` is a local folder (made absolute) or a URL Orbax can write to (gs://...), kept
    as given so that checkpoints reach the object store. Call from every host (Orbax
    synchronises them); `close()` waits for pending writes.
    """

    def __init__(self, directory: str | os.PathLike[str], policy: CheckpointPolicy) -> None:
        self.directory = str(absolute_path(directory))
        self.policy = policy
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=policy.keep_last)]
        if policy.keep_best > 0:
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=_best_metric,
                    reverse=False,  # ascending; the last n (highest accuracy) are kept
                    n=policy.keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            # best_fn makes Orbax store `metrics` with a step and rank steps by them; the
            # preservation policy above decides deletion.
            best_fn=_best_metric,
            best_mode="max",
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=policy.async_save,
            # Temporary directories of crashed saves are removed when the manager starts.
            cleanup_tmp_directories=True,
        )
        self._manager = _Manager(
            self.directory,
            # Handlers named up front (not only item names) so that a new process can read a
            # step's array metadata before restoring it.
            item_handlers={
                STATE_ITEM: ocp.StandardCheckpointHandler(),
                DATA_ITEM: ocp.JsonCheckpointHandler(),
            },
            options=options,
        )

    # -- queries -----------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest committed step (temporary directories of crashed saves never count)."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The committed step with the highest validation accuracy, None if none has metrics."""
        steps_with_metrics = [
            step for step in self._manager.all_steps() if self.metrics(step) is not None
        ]
        if not steps_with_metrics:
            return None
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def metrics(self, step: int) -> dict[str, float] | None:
        metrics = self._manager.metrics(step)
        return dict(metrics) if metrics is not None else None

    def step_directory(self, step: int) -> str:
        return str(epath.Path(self.directory) / str(step))

    # -- save / restore ----------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        data_state: Mapping[str, Any],
        *,
        metrics: Mapping[str, float] | None = None,
        evaluation_pending: bool = False,
    ) -> bool:
        """Starts writing `state` and `data_state` as `step`; False if that step already exists.

        metrics: validation metrics with `valid_accuracy` (ranks the step for `keep_best`).
        evaluation_pending: this step's evaluation was interrupted; resume must redo it.
        """
        if step in self._manager.all_steps():
            return False
        if metrics is not None and BEST_METRIC not in metrics:
            raise ValueError(f"checkpoint metrics need {BEST_METRIC!r}, got {sorted(metrics)}")
        args = ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardSave(state),
                DATA_ITEM: ocp.args.JsonSave(_jsonable(dict(data_state))),
            }
        )
        return self._manager.save(
            step,
            args=args,
            metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
            force=True,
            custom_metadata={
                _FINGERPRINTS: fingerprints(state),
                **({_EVALUATION_PENDING: True} if evaluation_pending else {}),
            },
        )

    def replace(
        self,
        step: int,
        state: Any,
        data_state: Mapping[str, Any],
        *,
        metrics: Mapping[str, float] | None = None,
    ) -> bool:
        """Writes `step` again (same state, now with `metrics` and no pending evaluation);
        False, leaving `step` as it is, when it is the only committed step.

        Used once a resumed run has done the evaluation a SIGTERM cut short. The step is
        deleted first, so a crash in between must leave an older committed step to resume from;
        the only checkpoint (keep_checkpoints=1) is never put at risk for a ranking."""
        self._manager.wait_until_finished()
        steps = self._manager.all_steps()
        if step in steps:
            if len(steps) == 1:
                logging.warning(
                    "checkpoint %s is the only one: kept without its validation metrics", step
                )
                return False
            self._manager.delete(step)
        return self.save(step, state, data_state, metrics=metrics)

    def evaluation_pending(self, step: int) -> bool:
        """Whether `step` was saved while its evaluation had been interrupted."""
        return bool(self._custom_metadata(step).get(_EVALUATION_PENDING, False))

    def _custom_metadata(self, step: int) -> dict[str, Any]:
        """The step's custom metadata, read from its step metadata file directly: Orbax's own
        reader returns defaults for a file that does not parse, and would lose the flag."""
        path = epath.Path(self.step_directory(step)) / _STEP_METADATA_FILE
        if not path.exists():  # Orbax writes it with every step (it holds our checksums)
            raise FileNotFoundError(f"{path} is missing")
        metadata = json.loads(path.read_text())
        if not isinstance(metadata, dict):
            raise ValueError(f"{_STEP_METADATA_FILE} is not a JSON object")
        return dict(metadata.get("custom_metadata") or {})

    def _read(self, step: int, item: str, read: Any) -> Any:
        """`read()`, with any failure turned into one line naming the step and the item."""
        try:
            return read()
        except Exception as error:  # Orbax/TensorStore raise many types for unreadable data.
            directory = self.step_directory(step)
            reason = _reason(error).replace(directory + "/", "")  # its files, named once
            raise CorruptCheckpointError(
                f"checkpoint step {step} ({directory}): {item} unreadable: {reason}"
            ) from error

    def restore(self, step: int, abstract_state: Any) -> RestoredCheckpoint:
        """Reads `step` into the shapes, dtypes and shardings of `abstract_state`
        (a pytree of jax.ShapeDtypeStruct with `.sharding`, e.g. from `jax.eval_shape`).

        Every file of the step is read (a damaged one is a damaged write, even where the
        arrays would still load); the first that fails raises CorruptCheckpointError (and the
        reads still in flight then fail again, unawaited: see failed_read_leftovers)."""
        log_failed_read_leftovers()
        if step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"no committed checkpoint for step {step} in {self.directory} "
                f"(committed steps: {self.all_steps()})"
            )
        custom = self._read(
            step, f"step metadata ({_STEP_METADATA_FILE})", lambda: self._custom_metadata(step)
        )
        saved = self._read(
            step,
            f"{STATE_ITEM!r} metadata ({STATE_ITEM}/_METADATA, _sharding, array_metadatas/)",
            lambda: self._manager.item_metadata(step)[STATE_ITEM],
        )
        self._check_shapes(step, saved, abstract_state)
        state = self._read_arrays(step, abstract_state)
        changed = differing(custom.get(_FINGERPRINTS) or {}, fingerprints(state))
        if changed:
            raise CorruptCheckpointError(
                f"checkpoint step {step} ({self.step_directory(step)}): {STATE_ITEM!r} arrays "
                f"({STATE_ITEM}/) differ from what was saved (checksum): {len(changed)} arrays, "
                + ", ".join(changed[:3])
                + (", ..." if len(changed) > 3 else "")
            )
        data_state = self._read(
            step,
            f"{DATA_ITEM!r} iterator position ({DATA_ITEM}/metadata)",
            lambda: self._restore_item(step, DATA_ITEM, ocp.args.JsonRestore()),
        )
        if not isinstance(data_state, dict):
            raise CorruptCheckpointError(
                f"checkpoint step {step} ({self.step_directory(step)}): {DATA_ITEM!r} iterator "
                f"position is not a JSON object: {str(data_state)[:80]!r}"
            )
        if step in self._manager.unreadable_metrics:
            raise CorruptCheckpointError(
                f"checkpoint step {step} ({self.step_directory(step)}): metrics (metrics/metrics) "
                f"unreadable: {self._manager.unreadable_metrics[step]}"
            )
        return RestoredCheckpoint(
            step=step,
            state=state,
            data_state=data_state,
            metrics=self.metrics(step),
            evaluation_pending=bool(custom.get(_EVALUATION_PENDING, False)),
        )

    def _read_arrays(self, step: int, abstract_state: Any) -> Any:
        """The state item. Each process reads its own shards, so one may fail alone: they
        agree first, as the checksums that follow are computed by all of them together."""
        state = error = None
        try:
            state = self._read(
                step,
                f"{STATE_ITEM!r} arrays ({STATE_ITEM}/)",
                lambda: self._restore_item(
                    step, STATE_ITEM, ocp.args.StandardRestore(abstract_state)
                ),
            )
        except CorruptCheckpointError as caught:
            error = caught
        reason = _agreed_failure(step, error)
        if reason is not None:
            raise error or CorruptCheckpointError(reason)
        return state

    def _restore_item(self, step: int, item: str, args: Any) -> Any:
        return self._manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]

    def _check_shapes(self, step: int, saved: Any, abstract_state: Any) -> None:
        mismatches = shape_mismatches(saved, abstract_state) if saved is not None else []
        if not mismatches:
            return
        listed = mismatches[:_MAX_LISTED_MISMATCHES]
        more = len(mismatches) - len(listed)
        raise IncompatibleCheckpointError(
            f"checkpoint {self.step_directory(step)} was written for a different model or "
            f"optimizer than this run's config ({len(mismatches)} arrays differ):\n    "
            + "\n    ".join(listed + ([f"... and {more} more"] if more else []))
            + "\nResume with the config that wrote it (see config.json next to "
            "checkpoints/), or use a new --workdir."
        )

    def restore_latest(self, abstract_state: Any) -> RestoredCheckpoint | None:
        """The newest committed checkpoint that restores, None when the directory holds none.

        Newer steps that do not restore are then moved to `corrupt_checkpoints/` and listed
        in `skipped`. When none restores, CorruptCheckpointError lists them all and nothing is
        moved. (A checkpoint of another model, IncompatibleCheckpointError, is not skipped:
        every step would be.)"""
        failures: list[tuple[int, str]] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            error = None
            try:
                restored = self.restore(step, abstract_state)
            except CorruptCheckpointError as caught:
                error = caught
            reason = _agreed_failure(step, error)  # every process resumes from the same step
            if reason is None:
                skipped = tuple(
                    SkippedCheckpoint(bad, why, self._set_aside(bad)) for bad, why in failures
                )
                return dataclasses.replace(restored, skipped=skipped)
            failures.append((step, reason))
        if failures:
            raise CorruptCheckpointError(
                f"no checkpoint in {self.directory} restores:\n  "
                + "\n  ".join(why for _, why in failures)
                + "\nMove them away to start afresh, or point --workdir elsewhere."
            )
        return None

    def _set_aside(self, step: int) -> str | None:
        """Moves a step that does not restore out of the manager's directory, whole, so that
        neither the retention policy nor the resumed run's save of that step touches it."""
        source = epath.Path(self.step_directory(step))
        aside = epath.Path(self.directory).parent / CORRUPT_SUBDIR
        target = aside / str(step)
        suffix = 1
        while target.exists():
            target, suffix = aside / f"{step}-{suffix}", suffix + 1
        moved: str | None = str(target)
        if jax.process_index() == 0:
            try:
                aside.mkdir(parents=True, exist_ok=True)
                source.rename(target)
            except OSError as error:
                logging.warning("could not move %s to %s: %s", source, target, error)
                moved = None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"sbsd_set_aside_checkpoint_{step}")
        self._manager.reload()
        return moved if step not in self._manager.all_steps() else None

    def wait_until_finished(self) -> None:
        """Blocks until pending asynchronous writes are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_state_arrays(step_directory: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array of a checkpoint's train state as numpy, keyed by its path ('params/...').

    For inspection and comparisons on one host (no target shardings needed).
    """
    path = absolute_path(step_directory) / STATE_ITEM  # a local folder or a URL (gs://...)
    # A checkpoint written by several processes names devices this process lacks: read every
    # array onto one local device instead of the saved sharding.
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as reader:
        tree = reader.restore(path, args=ocp.args.StandardRestore(fallback_sharding=local))
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(key_path): np.asarray(leaf) for key_path, leaf in flat}
