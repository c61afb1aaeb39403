#!/usr/bin/env bash
# The peers that bench/xfer_compare.sh measures beside baton, in their own venv (.venv-peers, git-
# ignored): NIXL (its UCX backend) and Mooncake's transfer engine (TCP transport), from PyPI.
#   bash bench/peers/venv.sh && bash bench/xfer_compare.sh   (xfer_compare picks .venv-peers up)
# Mooncake's wheel links libcudart.so.12 (hence nvidia-cuda-runtime-cu12) and libcuda.so.1, for
# which xfer_compare.sh puts the CUDA toolkit's stub first on LD_LIBRARY_PATH on driverless hosts.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv-peers}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q numpy nixl-cu13 mooncake-transfer-engine nvidia-cuda-runtime-cu12
"$VENV/bin/python" -c "import nixl_cu13, mooncake, nvidia.cuda_runtime; print('peers venv ready:', '$VENV')"
