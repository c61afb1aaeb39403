#!/usr/bin/env bash
# Colocated vs P/D (1 prefill + 1 decode behind baton-proxy) on the same model and machine, at
# several request rates, with baton-bench serve; then one table and one plot (baton-bench report).
#
#   bench/serve_sweep.sh --model DIR [--rates 2,4,8,inf] [--num-prompts 64] [--input-len 256]
#       [--output-len 64] [--slo ttft=500ms,tpot=50ms] [--out DIR] [--bin build/apps]
#       [--server-args "..."] [--pd-server-args "..."] [--prefill-args "..."] [--decode-args "..."]
#       [--modes colocated,pd] [--labels colocated,pd] [--bench-args "..."]
#
# Writes DIR/<label>_rate<R>.json (and .png CDFs, .txt tables), DIR/sweep.md and DIR/sweep.png
# (over every result in DIR, so runs with other labels add up). On the CPU, the P/D pair splits
# the cores (--threads half each) so that both setups get the same machine; --pd-server-args
# replaces that. --prefill-args/--decode-args go to one role only (on GPUs: --device cuda:0 and
# --device cuda:1, see bench/gpu/multi.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="" RATES="2,4,8,inf" NUM=64 IN_LEN=256 OUT_LEN=64 SLO="ttft=500ms,tpot=50ms" OUT=bench/out/serve_sweep
BIN=build/apps SERVER_ARGS="" PD_SERVER_ARGS="" PREFILL_ARGS="" DECODE_ARGS="" MODES="colocated,pd" EXTRA=""
LABELS="colocated,pd"
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --rates) RATES="$2"; shift 2 ;;
    --num-prompts) NUM="$2"; shift 2 ;;
    --input-len) IN_LEN="$2"; shift 2 ;;
    --output-len) OUT_LEN="$2"; shift 2 ;;
    --slo) SLO="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --server-args) SERVER_ARGS="$2"; shift 2 ;;
    --pd-server-args) PD_SERVER_ARGS="$2"; shift 2 ;;
    --prefill-args) PREFILL_ARGS="$2"; shift 2 ;;
    --decode-args) DECODE_ARGS="$2"; shift 2 ;;
    --modes) MODES="$2"; shift 2 ;;
    --labels) LABELS="$2"; shift 2 ;;
    --bench-args) EXTRA="$2"; shift 2 ;;
    *) echo "serve_sweep: unknown argument '$1' (see the top of bench/serve_sweep.sh)" >&2; exit 2 ;;
  esac
done
[ -n "$MODEL" ] || { echo "serve_sweep: --model DIR is required" >&2; exit 2; }
IFS=, read -r COLO_LABEL PD_LABEL <<<"$LABELS"
if [ -z "$PD_SERVER_ARGS" ]; then
  half=$(( $(nproc) / 2 )); [ "$half" -ge 1 ] || half=1
  PD_SERVER_ARGS="$SERVER_ARGS --threads $half"
fi
mkdir -p "$OUT"
LOGS="$OUT/logs"; mkdir -p "$LOGS"
BASE=${BASE_PORT:-18400}
source bench/procs.sh
trap stop_all EXIT
wait_health() {  # url, what
  wait_url "$1/health" || { echo "serve_sweep: $2 is not serving"; tail -n 5 "$LOGS"/*.log; exit 1; }
}

run_rates() {  # label, base url
  IFS=, read -ra rates <<<"$RATES"
  # A new seed per rate: the same prompts again would hit the server's prefix cache.
  local seed=0
  for r in "${rates[@]}"; do
    seed=$((seed + 1))
    echo "serve_sweep: $1 at rate $r"
    # shellcheck disable=SC2086
    "$BIN/baton-bench" serve --base-url "$2" --label "$1" --request-rate "$r" --num-prompts "$NUM" \
      --warmup 4 --random-input-len "$IN_LEN" --random-output-len "$OUT_LEN" --slo "$SLO" --seed "$seed" \
      --json "$OUT/${1}_rate${r}.json" --plot "$OUT/${1}_rate${r}.png" $EXTRA >"$OUT/${1}_rate${r}.txt" || true
    grep -E "Successful|Failed requests|Output token|Median ttft|Median tpot" "$OUT/${1}_rate${r}.txt" || true
  done
}

if [[ ",$MODES," == *",colocated,"* ]]; then
  # shellcheck disable=SC2086
  "$BIN/baton-server" --model "$MODEL" --host 127.0.0.1 --port "$BASE" --log-level warning $SERVER_ARGS \
    >"$LOGS/$COLO_LABEL.log" 2>&1 &
  PIDS+=($!)
  wait_health "http://127.0.0.1:$BASE" "$COLO_LABEL"
  run_rates "$COLO_LABEL" "http://127.0.0.1:$BASE"
  stop_all
fi

if [[ ",$MODES," == *",pd,"* ]]; then
  PROXY=$((BASE + 1)) PING=$((BASE + 2)) PREFILL=$((BASE + 3)) DECODE=$((BASE + 4))
  "$BIN/baton-proxy" --host 127.0.0.1 --port "$PROXY" --ping-port "$PING" >"$LOGS/$PD_LABEL.proxy.log" 2>&1 &
  PIDS+=($!)
  for role in kv_producer kv_consumer; do
    port=$PREFILL role_args=$PREFILL_ARGS
    if [ "$role" = kv_consumer ]; then port=$DECODE role_args=$DECODE_ARGS; fi
    cfg="{\"kv_role\":\"$role\",\"proxy_ip\":\"127.0.0.1\",\"proxy_ping_port\":$PING,\"http_port\":$port,\"handshake_port\":0}"
    # shellcheck disable=SC2086
    "$BIN/baton-server" --model "$MODEL" --host 127.0.0.1 --log-level warning $PD_SERVER_ARGS $role_args \
      --kv-transfer-config "$cfg" >"$LOGS/$PD_LABEL.$role.log" 2>&1 &
    PIDS+=($!)
  done
  wait_health "http://127.0.0.1:$PROXY" "proxy with a prefill and a decode"
  run_rates "$PD_LABEL" "http://127.0.0.1:$PROXY"
  http_get "http://127.0.0.1:$DECODE/metrics" |
    grep -E "^baton:kv_transfer(s_total|_bytes_total|_seconds_total|_failures_total)" >"$OUT/${PD_LABEL}_decode_kv.txt" || true
  stop_all
fi

"$BIN/baton-bench" report "$OUT"/*_rate*.json --table "$OUT/sweep.md" --plot "$OUT/sweep.png" \
  --title "colocated vs P/D: $(basename "$MODEL"), in $IN_LEN / out $OUT_LEN tokens, $NUM requests per rate" ||
  "$BIN/baton-bench" report "$OUT"/*_rate*.json --table "$OUT/sweep.md"  # no gnuplot here: the table alone
echo "serve_sweep: $OUT/sweep.md, $OUT/sweep.png"
