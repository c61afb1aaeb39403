#!/usr/bin/env bash
# baton-server's decode-graph warm-up on the lent GPU (after bench/gpu/build.sh): for each model,
# start the server with and without it (--no-warmup) and print the warm-up time it logs, how long
# it took to answer /v1/models, and then the first burst of BURST concurrent completions
# (max_tokens TOKENS, greedy): every request's latency (median, max) and the burst's wall time.
#   bash bench/gpu/server_warmup.sh [MODEL_DIR ...]   (default: cuda.sh's random-weight models)
# SERVER_ARGS go to baton-server (e.g. "--max-num-seqs 64"); PORT (8123); BIN, DEVICE (cuda) for a run elsewhere.
set -euo pipefail
cd "$(dirname "$0")/../.."
BURST=${BURST:-64}
TOKENS=${TOKENS:-32}
PORT=${PORT:-8123}
BIN=${BIN:-./build-gpu/apps/baton-server}
DEVICE=${DEVICE:-cuda}
if [ $# -eq 0 ]; then
  python3 bench/gpu/hf_reference.py make /tmp/baton-models > /dev/null 2>&1
  set -- /tmp/baton-models/qwen2.5-0.5b /tmp/baton-models/llama3.2-1b
fi
for model in "$@"; do
  for mode in warmup no-warmup; do
    flag=()
    [[ $mode == no-warmup ]] && flag=(--no-warmup)
    log=/tmp/server.$mode.log
    # shellcheck disable=SC2086
    "$BIN" --model "$model" --device "$DEVICE" --port "$PORT" "${flag[@]}" ${SERVER_ARGS:-} > "$log" 2>&1 &
    pid=$!
    echo "== $(basename "$model") $mode"
    python3 - "$PORT" "$BURST" "$TOKENS" "$pid" <<'EOF' || { tail -5 "$log"; kill "$pid" 2>/dev/null || true; exit 1; }
import concurrent.futures, json, os, statistics, sys, time, urllib.error, urllib.request
port, burst, tokens, pid = (int(a) for a in sys.argv[1:])
t0 = time.time()
while True:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
        break
    except Exception:
        os.kill(pid, 0)  # the server died: raises
        if time.time() - t0 > 120: sys.exit("server not ready after 120 s")
        time.sleep(0.05)
ready = time.time() - t0
def one(i):
    # Token ids: the random-weight models have no tokenizer.json.
    body = json.dumps({"prompt": [(i * 40 + j) % 1000 + 10 for j in range(40)], "max_tokens": tokens,
                       "temperature": 0, "ignore_eos": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"})
    s = time.time()
    try:
        out = json.loads(urllib.request.urlopen(req, timeout=120).read())
    except urllib.error.HTTPError as e:
        sys.exit(f"HTTP {e.code}: {e.read().decode()}")
    assert out["usage"]["completion_tokens"] == tokens, out
    return time.time() - s
s = time.time()
with concurrent.futures.ThreadPoolExecutor(burst) as ex:
    lat = list(ex.map(one, range(burst)))
wall = time.time() - s
print(f"ready after {ready:.2f} s; first burst of {burst} x {tokens} tokens: wall {wall:.3f} s, "
      f"latency median {statistics.median(lat):.3f} s, max {max(lat):.3f} s")
EOF
    grep -m1 -E "prepared in|warm-up failed" "$log" || echo "(no warm-up line in the log)"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
