#!/usr/bin/env bash
# Transfer-engine reads between two processes on this host, side by side with ucx_perftest's
# ucp_get on the same UCX transports (UCX_TLS=^tcp, as baton uses), at 16 KiB and 1 MiB.
#   bench/xfer_compare.sh            (needs build/apps/baton-bench and ucx-utils)
set -euo pipefail
cd "$(dirname "$0")/.."
export UCX_TLS=${UCX_TLS:-^tcp}
BENCH=${BUILD_DIR:-build}/apps/baton-bench
echo "## baton-bench xfer (ucx and tcp), full grid"
"$BENCH" xfer --transport ucx --shared --json /tmp/xfer_ucx_shared.json 2>/dev/null
for t in ucx tcp; do
  "$BENCH" xfer --transport "$t" --json "/tmp/xfer_$t.json" 2>/dev/null
done
echo "## ucx_perftest ucp_get (same buffer every iteration)"
for s in 16384 1048576; do
  port=$((20000 + RANDOM % 20000))
  ucx_perftest -p $port >/dev/null 2>&1 &
  srv=$!
  sleep 0.5
  mbps=$(ucx_perftest 127.0.0.1 -p $port -t ucp_get -s $s -n 2000 2>/dev/null | awk '/Final:/ {print $7}')
  wait $srv || true
  echo "ucx_perftest ucp_get size=$s: ${mbps} MB/s"
done
