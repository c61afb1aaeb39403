# Sourced by the benchmark scripts (serve_sweep.sh, peers/llama_cpp.sh, gpu/multi.sh): the
# servers they start in the background, and waiting for those to answer over HTTP.
#   PIDS+=($!)            after starting one; stop_all stops them all (trap stop_all EXIT)
#   http_get URL          prints the body (python3's urllib: curl may be missing on GPU machines)
#   wait_url URL [S]      until URL answers (default 180 s); fails at once if a process in PIDS exits
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
http_get() {
  python3 -c "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())" "$1"
}
wait_url() {
  local deadline=$((SECONDS + ${2:-180}))
  while [ $SECONDS -lt $deadline ]; do
    http_get "$1" >/dev/null 2>&1 && return 0
    for p in "${PIDS[@]}"; do
      kill -0 "$p" 2>/dev/null || { echo "a process exited before $1 answered"; return 1; }
    done
    sleep 0.2
  done
  echo "no answer from $1 within ${2:-180} s"
  return 1
}
