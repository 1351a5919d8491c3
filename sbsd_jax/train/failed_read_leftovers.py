"""What a failed Orbax read leaves behind goes to the log, not to the user's console.

When one array of a damaged checkpoint fails to read, Orbax's event loop stops with that error
(which the checkpoint store reports in one line) while TensorStore still finishes the other
reads. Their completions then arrive at a closed loop, their coroutines are closed when
collected, and their errors were never awaited: Python prints each as a traceback, tens to
hundreds of lines for one bad file, at moments that depend on the collector. They repeat the
failure already reported and change nothing, so once a checkpoint is read they are logged at
debug level; every other unraisable exception and asyncio error is printed as before.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import traceback
from typing import Any

_LOOP_CLOSED = "Event loop is closed"
_NEVER_RETRIEVED = "exception was never retrieved"


def is_failed_read_leftover(unraisable: Any) -> bool:
    """An unraisable exception left by an abandoned asynchronous read: a completion delivered
    to Orbax's closed event loop, or an Orbax coroutine that raised while being closed."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == _LOOP_CLOSED:
        frames = traceback.extract_tb(unraisable.exc_traceback)
        return any(frame.name == "call_soon_threadsafe" for frame in frames)
    subject = unraisable.object
    return inspect.iscoroutine(subject) and "orbax" in subject.cr_code.co_filename


class _NeverRetrievedReadError(logging.Filter):
    """asyncio's 'Task exception was never retrieved' for a TensorStore read error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _NEVER_RETRIEVED not in record.getMessage() or not record.exc_info:
            return True
        error = record.exc_info[1]
        if "tensorstore" not in str(error).lower() and "TensorStore" not in repr(error):
            return True
        logging.getLogger(__name__).debug("left over from a failed read: %s", error)
        return False


class _UnraisableHook:
    """sys.unraisablehook that logs failed-read leftovers and passes the rest on."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        if is_failed_read_leftover(unraisable):
            logging.getLogger(__name__).debug(
                "left over from a failed read: %r", unraisable.exc_value
            )
            return
        self.previous(unraisable)


_ASYNCIO_FILTER = _NeverRetrievedReadError()


def log_failed_read_leftovers() -> None:
    """From now on, the leftovers of failed reads go to the log (idempotent)."""
    if not isinstance(sys.unraisablehook, _UnraisableHook):
        sys.unraisablehook = _UnraisableHook(sys.unraisablehook)
    asyncio_logger = logging.getLogger(asyncio.log.logger.name)
    if _ASYNCIO_FILTER not in asyncio_logger.filters:
        asyncio_logger.addFilter(_ASYNCIO_FILTER)
