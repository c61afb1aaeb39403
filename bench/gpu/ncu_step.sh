#!/usr/bin/env bash
# Kernel by kernel, in isolation, with Nsight Compute (ncu, present on the lent GPU machine): the
# duration and DRAM bytes of every kernel of a few decode steps, summed per kernel name.
#   bash bench/gpu/ncu_step.sh MODEL_DIR [BATCH]   (after bench/gpu/build.sh)
# KERNELS=regex:. takes every kernel (cuBLAS's too: batches above 4), LAUNCHES how many (one step's
# worth, after skipping as many).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$1
BATCH=${2:-1}
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
# The decode step's kernels only (skipping the first two steps' worth), caches flushed before each.
"$NCU" --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --print-units base --graph-profiling node \
  -k "${KERNELS:-regex:gemv|decode_kernel|embed}" --launch-skip "${LAUNCHES:-250}" --launch-count "${LAUNCHES:-250}" \
  ./build-gpu/apps/baton-bench model --model "$MODEL" --device cuda --batches "$BATCH" --steps 8 --prefill 16 \
  --gen-batches "" 2>/dev/null | python3 bench/gpu/ncu_sum.py
