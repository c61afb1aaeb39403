#!/usr/bin/env bash
# Where the one-kernel decode step's weight stream stalls (src/backend/cuda/mega.cu): builds only
# baton-bench, then runs it with BATON_CUDA_MEGA_PROBE (1: the ring streams the weights and nothing
# else; 2: plus the sums) and prints each run's per-layer timeline (bench/gpu/mega_times.py).
# PROBE_RUNS: ';'-separated "MODEL ENV..." entries. Output on stdout and in $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
mkdir -p "$OUT"
T0=$(date +%s)
BUILD_TARGET=baton-bench bash bench/gpu/build.sh || exit 1
echo "build: $(( $(date +%s) - T0 )) s"
MODELS=/tmp/baton-models
python3 bench/gpu/hf_reference.py make "$MODELS" > /dev/null 2>&1
IFS=';' read -r -a runs <<< "${PROBE_RUNS:-llama3.2-1b BATON_CUDA_MEGA_PROBE=1}"
i=0
for run in "${runs[@]}"; do
  read -r m cfg <<< "$run"
  i=$((i + 1))
  echo "== $m $cfg" | tee -a "$OUT/probe.txt"
  env BATON_CUDA_MEGA=1 BATON_CUDA_MEGA_TIMES=/tmp/probe$i.bin $cfg timeout 60 ./build-gpu/apps/baton-bench model \
    --model "$MODELS/$m" --device cuda --kv-cache-dtype bf16 --gen-batches "" --batches 1 --prefill 16 2>&1 |
    grep "decode batch" | tee -a "$OUT/probe.txt"
  python3 bench/gpu/mega_times.py /tmp/probe$i.bin 2>&1 | tee -a "$OUT/probe.txt"
done
echo "total: $(( $(date +%s) - T0 )) s"
