#!/usr/bin/env bash
# Transfer-engine reads between two processes on this host, side by side with ucx_perftest's
# ucp_get on the same UCX transports (UCX_TLS=^tcp, as baton uses), at 16 KiB and 1 MiB.
#   bench/xfer_compare.sh            (needs build/apps/baton-bench and .venv/ucx from scripts/setup.sh; REPEATS=3; GRID=0
#                                    skips the full grid; NIXL_PYTHON / MOONCAKE_PYTHON: pythons with
#                                    nixl-cu13 / mooncake-transfer-engine for the peer comparisons,
#                                    by default .venv-peers from bench/peers/venv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export UCX_TLS=${UCX_TLS:-^tcp}
BENCH=${BUILD_DIR:-build}/apps/baton-bench
export PATH=$PWD/.venv/ucx/bin:$PATH  # ucx_perftest on the UCX baton runs on
if [ "${GRID:-1}" != 0 ]; then
  echo "## baton-bench xfer (ucx and tcp), full grid"
  "$BENCH" xfer --transport ucx --shared --json /tmp/xfer_ucx_shared.json 2>/dev/null
  for t in ucx tcp; do
    "$BENCH" xfer --transport "$t" --json "/tmp/xfer_$t.json" 2>/dev/null
  done
fi
# ucx_perftest's figure at 16 KiB moves a lot from run to run on a small VM (45-73 GB/s seen in
# one hour), so the single-range comparison interleaves baton and perftest REPEATS times.
# The in-process memcpy column is the same copy without a second process or any checks: the
# ceiling of a same-host read on this machine at that moment.
echo "## single ranges, baton (shared regions), in-process memcpy and ucx_perftest ucp_get (same buffer every iteration), interleaved"
echo "| repeat | size | baton GB/s | memcpy GB/s | ucx_perftest GB/s | baton / perftest |"
echo "|---|---|---|---|---|---|"
for rep in $(seq "${REPEATS:-3}"); do
  "$BENCH" xfer --transport ucx --shared --memcpy-baseline --sizes 16384,1048576 --batches 1 --region-bytes 67108864 \
    --json /tmp/xfer_single.json > /dev/null 2>&1
  for s in 16384 1048576; do
    port=$((20000 + RANDOM % 20000))
    ucx_perftest -p $port >/dev/null 2>&1 &
    srv=$!
    sleep 0.5
    iters=$(( s <= 65536 ? 200000 : 20000 ))
    mbps=$(ucx_perftest 127.0.0.1 -p $port -t ucp_get -s $s -n $iters 2>/dev/null | awk '/Final:/ {print $7}')
    wait $srv || true
    python3 - "$rep" "$s" "$mbps" <<'PY'
import json, sys
rep, size, mbps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3] or 0)
row = next(r for r in json.load(open("/tmp/xfer_single.json")) if r["size"] == size)
b, m = row["gb_per_s"], row.get("memcpy_gb_per_s", 0)
p = mbps / 1000
print(f"| {rep} | {size} | {b:.1f} | {m:.1f} | {p:.1f} | {b / p if p else 0:.2f} |")
PY
  done
done
# Ordinary registered memory (register_memory, not allocate_memory) against NIXL's UCX backend on
# the same batches, interleaved: NIXL_PYTHON is a python with `nixl-cu13` (pip install nixl-cu13).
NIXL_PYTHON=${NIXL_PYTHON:-.venv-peers/bin/python}
if "$NIXL_PYTHON" -c "import nixl_cu13" 2>/dev/null; then
  echo "## registered host memory, baton (ucx, CMA on one host) and NIXL (UCX backend), interleaved"
  echo "| repeat | size | batch | baton GB/s | NIXL GB/s | ratio |"
  echo "|---|---|---|---|---|---|"
  for rep in $(seq "${REPEATS:-3}"); do
    "$BENCH" xfer --transport ucx --sizes 16384,1048576 --batches 1,16,128 --json /tmp/xfer_registered.json > /dev/null 2>&1
    # NIXL needs UCX's tcp transport (its peer-failure handling); nixl-cu13 1.x crashes at interpreter
    # exit when its output is not a terminal, after the rows are written: judge it by the rows.
    rm -f /tmp/xfer_nixl.json
    (set +e; env -u UCX_TLS "$NIXL_PYTHON" bench/peers/nixl_read_bench.py --json /tmp/xfer_nixl.json; exit 0) > /dev/null 2>&1
    [ -s /tmp/xfer_nixl.json ] || { echo "NIXL run $rep wrote no rows"; continue; }
    python3 - "$rep" <<'PY'
import json, sys
b = {(r["size"], r["batch"]): r["gb_per_s"] for r in json.load(open("/tmp/xfer_registered.json"))}
for r in json.load(open("/tmp/xfer_nixl.json")):
    k = (r["size"], r["batch"])
    if k in b:
        print(f"| {sys.argv[1]} | {k[0]} | {k[1]} | {b[k]:.2f} | {r['gb_per_s']:.2f} | {b[k] / r['gb_per_s']:.2f} |")
PY
  done
else
  echo "## NIXL: not measured ($NIXL_PYTHON cannot import nixl_cu13; pip install nixl-cu13 there)"
fi

# Mooncake's transfer engine (TCP transport) against baton on the same batches, interleaved:
# baton's TCP transport (the like-for-like row) and its default (UCX, CMA on one host).
# MOONCAKE_PYTHON: a python with `mooncake-transfer-engine` and `nvidia-cuda-runtime-cu12`; the
# wheel links libcuda.so.1 even for TCP, so without the NVIDIA driver the CUDA toolkit's stub
# stands in for it (nothing calls into it on the TCP path).
MOONCAKE_PYTHON=${MOONCAKE_PYTHON:-.venv-peers/bin/python}
if "$MOONCAKE_PYTHON" -c "import importlib.util as u, sys; sys.exit(u.find_spec('mooncake') is None)" 2>/dev/null; then
  stub=$(mktemp -d)
  trap 'rm -rf "$stub"' EXIT
  ln -s /usr/local/cuda/lib64/stubs/libcuda.so "$stub/libcuda.so.1"
  cudart=$("$MOONCAKE_PYTHON" -c "import nvidia.cuda_runtime as m, os; print(os.path.join(list(m.__path__)[0], 'lib'))" 2>/dev/null || true)
  echo "## registered host memory, baton (tcp; ucx) and Mooncake (TCP transport), interleaved"
  echo "| repeat | size | batch | baton tcp GB/s | baton ucx GB/s | Mooncake tcp GB/s | tcp / Mooncake | ucx / Mooncake |"
  echo "|---|---|---|---|---|---|---|---|"
  for rep in $(seq "${REPEATS:-3}"); do
    "$BENCH" xfer --transport tcp --sizes 16384,1048576 --batches 1,16,128 --json /tmp/xfer_tcp_mc.json > /dev/null 2>&1
    "$BENCH" xfer --transport ucx --sizes 16384,1048576 --batches 1,16,128 --json /tmp/xfer_ucx_mc.json > /dev/null 2>&1
    rm -f /tmp/xfer_mooncake.json
    LD_LIBRARY_PATH="$stub:$cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" GLOG_minloglevel=2 \
      "$MOONCAKE_PYTHON" bench/peers/mooncake_read_bench.py --json /tmp/xfer_mooncake.json > /dev/null 2>&1 || true
    [ -s /tmp/xfer_mooncake.json ] || { echo "Mooncake run $rep wrote no rows"; continue; }
    python3 - "$rep" <<'PY'
import json, sys
t = {(r["size"], r["batch"]): r["gb_per_s"] for r in json.load(open("/tmp/xfer_tcp_mc.json"))}
u = {(r["size"], r["batch"]): r["gb_per_s"] for r in json.load(open("/tmp/xfer_ucx_mc.json"))}
for r in json.load(open("/tmp/xfer_mooncake.json")):
    k, m = (r["size"], r["batch"]), r["gb_per_s"]
    if k in t and k in u:
        print(f"| {sys.argv[1]} | {k[0]} | {k[1]} | {t[k]:.2f} | {u[k]:.2f} | {m:.2f} | {t[k] / m:.2f} | {u[k] / m:.2f} |")
PY
  done
else
  echo "## Mooncake: not measured ($MOONCAKE_PYTHON cannot import mooncake; pip install mooncake-transfer-engine nvidia-cuda-runtime-cu12 there)"
fi
