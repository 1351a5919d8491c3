#!/usr/bin/env bash
# Creates (or reuses) the virtual environment and installs the project into it.
#   VENV=<dir>        where the environment lives (default: .venv in the repository)
#   WITH_TESTS=1      also install requirements-test.txt
#   PYTHON=<python>   the interpreter to build it from (default: the first of python3,
#                     python3.13, python3.12, python3.11 that is Python 3.11 or newer)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
is_new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
if [ ! -x "$venv/bin/python" ]; then
  python="${PYTHON:-}"
  if [ -z "$python" ]; then
    for candidate in python3 python3.13 python3.12 python3.11; do
      if command -v "$candidate" >/dev/null && is_new_enough "$candidate"; then
        python="$candidate"
        break
      fi
    done
  fi
  if [ -z "$python" ] || ! is_new_enough "$python"; then
    echo "setup_env.sh: needs Python 3.11 or newer (jax 0.10); found $(python3 --version 2>&1)." >&2
    echo "  Ubuntu 22.04: sudo apt-get install -y python3.11 python3.11-venv; or set PYTHON=..." >&2
    exit 1
  fi
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
reqs=(-r "$root/requirements.txt")
if [ "${WITH_TESTS:-0}" = 1 ]; then reqs+=(-r "$root/requirements-test.txt"); fi
"$venv/bin/python" -m pip install -q "${reqs[@]}"
"$venv/bin/python" -m pip install -q --no-deps -e "$root"
