"""Entry points restart once with glibc malloc on transparent huge pages, where that can help."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from sbsd_jax.runtime import host_malloc
from sbsd_jax.runtime.host_malloc import (
    HUGE_PAGE_TUNABLE,
    ORIGINAL_TUNABLES_VAR,
    huge_page_tunables,
    original_environment,
    transparent_huge_page_mode,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
GLIBC = (2, 36)


def test_the_tunable_is_added_to_the_users_own_tunables():
    assert huge_page_tunables({}, thp_mode="madvise", glibc=GLIBC) == HUGE_PAGE_TUNABLE
    assert huge_page_tunables({"GLIBC_TUNABLES": ""}, thp_mode="always", glibc=GLIBC) == (
        HUGE_PAGE_TUNABLE
    )
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert huge_page_tunables(mine, thp_mode="madvise", glibc=GLIBC) == (
        f"glibc.malloc.arena_max=2:{HUGE_PAGE_TUNABLE}"
    )


@pytest.mark.parametrize(
    ("environ", "thp_mode", "glibc", "why"),
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", GLIBC, "the user's choice"),
        ({"GLIBC_TUNABLES": "a.b=1:glibc.malloc.hugetlb=1"}, "madvise", GLIBC, "already set"),
        ({ORIGINAL_TUNABLES_VAR: ""}, "madvise", GLIBC, "already restarted"),
        ({}, "never", GLIBC, "THP off in the kernel"),
        ({}, None, GLIBC, "no THP (not Linux)"),
        ({}, "madvise", (2, 31), "glibc too old for the tunable"),
        ({}, "madvise", None, "not glibc (musl, macOS)"),
    ],
)
def test_no_restart_where_it_would_change_nothing(environ, thp_mode, glibc, why):
    assert huge_page_tunables(environ, thp_mode=thp_mode, glibc=glibc) is None, why


def test_the_kernels_thp_mode_is_the_bracketed_word(tmp_path):
    mode_file = tmp_path / "enabled"
    mode_file.write_text("always [madvise] never\n")
    assert transparent_huge_page_mode(str(mode_file)) == "madvise"
    mode_file.write_text("garbage\n")
    assert transparent_huge_page_mode(str(mode_file)) is None
    assert transparent_huge_page_mode(str(tmp_path / "missing")) is None


def test_children_get_the_environment_from_before_the_restart():
    restarted = {"GLIBC_TUNABLES": HUGE_PAGE_TUNABLE, ORIGINAL_TUNABLES_VAR: "", "HOME": "/h"}
    assert original_environment(restarted) == {"HOME": "/h"}
    restarted = {
        "GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{HUGE_PAGE_TUNABLE}",
        ORIGINAL_TUNABLES_VAR: "glibc.malloc.arena_max=2",
    }
    assert original_environment(restarted) == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert original_environment({"GLIBC_TUNABLES": "x=1"}) == {"GLIBC_TUNABLES": "x=1"}


RESTARTING_SCRIPT = """
import json, os, sys
sys.path.insert(0, {repo!r})
from sbsd_jax.runtime.host_malloc import restart_with_huge_page_malloc
print("started", os.getpid(), flush=True)
restart_with_huge_page_malloc()
print(json.dumps({{"argv": sys.argv[1:], "pid": os.getpid(),
                  "tunables": os.environ.get("GLIBC_TUNABLES"),
                  "keep": os.environ.get("KEEP_ME")}}))
"""


def test_a_real_process_restarts_once_with_its_arguments_and_environment(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text(RESTARTING_SCRIPT.format(repo=str(REPO)))
    env = {
        k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", ORIGINAL_TUNABLES_VAR)
    }
    env["KEEP_ME"] = "yes"
    result = subprocess.run(
        [sys.executable, str(script), "--flag=1", "positional"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    lines = result.stdout.splitlines()
    report = json.loads(lines[-1])
    assert report["argv"] == ["--flag=1", "positional"]
    assert report["keep"] == "yes"
    expected = huge_page_tunables(
        env,
        thp_mode=transparent_huge_page_mode(),
        glibc=host_malloc.glibc_version(),
    )
    started = f"started {report['pid']}"
    if expected is None:  # this machine cannot use it: the process just carries on
        assert lines[:-1] == [started]
        assert report["tunables"] is None
    else:  # restarted exactly once, in the same process, with the tunable set
        assert lines[:-1] == [started, started]
        assert report["tunables"] == HUGE_PAGE_TUNABLE
