#!/usr/bin/env bash
# Launch a training run on every worker of a Cloud TPU VM slice (single- or multi-host).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b \
#   bash launch/tpu_vm.sh configs/cqa.py gs://my-bucket/runs/cqa_base --config.model=t5_v1_1_large
#
# Every worker gets the same repository revision (rsync'd from here), installs the pinned
# requirements plus jax[tpu], and runs `python -m sbsd_jax.main`. On a multi-host slice
# JAX discovers its peers itself (jax.distributed.initialize() with no arguments on TPU),
# which sbsd_jax.main does when it sees more than one worker.
set -euo pipefail
config="${1:?usage: tpu_vm.sh CONFIG WORKDIR [--config.field=value ...]}"
workdir="${2:?usage: tpu_vm.sh CONFIG WORKDIR [--config.field=value ...]}"
shift 2
: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
project_flag=()
if [ -n "${PROJECT:-}" ]; then project_flag=(--project="$PROJECT"); fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jax_version="$(sed -n 's/^jax==//p' "$root/requirements.txt")"
remote_dir='~/sbsd-jax'

tpu_ssh() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" \
    --worker=all --command="$1"
}

# 1. Ship the code (no data, no checkpoints) to every worker.
tar -C "$root" --exclude=.git --exclude=.venv --exclude='__pycache__' -czf /tmp/sbsd-jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/sbsd-jax.tgz "$TPU_NAME":/tmp/sbsd-jax.tgz \
  --zone="$ZONE" "${project_flag[@]}" --worker=all
# 2. Install once per worker (idempotent), then train. TensorFlow (input pipeline only) is
#    kept off the TPU by sbsd_jax.data.tensorflow_runtime. TPU VM images based on Ubuntu
#    22.04 ship Python 3.10; JAX needs 3.11+, so python3.11 comes from apt where missing.
#    Every argument is shell-quoted for the remote shell (e.g. --config.eval_splits='("test",)').
train_args="$(printf '%q ' "--config=$config" "--workdir=$workdir" "$@")"
tpu_ssh "mkdir -p $remote_dir && tar -C $remote_dir -xzf /tmp/sbsd-jax.tgz && cd $remote_dir && \
  { python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || command -v python3.11 \
    || { sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv; }; } && \
  bash launch/setup_env.sh && .venv/bin/pip install -q 'jax[tpu]==$jax_version' && \
  .venv/bin/python -m sbsd_jax.main $train_args"
