#!/usr/bin/env bash
# The one-kernel decode step (src/backend/cuda/mega.cu) on the lent GPU machine, in one call (carry
# .device): builds only backend_test and baton-bench, runs the tests that force it
# (MEGA_TESTS, a gtest filter), then the decode step with it off and on, interleaved, for the
# random-weight Qwen2.5-0.5B and Llama-3.2-1B shapes (MEGA_ROUNDS, MEGA_ARGS for baton-bench model,
# MEGA_CONFIGS: ';'-separated environments; one with BATON_CUDA_MEGA_TIMES=FILE also prints its
# timeline, bench/gpu/mega_times.py). Output on stdout; JSON in $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export BATON_MODELS_DIR=$PWD/.device/models
T0=$(date +%s)
BUILD_TARGET=backend_test bash bench/gpu/build.sh
BUILD_TARGET=baton-bench bash bench/gpu/build.sh
echo "build: $(( $(date +%s) - T0 )) s"
TESTS=${MEGA_TESTS-*CudaSkinny*:*CudaVsCpu*PrefillAndDecode*}
if [[ -n $TESTS ]]; then
  timeout "${MEGA_TEST_TIMEOUT:-300}" ./build-gpu/tests/backend_test --gtest_filter="$TESTS" > "$OUT/mega_tests.log" 2>&1 ||
    echo "backend_test: rc $?"
  grep -E "^\[ +(OK|FAILED|PASSED) |Failure|Expected|Which is|error|one-kernel|What" "$OUT/mega_tests.log" | head -80 || true
fi
MODELS=/tmp/baton-models
python3 bench/gpu/hf_reference.py make "$MODELS" > /dev/null 2>&1
IFS=';' read -r -a configs <<< "${MEGA_CONFIGS:-BATON_CUDA_MEGA=0;BATON_CUDA_MEGA=1}"
for m in ${MEGA_MODELS:-qwen2.5-0.5b llama3.2-1b}; do
  for round in $(seq "${MEGA_ROUNDS:-2}"); do
    for cfg in "${configs[@]}"; do
      echo "== $m $cfg (round $round)"
      label=$(echo "$cfg" | sed 's#[ /]#_#g; s#=#-#g').r$round
      env $cfg timeout 120 ./build-gpu/apps/baton-bench model --model "$MODELS/$m" --device cuda \
        --kv-cache-dtype bf16 --gen-batches "" --json "$OUT/mega.$m.$label.json" ${MEGA_ARGS:---batches 1 --prefill 16} 2>&1 |
        awk '!/cuda backend:/ || /decode graph/ || /one-kernel/' || echo "(this configuration failed)"
      if [[ $cfg =~ BATON_CUDA_MEGA_TIMES=([^ ]+) ]]; then python3 bench/gpu/mega_times.py "${BASH_REMATCH[1]}" || true; fi
    done
  done
done
echo "total: $(( $(date +%s) - T0 )) s"
