#!/usr/bin/env bash
# Multi-GPU runs on a lent machine with 2+ GPUs of one host, in one call (carry .device from
# bench/gpu/prepare_deps.sh; NCCL's NVLink multicast stays off):
#   1. the CUDA tests again (goldens, CPU comparisons) on GPU 0
#   2. tensor parallelism: random-weight Qwen2.5-0.5B- and Llama-3.2-1B-shaped models, greedy
#      output of tp=2 against tp=1 (8 prompts x 32 tokens) and decode step times at tp=1 and 2
#   3. cuda_ipc GPU 0 -> GPU 1 between two processes against an in-process cudaMemcpyPeer
#   4. P/D across GPUs: prefill on GPU 0, decode on GPU 1 (KV over cuda_ipc), greedy output equal
#      to colocated; heterogeneous TP (prefill tp=2 on GPUs 0-1, decode tp=1 sharing GPU 1)
#   2b. (tpinv) the same with --tp-invariant: tp=2 must give tp=1's outputs exactly; and its cost
#   4b. (heteroinv) heterogeneous TP with --tp-invariant on both sides against a --tp-invariant
#      colocated server: the outputs must be equal
#   5. the serving sweep (baton-bench serve) colocated on one GPU, colocated tp=2, and P/D on
#      GPUs 0 -> 1, on the Qwen2.5-0.5B-shaped model
#   bash bench/gpu/multi.sh [all | a comma list of tests,tp,tpinv,xfer,pd,hetero,heteroinv,sweep]
# Results go to $OUT (logs, JSON); the models are written to /tmp.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
MODE=${1:-all}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1 || true
NGPU=$(nvidia-smi -L | wc -l)
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
bash bench/gpu/build.sh || exit 1
stamp "build done"
B=./build-gpu/apps
MODELS=/tmp/baton-models
[ -f "$MODELS/llama3.2-1b/config.json" ] || python3 bench/gpu/hf_reference.py make "$MODELS" 2>&1 | grep -v Warning | tail -2
want() { [[ $MODE == all || ",$MODE," == *",$1,"* ]]; }

if want tests; then
  BATON_MODELS_DIR=$PWD/.device/models timeout 300 ./build-gpu/tests/backend_test --gtest_filter='*Cuda*' --gtest_brief=1 \
    2>&1 | tail -4 | tee "$OUT/cuda_tests.log"
  stamp "cuda tests done"
fi

if want tp; then
  TP=${TP:-2}  # the TP size compared with tp=1 (TP=4 on a 4-GPU machine: the Llama shape only,
               # Qwen2.5-0.5B's 14 heads do not split 4 ways)
  for m in ${TP_MODELS:-qwen2.5-0.5b llama3.2-1b}; do
    python3 bench/gpu/hf_reference.py greedy "$MODELS/$m" "$OUT/$m" 2>&1 | tail -1
    for tp in 1 $TP; do
      timeout 300 $B/baton-generate --model "$MODELS/$m" --device cuda -tp $tp --prompts-file "$OUT/$m.prompts.jsonl" \
        --max-tokens 32 --ignore-eos --temperature 0 > "$OUT/$m.tp$tp.jsonl" 2> "$OUT/$m.tp$tp.log" ||
        tail -5 "$OUT/$m.tp$tp.log"
    done
    echo "$m: tp=$TP vs tp=1"
    python3 bench/gpu/hf_reference.py same "$OUT/$m.tp1.jsonl" "$OUT/$m.tp$TP.jsonl" --ref "$OUT/$m.hf.json" \
      --json "$OUT/$m.tp${TP}_vs_tp1.json"
    for tp in 1 $TP; do
      timeout 300 $B/baton-bench model --model "$MODELS/$m" --device cuda -tp $tp --batches 1,8,64 --gen-batches "" \
        --json "$OUT/$m.tp$tp.bench.json" > "$OUT/$m.tp$tp.bench.txt" 2>&1 || tail -5 "$OUT/$m.tp$tp.bench.txt"
      grep -E "decode|generate|prefill" "$OUT/$m.tp$tp.bench.txt" | head -12
    done
  done
  stamp "tp done"
fi

if want tpinv; then
  TP=${TP:-2}
  for m in ${TP_MODELS:-qwen2.5-0.5b llama3.2-1b}; do
    [ -f "$OUT/$m.prompts.jsonl" ] || python3 bench/gpu/hf_reference.py greedy "$MODELS/$m" "$OUT/$m" 2>&1 | tail -1
    for tp in 1 $TP; do
      timeout 300 $B/baton-generate --model "$MODELS/$m" --device cuda -tp $tp --tp-invariant \
        --prompts-file "$OUT/$m.prompts.jsonl" --max-tokens 32 --ignore-eos --temperature 0 \
        > "$OUT/$m.inv.tp$tp.jsonl" 2> "$OUT/$m.inv.tp$tp.log" || tail -5 "$OUT/$m.inv.tp$tp.log"
    done
    echo "$m --tp-invariant: tp=$TP vs tp=1"
    python3 bench/gpu/hf_reference.py same "$OUT/$m.inv.tp1.jsonl" "$OUT/$m.inv.tp$TP.jsonl" --ref "$OUT/$m.hf.json" \
      --json "$OUT/$m.inv.tp${TP}_vs_tp1.json"
    for tp in 1 $TP; do
      timeout 300 $B/baton-bench model --model "$MODELS/$m" --device cuda -tp $tp --tp-invariant --batches 1,8,64 \
        --gen-batches "" --json "$OUT/$m.inv.tp$tp.bench.json" > "$OUT/$m.inv.tp$tp.bench.txt" 2>&1 ||
        tail -5 "$OUT/$m.inv.tp$tp.bench.txt"
      grep -E "decode|prefill" "$OUT/$m.inv.tp$tp.bench.txt" | head -12
    done
  done
  stamp "tpinv done"
fi

if want xfer && [ "$NGPU" -ge 2 ]; then
  timeout 240 $B/baton-bench xfer --cuda --owner-gpu 0 --reader-gpu 1 --sizes 16384,262144,1048576,4194304,16777216,67108864 \
    --batches 1,16,128 --json "$OUT/xfer_gpu0_to_gpu1.json" 2>&1 | tee "$OUT/xfer_gpu0_to_gpu1.txt"
  stamp "xfer done"
fi

# One P/D pair (or colocated server) at a time, for the equality checks.
source bench/procs.sh
trap stop_all EXIT
wait_healthy() { wait_url "$1/health" 180; }
KV="--kv-cache-memory 8589934592"
pd_pair() {  # label, prefill args, decode args[, the colocated outputs to compare with]
  local ping=19102 proxy=19101
  $B/baton-proxy --host 127.0.0.1 --port $proxy --ping-port $ping > "$OUT/pd_$1.proxy.log" 2>&1 & PIDS+=($!)
  # shellcheck disable=SC2086
  $B/baton-server --model "$MODELS/qwen2.5-0.5b" --host 127.0.0.1 $KV $2 --log-level warning \
    --kv-transfer-config '{"kv_role":"kv_producer","proxy_ip":"127.0.0.1","proxy_ping_port":19102,"http_port":19103}' \
    > "$OUT/pd_$1.prefill.log" 2>&1 & PIDS+=($!)
  # shellcheck disable=SC2086
  $B/baton-server --model "$MODELS/qwen2.5-0.5b" --host 127.0.0.1 $KV $3 --log-level warning \
    --kv-transfer-config '{"kv_role":"kv_consumer","proxy_ip":"127.0.0.1","proxy_ping_port":19102,"http_port":19104}' \
    > "$OUT/pd_$1.decode.log" 2>&1 & PIDS+=($!)
  wait_healthy http://127.0.0.1:$proxy || { tail -n 4 "$OUT"/pd_"$1".*.log; stop_all; return 1; }
  python3 bench/gpu/pd_outputs.py http://127.0.0.1:$proxy "$OUT/qwen2.5-0.5b.prompts.jsonl" "$OUT/pd_$1.jsonl"
  http_get http://127.0.0.1:19104/metrics | grep -E "^baton:kv_transfer" | tee "$OUT/pd_$1.decode_kv.txt"
  echo "P/D $1 vs colocated:"
  python3 bench/gpu/hf_reference.py same "${4:-$OUT/colocated_gpu0.jsonl}" "$OUT/pd_$1.jsonl" --json "$OUT/pd_$1.vs_colocated.json"
  stop_all
}
if (want pd || want hetero) && [ "$NGPU" -ge 2 ]; then
  [ -f "$OUT/qwen2.5-0.5b.prompts.jsonl" ] || python3 bench/gpu/hf_reference.py greedy "$MODELS/qwen2.5-0.5b" "$OUT/qwen2.5-0.5b" | tail -1
  $B/baton-server --model "$MODELS/qwen2.5-0.5b" --host 127.0.0.1 --port 19100 --device cuda:0 $KV --log-level warning \
    > "$OUT/colocated_gpu0.log" 2>&1 & PIDS+=($!)
  wait_healthy http://127.0.0.1:19100 && python3 bench/gpu/pd_outputs.py http://127.0.0.1:19100 \
    "$OUT/qwen2.5-0.5b.prompts.jsonl" "$OUT/colocated_gpu0.jsonl"
  stop_all
  if want pd; then pd_pair gpu0_to_gpu1 "--device cuda:0" "--device cuda:1"; fi
  # Heterogeneous TP: the prefill's two ranks each hold one of the model's two KV heads; the
  # decode's one rank reads its head slice from both.
  if want hetero; then pd_pair p_tp2_d_tp1 "--device cuda:0 -tp 2" "--device cuda:1"; fi
  stamp "pd done"
fi
if want heteroinv && [ "$NGPU" -ge 2 ]; then
  [ -f "$OUT/qwen2.5-0.5b.prompts.jsonl" ] || python3 bench/gpu/hf_reference.py greedy "$MODELS/qwen2.5-0.5b" "$OUT/qwen2.5-0.5b" | tail -1
  $B/baton-server --model "$MODELS/qwen2.5-0.5b" --host 127.0.0.1 --port 19100 --device cuda:0 --tp-invariant $KV \
    --log-level warning > "$OUT/colocated_inv.log" 2>&1 & PIDS+=($!)
  wait_healthy http://127.0.0.1:19100 && python3 bench/gpu/pd_outputs.py http://127.0.0.1:19100 \
    "$OUT/qwen2.5-0.5b.prompts.jsonl" "$OUT/colocated_inv.jsonl"
  stop_all
  pd_pair p_tp2_d_tp1_inv "--device cuda:0 -tp 2 --tp-invariant" "--device cuda:1 --tp-invariant" "$OUT/colocated_inv.jsonl"
  stamp "heteroinv done"
fi

if want sweep; then
  S="$OUT/sweep"
  SW=(--model "$MODELS/qwen2.5-0.5b" --rates 16,64,inf --num-prompts 200 --input-len 512 --output-len 128
      --slo ttft=200ms,tpot=20ms --out "$S" --bin "$B")
  bash bench/serve_sweep.sh "${SW[@]}" --modes colocated --labels colocated-1gpu --server-args "--device cuda:0 $KV"
  if [ "$NGPU" -ge 2 ]; then
    bash bench/serve_sweep.sh "${SW[@]}" --modes colocated --labels colocated-tp2 --server-args "--device cuda:0 -tp 2 $KV"
    bash bench/serve_sweep.sh "${SW[@]}" --modes pd --labels x,pd-gpu0-gpu1 --pd-server-args "$KV" \
      --prefill-args "--device cuda:0" --decode-args "--device cuda:1"
  fi
  stamp "sweep done"
fi
stamp "total"
