#!/usr/bin/env bash
# The README's test command: set up the environment (once) and run the whole suite on CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
WITH_TESTS=1 VENV="$venv" bash "$root/launch/setup_env.sh"
cd "$root"
set +e
# Two pytest-xdist workers (SBSD_TEST_WORKERS; 0 runs in this process), each given whole test
# files: a file's module fixtures (a trained run its tests read) run once, in one worker.
"$venv/bin/python" -m pytest -n "${SBSD_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: treating as failure" >&2
  exit 1
fi
exit "$rc"
