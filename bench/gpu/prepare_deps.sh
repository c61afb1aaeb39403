#!/usr/bin/env bash
# Copies the header-only and source dependencies that the GPU machine lacks into .device/
# (git-ignored; name it in the device tool's `carry`): nlohmann/json headers, GoogleTest sources.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh >/dev/null
rm -rf .device && mkdir -p .device/include
cp -r /usr/include/nlohmann .device/include/
cp -r /usr/src/googletest .device/googletest
du -sh .device
