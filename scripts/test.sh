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
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$(nproc)"
(cd "$BUILD_DIR" && ctest --output-on-failure -j "$(nproc)" "$@")
if [ $# -eq 0 ] && [ "${BATON_SANITIZERS:-1}" != 0 ]; then
  bash scripts/sanitize.sh asan
  bash scripts/sanitize.sh tsan
fi
