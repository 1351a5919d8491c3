"""The leftovers of a failed asynchronous checkpoint read go to the log; everything else that
Python would print as unraisable or never retrieved is printed as before."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

import pytest

from sbsd_jax.train.failed_read_leftovers import log_failed_read_leftovers

# A coroutine compiled as if it were Orbax's, that raises while it is closed (as Orbax's array
# reads do when the collector closes them after their loop stopped).
_ORBAX_LIKE_SOURCE = """
async def read_shard(wait):
    try:
        await wait
    except GeneratorExit:
        raise Exception("Encountered error while reading array index")
"""
_ORBAX_LIKE_FILE = "/site-packages/orbax/checkpoint/_src/serialization/serialization.py"


class _DeliversToAClosedLoop:
    """Collected, it hands a completion to a closed event loop, as TensorStore's threads do."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.close()

    def __del__(self) -> None:
        self.loop.call_soon_threadsafe(print)


class _RaisesWhenCollected:
    def __del__(self) -> None:
        raise ValueError("a real bug in a finaliser")


@pytest.fixture
def printed(monkeypatch) -> list[BaseException]:
    """What reaches the previous unraisable hook (Python's default prints it)."""
    seen: list[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_value))
    log_failed_read_leftovers()
    log_failed_read_leftovers()  # idempotent: one wrapper
    return seen


def test_a_completion_delivered_to_a_closed_loop_is_not_printed(printed):
    leftover = _DeliversToAClosedLoop()
    del leftover
    gc.collect()
    assert printed == []


def test_an_orbax_coroutine_that_raises_while_closed_is_not_printed(printed):
    namespace: dict = {}
    exec(compile(_ORBAX_LIKE_SOURCE, _ORBAX_LIKE_FILE, "exec"), namespace)
    loop = asyncio.new_event_loop()
    coroutine = namespace["read_shard"](loop.create_future())
    coroutine.send(None)  # suspended at its await, as an abandoned read is
    del coroutine
    gc.collect()
    loop.close()
    assert printed == []


def test_other_unraisable_exceptions_are_printed_as_before(printed):
    bug = _RaisesWhenCollected()
    del bug
    gc.collect()
    assert [str(error) for error in printed] == ["a real bug in a finaliser"]


def test_only_never_retrieved_tensorstore_errors_leave_the_console(caplog):
    log_failed_read_leftovers()
    loop = asyncio.new_event_loop()
    for message in (
        'DATA_LOSS: Error reading "params/.zarray" [tensorstore_spec=\'{"driver": "zarr"}\']',
        "an unrelated error",
    ):
        future = loop.create_future()
        future.set_exception(ValueError(message))
        del future
    gc.collect()
    loop.close()
    never_retrieved = [
        record.exc_info[1]
        for record in caplog.records
        if record.levelno >= logging.ERROR and record.exc_info
    ]
    assert [str(error) for error in never_retrieved] == ["an unrelated error"]
