#!/usr/bin/env bash
# CPU decode speed at batch 1: baton-generate, greedy, 256 tokens after a 16-token prompt,
# median of 5 runs per model and thread count. Prints one markdown table row per case.
#   bench/cpu_decode.sh [model_dir ...]   (default: the shared tiny models)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BUILD_DIR:-build}/apps/baton-generate
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(../shared/models/tiny-qwen3 ../shared/models/stories260k)
PROMPT=1,20,76,421,485,129,161,445,218,142,424,133,211,330,282,46
echo "| model | threads | prefill tok/s (16 tok) | decode tok/s (batch 1) | ms/token |"
echo "|---|---|---|---|---|"
for m in "${MODELS[@]}"; do
  for th in 1 $(nproc); do
    rates=()
    pre=()
    for _ in 1 2 3 4 5; do
      line=$("$BIN" --model "$m" --prompt-ids $PROMPT --max-tokens 256 --ignore-eos --temperature 0 --threads "$th" \
        --output json 2>&1 >/dev/null | tail -1)
      rates+=("$(echo "$line" | sed -E 's/.*decode [0-9]+ tokens: [0-9.]+ ms \(([0-9.]+) tok\/s\).*/\1/')")
      pre+=("$(echo "$line" | sed -E 's/.*ms \(([0-9.]+) tok\/s\) \| decode.*/\1/')")
    done
    med=$(printf '%s\n' "${rates[@]}" | sort -g | sed -n 3p)
    pmed=$(printf '%s\n' "${pre[@]}" | sort -g | sed -n 3p)
    echo "| $(basename "$m") | $th | $pmed | $med | $(awk "BEGIN{printf \"%.3f\", 1000/$med}") |"
  done
done
