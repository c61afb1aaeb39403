#!/usr/bin/env bash
# On the lent GPU machine (carry .device from bench/gpu/prepare_deps.sh): configures and builds
# baton into build-gpu/, the servers from the carried Boost headers and ZeroMQ. Logs go to $OUT.
# BUILD_DIR, CMAKE_EXTRA (more -D options) and BUILD_TARGET (targets, space-separated) build something else, e.g.
# cuda.sh stamps' instrumented baton-bench.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
NCCL_INC=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "include"))' 2>/dev/null || true)
# The servers build from the carried Boost headers and ZeroMQ (bench/gpu/prepare_deps.sh).
SERVERS=OFF
if [ -f .device/boost.tar.xz ]; then
  [ -d .device/boost-include ] || { mkdir -p .device/boost-include && tar -xJf .device/boost.tar.xz -C .device/boost-include; }
  SERVERS=ON
fi
[ ! -f .device/ucx.tar.xz ] || [ -d .device/ucx ] || tar -xJf .device/ucx.tar.xz -C .device
DIR=${BUILD_DIR:-build-gpu}
cmake -S . -B "$DIR" -DCMAKE_BUILD_TYPE=Release -DBATON_SERVERS=$SERVERS -DBATON_DEPS_DIR="$PWD/.device" \
  -DBATON_NATIVE=OFF -DBATON_BUILD_BENCH=OFF ${NCCL_INC:+-DNCCL_INCLUDE_DIR=$NCCL_INC} ${CMAKE_EXTRA:-} > "$OUT/cmake.log" 2>&1 ||
  { tail -30 "$OUT/cmake.log"; exit 1; }
cmake --build "$DIR" -j "$(nproc)" ${BUILD_TARGET:+--target $BUILD_TARGET} -- -k > "$OUT/build.log" 2>&1 ||
  { grep -E ": error|error:" "$OUT/build.log" | sort -u | head -40; exit 1; }
grep -i "nccl" "$OUT/cmake.log" || true
