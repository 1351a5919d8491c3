#!/usr/bin/env bash
# Runs on every worker of a TPU slice (started by `python -m sbsd_jax.cloud run` / `watch` over
# ssh, from the worker's copy of the repository): install, then train in the foreground.
#
#   bash launch/tpu_worker.sh --config=CONFIG --workdir=gs://... [--config.field=value ...]
#
# The trainer's output is appended to ~/sbsd-jax-train.log (what `sbsd_jax.cloud logs` follows)
# and streamed to this ssh session. A trainer left running by an earlier session (an ssh
# connection that dropped) is sent SIGTERM, which checkpoints, and waited for before this one
# starts, so two never share the chips. The exit status is the trainer's.
#   SBSD_TRAIN_LOG   the log file (default ~/sbsd-jax-train.log)
#   SBSD_SKIP_INSTALL=1   skip the environment set-up (tests)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log="${SBSD_TRAIN_LOG:-$HOME/sbsd-jax-train.log}"
pidfile="$log.pid"
cd "$root"
if [ "${SBSD_SKIP_INSTALL:-0}" != 1 ]; then
  # TPU VM images based on Ubuntu 22.04 ship Python 3.10; JAX needs 3.11+.
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || command -v python3.11 >/dev/null \
    || { sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv; }
  bash launch/setup_env.sh
  .venv/bin/pip install -q "jax[tpu]==$(sed -n 's/^jax==//p' requirements.txt)"
fi
# A live trainer of ours (an exited one has no command line left, even as a zombie).
is_trainer() { grep -q sbsd_jax.main "/proc/$1/cmdline" 2>/dev/null; }
earlier="$(cat "$pidfile" 2>/dev/null || true)"
if [ -n "$earlier" ] && is_trainer "$earlier"; then
  echo "tpu_worker.sh: stopping the earlier trainer (pid $earlier) first" >&2
  kill -TERM "$earlier"
  while is_trainer "$earlier"; do sleep 1; done
fi
echo "=== $(date -u +%FT%TZ) $(hostname): python -m sbsd_jax.main $*" >>"$log"
start=$(($(stat -c %s "$log") + 1))  # stream this run's lines only
.venv/bin/python -m sbsd_jax.main "$@" >>"$log" 2>&1 &
trainer=$!
echo "$trainer" >"$pidfile"
tail -c "+$start" -F --pid="$trainer" "$log" 2>/dev/null &
status=0
wait "$trainer" || status=$?
rm -f "$pidfile"
sleep 1  # let tail print the last lines
exit "$status"
