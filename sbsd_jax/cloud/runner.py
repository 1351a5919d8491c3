"""Runs the launcher's commands, or under --dry_run prints each one shell-quoted and runs none.

Every real command is echoed to stderr first (`+ gcloud ...`, as `set -x` would), so a log of
a long watch says exactly what was done to the slice and when.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TextIO


class LauncherError(Exception):
    """A step cannot go on (a command failed, a limit was reached): one line for the user."""


@dataclasses.dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str = ""
    stderr: str = ""


def shell_line(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The command as one line a POSIX shell runs as is: `VAR=value cmd 'arg with space'`."""
    assignments = [f"{name}={shlex.quote(value)}" for name, value in (env or {}).items()]
    return " ".join([*assignments, shlex.join(argv)])


class Runner:
    """Runs commands (or prints them, dry_run); thread-safe, for several slices at once."""

    def __init__(
        self, *, dry_run: bool = False, out: TextIO | None = None, log: TextIO | None = None
    ) -> None:
        self.dry_run = dry_run
        self._out = out or sys.stdout
        self._log = log or sys.stderr
        self._lock = threading.Lock()

    def note(self, text: str) -> None:
        """A remark: a `# comment` line in a dry run's script, a log line otherwise."""
        with self._lock:
            if self.dry_run:
                print(f"# {text}", file=self._out, flush=True)
            else:
                print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self._log, flush=True)

    def run(
        self,
        argv: Sequence[str],
        *,
        capture: bool = False,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Result:
        """Runs argv (output captured or passed through); check: a failure raises
        LauncherError naming the command. A dry run prints the line and returns success."""
        line = shell_line(argv, env)
        if self.dry_run:
            with self._lock:
                print(line, file=self._out, flush=True)
            return Result(0)
        with self._lock:
            print(f"+ {line}", file=self._log, flush=True)
        try:
            completed = subprocess.run(
                list(argv),
                capture_output=capture,
                text=True,
                env={**os.environ, **env} if env else None,
                cwd=cwd,
                check=False,
            )
        except FileNotFoundError as error:
            raise LauncherError(
                f"{argv[0]}: not found on PATH"
                + (
                    " (install the Google Cloud CLI: cloud.google.com/sdk)"
                    if argv[0] == "gcloud"
                    else ""
                )
            ) from error
        result = Result(completed.returncode, completed.stdout or "", completed.stderr or "")
        if check and result.returncode != 0:
            detail = error_line(result.stderr)
            raise LauncherError(
                f"exit status {result.returncode}: {line}" + (f"\n  {detail}" if detail else "")
            )
        return result


def error_line(text: str) -> str:
    """The line of a command's stderr worth showing: gcloud's `ERROR: ...` line, else the last
    non-empty one; '' when there is none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or [""])[0 if errors else -1]
