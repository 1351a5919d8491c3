#!/usr/bin/env bash
# The GPU figures of the README in one run: training throughput (t5_v1_1_base at the paper's
# batch with the PyTorch reference on the same GPU, t5_v1_1_large at a saturating packed batch)
# with MFU, bf16 parity of our T5 with transformers', and the decoding benchmark.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]                   # a GPU host, jax[cuda13] installed
#   bash benchmarks/gpu_suite.sh --cpu_rehearsal [OUT_DIR]   # every piece end to end, tiny, CPU
#
# The GPU host needs the environment of launch/gpu_host.sh (jax[cuda13]) and ../shared/bench,
# ../shared/data (CQA, the SentencePiece model); OUT_DIR defaults to $OUT, then /tmp/gpu_suite.
#
# Each piece runs under its own time limit and logs to OUT_DIR/<piece>.log; a failing piece is
# recorded in OUT_DIR/status.txt and the next one still runs, so one device session gives every
# figure it can (PIECE_LIMIT_S, default 200 s on a GPU). PEAK_TFLOPS (default: 989, H100/H200 SXM bf16 dense) sets the MFU denominator.
set -uo pipefail
cd "$(dirname "$0")/.."

REHEARSAL=0
if [[ "${1:-}" == "--cpu_rehearsal" ]]; then
  REHEARSAL=1
  shift
fi
OUT_DIR="${1:-${OUT:-/tmp/gpu_suite}}"
PYTHON="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT_DIR"
: > "$OUT_DIR/status.txt"

if (( REHEARSAL )); then
  DEVICE=(--device=cpu --ref_device=cpu)
  PEAK="${PEAK_TFLOPS:-1}"
  BASE=(--size=tiny --batch_size=8 --rows=8 --steps=2 --ref_steps=2 --warmup=1 --examples=200)
  LARGE=(--size=tiny --rows=16 --steps=2 --warmup=1 --examples=200 --skip_reference)
  PARITY=(--size=tiny --batch=2)
  DECODE=(--size=tiny --batch_sizes=1,4 --rounds=1 --new_tokens=8)
  LIMIT=600
else
  DEVICE=(--device=gpu --ref_device=cuda)
  PEAK="${PEAK_TFLOPS:-989}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu.txt" || true
  # The paper's batch (64 examples: ~32 packed 256-token rows); large at 128 rows.
  BASE=(--size=base --batch_size=64 --rows=32 --steps=10 --ref_steps=10 --warmup=3 --ref_bf16)
  LARGE=(--size=large --rows=128 --steps=10 --warmup=3 --examples=4000 --skip_reference)
  PARITY=(--size=base --batch=16)
  DECODE=(--size=small --batch_sizes=1,64 --rounds=3)
  LIMIT="${PIECE_LIMIT_S:-200}"  # 4 pieces fit a 15-minute device lease
fi

run() {  # run NAME COMMAND...: time-limited, logged, status recorded
  local name="$1"
  shift
  echo "== $name: $*" | tee -a "$OUT_DIR/status.txt"
  local start=$SECONDS
  timeout "$LIMIT" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "   $name exit $rc in $((SECONDS - start)) s" | tee -a "$OUT_DIR/status.txt"
  tail -n 4 "$OUT_DIR/$name.log"
}

run train_base "$PYTHON" benchmarks/train_throughput.py "${BASE[@]}" "${DEVICE[@]}" \
  --compute_dtype=bfloat16 --peak_tflops="$PEAK"
run train_large "$PYTHON" benchmarks/train_throughput.py "${LARGE[@]}" "${DEVICE[@]}" \
  --compute_dtype=bfloat16 --remat_policy=none --peak_tflops="$PEAK"
run bf16_parity "$PYTHON" benchmarks/gpu_parity.py "${PARITY[@]}" "${DEVICE[@]}"
run decode "$PYTHON" benchmarks/decode_throughput.py "${DECODE[@]}" "${DEVICE[@]}" \
  --json="$OUT_DIR/decode.json"
echo "logs in $OUT_DIR"
