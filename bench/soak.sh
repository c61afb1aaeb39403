#!/usr/bin/env bash
# The long soak under chaos (the CI runs a bounded one): N streamed requests at 64-way
# concurrency through baton-proxy -> 2 prefill -> 2 decode on tiny-qwen3 while one instance at a
# time is kill -9'd and restarted. Prints one JSON line (and pytest's summary); its figures go to
# bench/RESULTS.md.
#   bench/soak.sh [REQUESTS=5000] [CHAOS_INTERVAL_S=0.5]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/e2e/soak_test.py --bin-dir build/apps \
  --models ../shared/models --soak-requests "${1:-5000}" --soak-concurrency 64 --soak-chaos-interval-s "${2:-0.5}"
