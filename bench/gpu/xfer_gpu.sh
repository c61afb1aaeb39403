#!/usr/bin/env bash
# On the lent GPU machine (device tool, carry .device from bench/gpu/prepare_deps.sh): builds the
# transfer engine alone, runs its tests (GPU test included) and the cuda_ipc benchmark against
# an in-process cudaMemcpy of the same sizes, then the same reads staged over TCP (as between
# hosts). Results go to $OUT (or ./out).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi -L | tee "$OUT/gpu.txt"
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DBATON_XFER_ONLY=ON -DBATON_DEPS_DIR="$PWD/.device" \
  -DBATON_NATIVE=OFF > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" > "$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -40; exit 1; }
./build-gpu/tests/xfer_test --gtest_filter='CudaIpc*:*XferTest*/0' 2>&1 | grep -v "UCX  WARN\|mpool" | tee "$OUT/xfer_test.log" | grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) "
./build-gpu/apps/baton-bench xfer --cuda --sizes 16384,262144,1048576,4194304,16777216,67108864 --batches 1,16,128 \
  --json "$OUT/xfer_cuda.json" 2>&1 | tee "$OUT/xfer_cuda.txt"
# GPU memory between hosts without cuda_ipc: the same reads over TCP, staged through pinned host
# buffers on both sides (here on one host, over loopback).
./build-gpu/apps/baton-bench xfer --cuda --transport tcp --sizes 16384,1048576,16777216 --batches 1,16,128 \
  --json "$OUT/xfer_cuda_staged.json" 2>&1 | tee "$OUT/xfer_cuda_staged.txt"
