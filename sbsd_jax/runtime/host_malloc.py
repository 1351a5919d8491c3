"""glibc malloc on transparent huge pages for the training process (Linux).

XLA:CPU allocates a step's temporaries afresh on every execution (~2.2 GB for a packed
T5-small step) and glibc returns large freed blocks to the kernel, so each step faults its
whole working set back in, 4 KiB at a time: ~566,000 page faults per step and 19% of the
process's CPU time in the kernel on 2 cores. With the tunable `glibc.malloc.hugetlb=1`
(glibc >= 2.35) malloc asks for transparent huge pages: ~1,700 faults per step, and the step
takes 2.22 instead of 2.76 s (README, Performance). glibc reads tunables only when a process
starts, so entry points call `restart_with_huge_page_malloc()` first: it re-executes the same
command once with the tunable added. The user's own `glibc.malloc.hugetlb` in GLIBC_TUNABLES
wins (`=0` turns this off), and nothing happens where it cannot help: not glibc, an older
glibc, or transparent huge pages set to `never`. Accelerator hosts gain little (their steps do
not run in host memory) and lose nothing.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
MIN_GLIBC = (2, 35)
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
# Set in the restarted process to what GLIBC_TUNABLES was before (often ""): it stops a second
# restart and lets a benchmark hand child processes the environment it was started with.
ORIGINAL_TUNABLES_VAR = "SBSD_JAX_ORIGINAL_GLIBC_TUNABLES"


def transparent_huge_page_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's THP mode ('always', 'madvise', 'never'), or None where it cannot be read."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def glibc_version() -> tuple[int, ...] | None:
    """(major, minor) of the C library this Python runs on, or None when it is not glibc."""
    library, version = platform.libc_ver()
    if library != "glibc" or not version:
        return None
    try:
        return tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None


def huge_page_tunables(
    environ: Mapping[str, str],
    *,
    thp_mode: str | None,
    glibc: tuple[int, ...] | None,
) -> str | None:
    """The GLIBC_TUNABLES value to restart with, or None when a restart would change nothing."""
    if ORIGINAL_TUNABLES_VAR in environ:
        return None  # this process is the restarted one
    if glibc is None or glibc < MIN_GLIBC or thp_mode not in ("always", "madvise"):
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    names = [item.split("=", 1)[0] for item in current.split(":") if item]
    if "glibc.malloc.hugetlb" in names:
        return None  # the user's own setting wins
    return ":".join(part for part in (current, HUGE_PAGE_TUNABLE) if part)


def original_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment as it was before the restart (for child processes)."""
    env = dict(os.environ if environ is None else environ)
    if ORIGINAL_TUNABLES_VAR in env:
        original = env.pop(ORIGINAL_TUNABLES_VAR)
        if original:
            env["GLIBC_TUNABLES"] = original
        else:
            env.pop("GLIBC_TUNABLES", None)
    return env


def restart_with_huge_page_malloc() -> None:
    """Re-executes this command once with malloc on transparent huge pages; else returns.

    Call it first thing in a `__main__` entry point, before JAX or any thread starts. The
    process keeps its pid, arguments, open files and the rest of its environment.
    """
    tunables = huge_page_tunables(
        os.environ, thp_mode=transparent_huge_page_mode(), glibc=glibc_version()
    )
    if tunables is None or not sys.executable:
        return
    os.environ[ORIGINAL_TUNABLES_VAR] = os.environ.get("GLIBC_TUNABLES", "")
    os.environ["GLIBC_TUNABLES"] = tunables
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
