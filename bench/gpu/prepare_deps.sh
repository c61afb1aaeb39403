#!/usr/bin/env bash
# Copies the dependencies that the GPU machine lacks into .device/ (git-ignored; name it in the
# device tool's `carry`): nlohmann/json headers, GoogleTest sources, PCRE2 and ICU headers with
# their static libraries (the tokenizer's regex and normalization), Boost headers (packed) and
# ZeroMQ for the servers, UCX, and the small test models: ~60 MB.
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
# baton-server and baton-proxy: the Boost headers that Asio and Beast pull in (found by asking the
# compiler, plus the whole of asio/beast/config/system/mp11), packed (~1 MB), and ZeroMQ's shared
# library with the libraries it needs (Debian's; found through the build's rpath there).
for f in $(grep -rlE "boost/|server/|proxy/|zmq.h|disagg/" src apps tests --include=*.cpp); do
  g++ -std=c++20 -M -DBOOST_ASIO_SEPARATE_COMPILATION -DBOOST_BEAST_SEPARATE_COMPILATION -Isrc -I. $f 2>/dev/null
done | tr ' \\' '\n\n' | grep -E "^/usr/include/boost/" | sed 's#^/usr/include/##' > .device/boost.list
(cd /usr/include && find boost/asio boost/beast boost/config boost/system boost/mp11 -type f) >> .device/boost.list
sort -u -o .device/boost.list .device/boost.list
tar -cJf .device/boost.tar.xz -C /usr/include -T .device/boost.list && rm .device/boost.list
mkdir -p .device/zmq
cp /usr/include/zmq.h .device/zmq/
for lib in $(ldd /usr/lib/x86_64-linux-gnu/libzmq.so.5 | awk '/=>/ {print $3}' | grep -vE "/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libresolv|libdl|librt)\.so"); do
  cp -L "$lib" .device/zmq/
done
cp -L /usr/lib/x86_64-linux-gnu/libzmq.so.5 .device/zmq/
# UCX (scripts/ucx_dir.sh's prefix, real files: headers, CUDA- and verbs-capable libraries,
# ucx_perftest), packed (~4 MB); bench/gpu/build.sh unpacks it to .device/ucx.
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
bash scripts/ucx_dir.sh "$site" /tmp/baton-device-ucx/ucx --copy
tar -cJf .device/ucx.tar.xz -C /tmp/baton-device-ucx ucx && rm -rf /tmp/baton-device-ucx
# The test models the CUDA tests compare with (BATON_MODELS_DIR), without the tokenizer-only dirs.
mkdir -p .device/models
cp -r ../shared/models/goldens.json ../shared/models/stories260k ../shared/models/tiny-* .device/models/
du -sh .device
