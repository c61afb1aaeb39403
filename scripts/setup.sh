#!/usr/bin/env bash
# Installs everything baton needs to build and test on Debian 12. Idempotent: a second run on a
# ready machine installs nothing and takes a second or two.
#   apt: compiler, CMake, Ninja, GoogleTest, Google Benchmark, JSON, PCRE2, ICU, Boost, ZeroMQ,
#        gnuplot (baton-bench serve plots)
#   venv (.venv): the Python reference and client packages the tests compare against, pytest
#        (which runs the e2e tests), and UCX (PyPI libucx-cu13's headers, nixl-cu13's CUDA- and
#        verbs-capable libraries), laid out as one prefix in .venv/ucx by scripts/ucx_dir.sh; real
#        chat templates from the Hub (llama-cpp-python's source package) in .venv/hub-templates
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libpcre2-dev libicu-dev libboost1.81-dev libzmq3-dev
  python3 python3-venv python3-pip clang clang-tidy curl gnuplot-nox
)
PY_PACKAGES=(tokenizers transformers jinja2 openai pyzmq msgpack pytest)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The venv uses Debian's python3 so that it does not depend on whatever else is on PATH.
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import tokenizers, transformers, jinja2, openai, zmq, msgpack, pytest" 2>/dev/null; then
  echo "setup: installing ${PY_PACKAGES[*]} into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "${PY_PACKAGES[@]}"
fi

# UCX: pinned, since the headers (1.22) and the libraries (1.23) come from two wheels. nixl-cu13
# without its dependencies: only its UCX is used, not NIXL (which would pull in PyTorch).
UCX_HEADERS=libucx-cu13==1.22.0 UCX_LIBS=nixl-cu13==1.5.1
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if ! .venv/bin/python -m pip show -q libucx-cu13 nixl-cu13 >/dev/null 2>&1; then
  echo "setup: installing $UCX_HEADERS $UCX_LIBS into .venv"
  .venv/bin/python -m pip install -q "$UCX_HEADERS"
  .venv/bin/python -m pip install -q --no-deps "$UCX_LIBS"
fi
if [ ! -f .venv/ucx/lib/pkgconfig/ucx.pc ] || [ scripts/ucx_dir.sh -nt .venv/ucx/lib/pkgconfig/ucx.pc ]; then
  bash scripts/ucx_dir.sh "$site" .venv/ucx
fi

# Real chat templates as the Hub ships them (tests/model/chat_template_test.cpp): llama.cpp keeps
# copies fetched from the Hub in models/templates, inside llama-cpp-python's source package.
HUB_TEMPLATES_FROM=llama-cpp-python==0.3.36
HUB_TEMPLATES_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
if [ ! -f .venv/hub-templates/.from ] || [ "$(cat .venv/hub-templates/.from)" != "$HUB_TEMPLATES_FROM" ]; then
  echo "setup: extracting chat templates from $HUB_TEMPLATES_FROM into .venv/hub-templates"
  tmp=$(mktemp -d)
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: "$HUB_TEMPLATES_FROM" -d "$tmp"
  echo "$HUB_TEMPLATES_SHA256  $(ls "$tmp"/llama_cpp_python-*.tar.gz)" | sha256sum -c --quiet
  rm -rf .venv/hub-templates && mkdir -p .venv/hub-templates
  tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C .venv/hub-templates --strip-components=5 --wildcards '*/vendor/llama.cpp/models/templates/*.jinja'
  echo "$HUB_TEMPLATES_FROM" > .venv/hub-templates/.from
  rm -rf "$tmp"
fi
