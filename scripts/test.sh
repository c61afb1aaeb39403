#!/usr/bin/env bash
# Installs what is missing, builds (Release, assertions on) and runs every test with ctest, then
# the sanitizer runs (scripts/sanitize.sh: ASan+UBSan, TSan).
#   scripts/test.sh                        # everything (what CI runs)
#   scripts/test.sh -R goldens             # ctest arguments pass through (no sanitizer runs then)
#   BATON_SANITIZERS=0 scripts/test.sh     # skip the sanitizer builds
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
SANITIZERS=0
[ $# -eq 0 ] && [ "${BATON_SANITIZERS:-1}" != 0 ] && SANITIZERS=1
# The fuzz corpora replay in the ASan build when it runs (scripts/sanitize.sh), else here.
CORPUS=ON
[ "$SANITIZERS" = 1 ] && CORPUS=OFF
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBATON_CORPUS_TESTS=$CORPUS
cmake --build "$BUILD_DIR" -j "$(nproc)"
(cd "$BUILD_DIR" && ctest --output-on-failure -j "$(nproc)" "$@")
if [ "$SANITIZERS" = 1 ]; then
  bash scripts/sanitize.sh asan
  bash scripts/sanitize.sh tsan
fi
