#!/usr/bin/env bash
# Installs what is missing, builds (Release, assertions on) and runs every test with ctest, then
# the sanitizer runs (scripts/sanitize.sh: ASan+UBSan, TSan).
#   scripts/test.sh                        # everything (what CI runs)
#   scripts/test.sh -R goldens             # ctest arguments pass through (no sanitizer runs then)
#   BATON_SANITIZERS=0 scripts/test.sh     # skip the sanitizer builds
set -euo pipefail
cd "$(dirname "$0")/.."
# Per-phase wall time, printed at the end whether the run passes or fails (scripts/sanitize.sh
# appends its build and test phases to the same log).
export BATON_PHASE_LOG=${BATON_PHASE_LOG:-$(mktemp)}
: > "$BATON_PHASE_LOG"
source scripts/phase.sh
summary() {
  echo "== test.sh phases"
  cat "$BATON_PHASE_LOG"
  printf '%-24s %5d s\n' total $SECONDS
}
trap summary EXIT
# UCX patches mmap and seven other functions when it loads and then waits 50 ms after each patch
# for other threads to leave them; at load there are none, so in every process of the suite that
# links UCX (each gtest case is one) that is 0.4 s of CPU for nothing (150-250 CPU seconds a run).
export UCX_MEM_BISTRO_GRACE_DURATION=${UCX_MEM_BISTRO_GRACE_DURATION:-0us}
phase setup bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
SANITIZERS=0
[ $# -eq 0 ] && [ "${BATON_SANITIZERS:-1}" != 0 ] && SANITIZERS=1
# The fuzz corpora replay in the ASan build when it runs (scripts/sanitize.sh), else here.
CORPUS=ON
[ "$SANITIZERS" = 1 ] && CORPUS=OFF
phase "release configure" cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBATON_CORPUS_TESTS=$CORPUS
phase "release build" cmake --build "$BUILD_DIR" -j "$(nproc)"
# clang-tidy (.clang-tidy's checks) on the C++ sources the last commit touched.
phase tidy bash scripts/tidy.sh "$BUILD_DIR"
seed_costs "$BUILD_DIR" release
phase "release tests" ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" "$@"
if [ "$SANITIZERS" = 1 ]; then
  bash scripts/sanitize.sh asan
  bash scripts/sanitize.sh tsan
fi
