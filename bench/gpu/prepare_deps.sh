#!/usr/bin/env bash
# Copies the dependencies that the GPU machine lacks into .device/ (git-ignored; name it in the
# device tool's `carry`): nlohmann/json headers, GoogleTest sources, and PCRE2 and ICU headers with
# their static libraries (the tokenizer's regex and normalization), and the small test models: ~52 MB.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh >/dev/null
rm -rf .device && mkdir -p .device/include .device/lib
cp -r /usr/include/nlohmann .device/include/
cp -r /usr/src/googletest .device/googletest
cp /usr/include/pcre2.h .device/include/
cp -r /usr/include/unicode .device/include/
cp /usr/lib/x86_64-linux-gnu/libpcre2-8.a /usr/lib/x86_64-linux-gnu/libicuuc.a /usr/lib/x86_64-linux-gnu/libicudata.a \
  .device/lib/
# The test models the CUDA tests compare with (BATON_MODELS_DIR), without the tokenizer-only dirs.
mkdir -p .device/models
cp -r ../shared/models/goldens.json ../shared/models/stories260k ../shared/models/tiny-* .device/models/
du -sh .device
