#!/usr/bin/env bash
# On the lent GPU machine (device tool, carry .device from bench/gpu/prepare_deps.sh): builds the
# transfer engine alone, runs its tests (GPU test included) and the cuda_ipc benchmark against
# an in-process cudaMemcpy of the same sizes, then the same reads staged over TCP (transport tcp).
# Results go to $OUT (or ./out). GPU memory through UCX: bench/gpu/ucx_gpu.sh.
#   bash bench/gpu/xfer_gpu.sh
#   PATCH=bench/gpu/experiments/SOME.patch bash bench/gpu/xfer_gpu.sh
#       also builds a copy of the tree with PATCH applied and runs the single-range and batch-of-16
#       cuda_ipc reads with both binaries, alternated (ROUNDS=3), after its tests
# The build goes to build-gpu-xfer/ (BUILD_DIR), beside cuda.sh's full build-gpu/.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
BUILD=${BUILD_DIR:-build-gpu-xfer}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi -L | tee "$OUT/gpu.txt"
[ ! -f .device/ucx.tar.xz ] || [ -d .device/ucx ] || tar -xJf .device/ucx.tar.xz -C .device
build() {  # build SRC_DIR BUILD_DIR
  cmake -S "$1" -B "$2" -DCMAKE_BUILD_TYPE=Release -DBATON_XFER_ONLY=ON -DBATON_DEPS_DIR="$PWD/.device" \
    -DBATON_NATIVE=OFF > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
  cmake --build "$2" -j "$(nproc)" > "$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -40; exit 1; }
}
build . "$BUILD"
"./$BUILD/tests/xfer_test" --gtest_filter='CudaIpc*:*XferTest*/0:XferTimeoutTest*' 2>&1 | grep -v "UCX  WARN\|mpool" |
  tee "$OUT/xfer_test.log" | grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) "
if [ -n "${PATCH:-}" ]; then
  EXP=/tmp/baton-xfer-patched
  rm -rf "$EXP" && mkdir -p "$EXP"
  cp -r CMakeLists.txt src apps tests bench scripts "$EXP/"
  ROOT=$PWD
  (cd "$EXP" && git apply "$ROOT/$PATCH")
  build "$EXP" "$EXP/build"
  "$EXP/build/tests/xfer_test" --gtest_filter='CudaIpc*' 2>&1 | grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) |Failure" |
    sed 's/^/patched: /' | tee "$OUT/xfer_test_patched.log"
  for round in $(seq "${ROUNDS:-3}"); do
    for which in "$BUILD" "$EXP/build"; do
      echo "## round $round: $which"
      "$which/apps/baton-bench" xfer --cuda --sizes 16384,1048576,16777216 --batches 1,16 2>&1 | grep -E "^\|"
    done
  done | tee "$OUT/xfer_cuda_patch_ab.txt"
  exit 0
fi
"./$BUILD/apps/baton-bench" xfer --cuda --sizes 16384,262144,1048576,4194304,16777216,67108864 --batches 1,16,128 \
  --json "$OUT/xfer_cuda.json" 2>&1 | tee "$OUT/xfer_cuda.txt"
# transport tcp: the same reads over TCP, staged through pinned host buffers on both sides (here
# on one host, over loopback).
"./$BUILD/apps/baton-bench" xfer --cuda --transport tcp --sizes 16384,1048576,16777216 --batches 1,16,128 \
  --json "$OUT/xfer_cuda_staged.json" 2>&1 | tee "$OUT/xfer_cuda_staged.txt"
