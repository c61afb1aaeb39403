#!/usr/bin/env bash
# GPU KV through UCX on the lent GPU machine (carry .device from bench/gpu/prepare_deps.sh):
#   bash bench/gpu/ucx_gpu.sh xfer   build, the transfer engine's GPU tests, then GPU-to-GPU reads
#                                    between two processes: baton's own cuda_ipc, UCX as it picks on
#                                    one host (its cuda_ipc), and UCX forced onto what it uses
#                                    between hosts without RDMA (UCX_TLS=tcp,cuda_copy), each beside
#                                    ucx_perftest's ucp_get on the same UCX, memory and transports;
#                                    one request's KV (Llama-3.1-8B shape, fp8 and bf16, 1k and 8k
#                                    tokens, contiguous and scattered blocks)
#   bash bench/gpu/ucx_gpu.sh kv     the GPU tests and one request's KV only, then writes the 8B
#                                    random model that pd uses
#   bash bench/gpu/ucx_gpu.sh pd     P/D against colocated on an 8B-shape random model, fp8 KV,
#                                    1k and 8k-token prompts: greedy outputs equal, TTFT; the decode reading through
#                                    UCX between "hosts" (UCX_TLS=tcp,cuda_copy), through UCX on one
#                                    host and, for comparison, by baton's cuda_ipc
# Each mode builds first unless the build is there (a warm machine keeps it).
# Two hosts on one machine: network namespaces where the machine allows them (probed and said in
# $OUT/netns.txt); otherwise UCX_TLS=tcp,cuda_copy is what makes UCX take its between-host path.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
MODE=${1:-xfer}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi -L | tee "$OUT/gpu.txt"
BIN=build-gpu
UCX=.device/ucx
if [[ ! -x $BIN/apps/baton-server || ! -x $BIN/tests/xfer_test ]]; then
  T0=$(date +%s)
  BUILD_TARGET="baton-server baton-proxy baton-bench baton-make-model xfer_test" bash bench/gpu/build.sh
  echo "build: $(( $(date +%s) - T0 )) s"
fi
gpu_tests() {
  "./$BIN/tests/xfer_test" --gtest_filter='CudaIpc*:UcxGpu*:*XferTest*/1:XferStaging*:XferDeregister*' 2>&1 |
    tee "$OUT/xfer_test.log" | grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) |Failure|error" | head -40 || true
}
kv_rows() {  # one request's KV, Llama-3.1-8B shape: baton's cuda_ipc, UCX's choice, UCX between hosts
  for dt in fp8 bf16; do
    for t in cuda_ipc ucx; do
      echo "## KV of one request, $dt, --transport $t"
      "./$BIN/apps/baton-bench" xfer --cuda --transport "$t" --kv-tokens 1024,8192 --kv-dtype $dt --seconds 0.3 2>&1 | grep -E "^\||^transport"
    done
    echo "## KV of one request, $dt, --transport ucx, UCX_TLS=tcp,cuda_copy"
    UCX_TLS=tcp,cuda_copy "./$BIN/apps/baton-bench" xfer --cuda --transport ucx --kv-tokens 1024,8192 --kv-dtype $dt --seconds 0.3 2>&1 |
      grep -E "^\||^transport"
  done
}
if [[ $MODE == xfer ]]; then
  { $UCX/bin/ucx_info -v | head -1; $UCX/bin/ucx_info -d | grep -E "Transport:" | sort | uniq -c
    echo "RDMA devices: $(ls /sys/class/infiniband 2>/dev/null | tr '\n' ' ')"; } | tee "$OUT/ucx_info.txt"
  if ip netns add baton-probe > "$OUT/netns.txt" 2>&1; then
    ip netns del baton-probe; echo "network namespaces: available" | tee -a "$OUT/netns.txt"
  else
    echo "network namespaces: unavailable ($(head -1 "$OUT/netns.txt")); UCX_TLS=tcp,cuda_copy instead" | tee -a "$OUT/netns.txt"
  fi
  gpu_tests
  SIZES=16384,65536,262144,1048576,4194304,16777216
  perftest() {  # perftest LABEL [ENV...]: ucx_perftest ucp_get between two processes, GPU memory both sides
    local label=$1; shift
    echo "## ucx_perftest ucp_get, cuda -> cuda, $label"
    echo "| size | GB/s |"; echo "|---|---|"
    for s in ${SIZES//,/ }; do
      local port=$((20000 + RANDOM % 20000))
      env "$@" $UCX/bin/ucx_perftest -p $port -m cuda,cuda > /dev/null 2>&1 &
      sleep 1
      local mbps
      mbps=$(env "$@" timeout 60 $UCX/bin/ucx_perftest 127.0.0.1 -p $port -t ucp_get -m cuda,cuda -s "$s" -n 2000 2>/dev/null |
        awk '/Final:/ {print $7}')
      wait || true
      echo "| $s | $(awk -v m="${mbps:-0}" 'BEGIN {printf "%.2f", m * 1048576 / 1e9}') |"
    done
  }
  {
    for t in cuda_ipc ucx; do
      echo "## baton-bench xfer --cuda --transport $t"
      "./$BIN/apps/baton-bench" xfer --cuda --transport "$t" --sizes $SIZES --batches 1,16,128 --seconds 0.3 2>&1 | grep -E "^\||^transport"
    done
    perftest "UCX's choice (one host)"
    echo "## baton-bench xfer --cuda --transport ucx, UCX_TLS=tcp,cuda_copy (as between hosts without RDMA)"
    UCX_TLS=tcp,cuda_copy "./$BIN/apps/baton-bench" xfer --cuda --transport ucx --sizes $SIZES --batches 1,16 --seconds 0.3 2>&1 |
      grep -E "^\||^transport"
    perftest "UCX_TLS=tcp,cuda_copy" UCX_TLS=tcp,cuda_copy
    kv_rows
  } 2>&1 | tee "$OUT/xfer_bench.md"
fi
if [[ $MODE == kv ]]; then
  gpu_tests
  kv_rows 2>&1 | tee "$OUT/kv_rows.md"
  T0=$(date +%s)
  "./$BIN/apps/baton-make-model" --out $BIN/bench-model-8b --hidden-size 4096 --intermediate-size 14336 --num-layers 32 \
    --num-heads 32 --num-kv-heads 8 --max-position-embeddings 16384
  echo "8B random model: $(( $(date +%s) - T0 )) s"
fi
if [[ $MODE == pd ]]; then
  # One colocated server; the fleets one after another: UCX between "hosts" (tcp + cuda_copy),
  # UCX's own choice on one host (its cuda_ipc), baton's cuda_ipc.
  timeout 560 python3 bench/pd_ttft.py --bin-dir $BIN/apps --device cuda --shape 8b --kv-cache-dtype fp8 \
    --prompt-lens 1024,8192 --requests ${PD_REQUESTS:-5} --max-tokens 16 --max-model-len 16384 \
    --kv-cache-memory $((2 << 30)) --fleet "ucx UCX_TLS=tcp,cuda_copy" --fleet ucx --fleet cuda_ipc 2>&1 |
    tee "$OUT/pd_ttft.md"
fi
