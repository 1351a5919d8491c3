#!/usr/bin/env bash
# Train on a GPU host (one process drives all local GPUs):
#   bash launch/gpu_host.sh configs/cqa.py /data/runs/cqa_base --config.model=t5_v1_1_large
# For several GPU hosts, run the same command on each with
#   SBSD_COORDINATOR=host0:1234 SBSD_NUM_PROCESSES=N SBSD_PROCESS_ID=i
# which sbsd_jax.main passes to jax.distributed.initialize.
set -euo pipefail
config="${1:?usage: gpu_host.sh CONFIG WORKDIR [--config.field=value ...]}"
workdir="${2:?usage: gpu_host.sh CONFIG WORKDIR [--config.field=value ...]}"
shift 2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jax_version="$(sed -n 's/^jax==//p' "$root/requirements.txt")"
bash "$root/launch/setup_env.sh"
"$root/.venv/bin/pip" install -q "jax[cuda13]==$jax_version"
cd "$root"
exec .venv/bin/python -m sbsd_jax.main --config="$config" --workdir="$workdir" "$@"
