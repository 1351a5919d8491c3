#!/usr/bin/env bash
# Creates (or reuses) the virtual environment and installs the project into it.
#   VENV=<dir>        where the environment lives (default: .venv in the repository)
#   WITH_TESTS=1      also install requirements-test.txt
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
reqs=(-r "$root/requirements.txt")
if [ "${WITH_TESTS:-0}" = 1 ]; then reqs+=(-r "$root/requirements-test.txt"); fi
"$venv/bin/python" -m pip install -q "${reqs[@]}"
"$venv/bin/python" -m pip install -q --no-deps -e "$root"
