#!/usr/bin/env bash
# Installs what is missing, builds (Release, assertions on) and runs every test with ctest.
#   scripts/test.sh            # everything
#   scripts/test.sh -R goldens # ctest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$(nproc)"
cd "$BUILD_DIR"
ctest --output-on-failure -j "$(nproc)" "$@"
