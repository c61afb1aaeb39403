#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs a full P/D deployment on 127.0.0.1 —
# baton-proxy, one prefill (kv_producer) and one decode (kv_consumer) baton-server — then sends
# the seed request through the proxy, streamed and not, and shows where the KV went.
#   scripts/demo.sh                          # a small random-weight model (its text is noise)
#   scripts/demo.sh --model /path/to/hf-dir  # any Llama / Qwen2 / Qwen3 / Mistral HF directory
#   scripts/demo.sh --kv-cache-dtype fp8 -tp 1 --prompt "1 2 3 4 5" --max-tokens 10
# Ports: PROXY_PORT (10001), PING_PORT (36367), PREFILL_PORT (8100), DECODE_PORT (8200).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
BIN="$BUILD_DIR/apps"

MODEL="" KV_DTYPE=fp8 TP=1 PROMPT="1 2 3 4 5" MAX_TOKENS=10
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --kv-cache-dtype|--kv_cache_dtype) KV_DTYPE="$2"; shift 2 ;;
    -tp|--tensor-parallel-size) TP="$2"; shift 2 ;;
    --prompt) PROMPT="$2"; shift 2 ;;
    --max-tokens) MAX_TOKENS="$2"; shift 2 ;;
    *) echo "demo: unknown argument '$1' (see the top of scripts/demo.sh)" >&2; exit 2 ;;
  esac
done
if [ -z "$MODEL" ]; then
  MODEL="$BUILD_DIR/demo-model"
  [ -f "$MODEL/model.safetensors" ] || "$BIN/baton-make-model" --out "$MODEL"
  echo "demo: using a RANDOM-WEIGHT Llama model in $MODEL, so the generated text is noise."
  echo "demo: for real text, pass a Hugging Face model directory: scripts/demo.sh --model /path/to/Qwen2.5-0.5B-Instruct"
fi

PROXY_PORT=${PROXY_PORT:-10001} PING_PORT=${PING_PORT:-36367}
PREFILL_PORT=${PREFILL_PORT:-8100} DECODE_PORT=${DECODE_PORT:-8200}
LOGS=$(mktemp -d /tmp/baton-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "demo: logs in $LOGS"
"$BIN/baton-proxy" --host 127.0.0.1 --port "$PROXY_PORT" --ping-port "$PING_PORT" >"$LOGS/proxy.log" 2>&1 &
PIDS+=($!)
for role in kv_producer kv_consumer; do
  port=$PREFILL_PORT; [ "$role" = kv_consumer ] && port=$DECODE_PORT
  cfg="{\"kv_role\":\"$role\",\"proxy_ip\":\"127.0.0.1\",\"proxy_ping_port\":$PING_PORT,\"http_port\":$port}"
  echo "demo: baton-server --model $MODEL --kv_cache_dtype $KV_DTYPE --block-size 16 -tp $TP --kv-transfer-config '$cfg'"
  "$BIN/baton-server" --model "$MODEL" --host 127.0.0.1 --kv_cache_dtype "$KV_DTYPE" --block-size 16 -tp "$TP" \
    --kv-transfer-config "$cfg" >"$LOGS/$role.log" 2>&1 &
  PIDS+=($!)
done

for _ in $(seq 1 300); do  # up to 60 s for a real model to load
  if curl -sf "http://127.0.0.1:$PROXY_PORT/health" >/dev/null; then break; fi
  for p in "${PIDS[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then echo "demo: a process exited early:"; tail -n 5 "$LOGS"/*.log; exit 1; fi
  done
  sleep 0.2
done
curl -sf "http://127.0.0.1:$PROXY_PORT/health" >/dev/null || { echo "demo: instances did not register"; tail -n 5 "$LOGS"/*.log; exit 1; }
echo "demo: proxy at 127.0.0.1:$PROXY_PORT sees $(curl -s "http://127.0.0.1:$PROXY_PORT/health")"

BODY=$(printf '{"prompt":%s,"max_tokens":%d,"temperature":0}' "$(printf '%s' "$PROMPT" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')" "$MAX_TOKENS")
echo
echo "demo: curl -s http://127.0.0.1:$PROXY_PORT/v1/completions -d '$BODY'"
curl -s "http://127.0.0.1:$PROXY_PORT/v1/completions" -H "Content-Type: application/json" -d "$BODY"
echo
echo
echo "demo: the same, streamed (SSE relayed from the decode instance):"
curl -sN "http://127.0.0.1:$PROXY_PORT/v1/completions" -H "Content-Type: application/json" \
  -d "${BODY%\}},\"stream\":true}"
echo
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n {print $2}'; }
echo "demo: decode read the prompt KV of $(metric "$DECODE_PORT" baton:kv_transfers_total) requests" \
     "($(metric "$DECODE_PORT" baton:kv_transfer_bytes_total) bytes, $(metric "$DECODE_PORT" baton:kv_transfer_seconds_total) s in all)" \
     "and computed $(metric "$DECODE_PORT" baton:prompt_tokens_total) prompt tokens itself;" \
     "prefill freed $(metric "$PREFILL_PORT" baton:kv_released_by_reader_total) held transfers after the reads."
