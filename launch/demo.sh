#!/usr/bin/env bash
# The README's main-job command: set up the environment (once) and run the embedded demo
# (synthetic multi-step arithmetic, tiny T5 from scratch, standard fine-tuning vs distilling
# step-by-step) on the CPU. Extra arguments go to the demo, e.g. --workdir=/tmp/demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
VENV="$venv" bash "$root/launch/setup_env.sh"
cd "$root"
exec "$venv/bin/python" -m sbsd_jax.experiments.demo "$@"
