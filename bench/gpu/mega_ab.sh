#!/usr/bin/env bash
# The one-kernel decode step (src/backend/cuda/mega.cu) on the lent GPU machine, in one call (carry
# .device): builds only backend_test and baton-bench, runs the tests that force it
# (MEGA_TESTS, a gtest filter), then the decode step with it off and on, interleaved, for the
# random-weight Qwen2.5-0.5B and Llama-3.2-1B shapes (MEGA_ROUNDS, MEGA_ARGS for baton-bench model,
# MEGA_CONFIGS: ';'-separated environments; one with BATON_CUDA_MEGA_TIMES=FILE also prints its
# timeline, bench/gpu/mega_times.py: the lines matching MEGA_TIMES_SHOW on stdout, all of them in
# $OUT/timelines.txt). MEGA_SED (a sed script for mega.cu, e.g. the thread count) or MEGA_APPLY
# (patch files for git apply, e.g. bench/gpu/experiments/*.patch) then rebuilds with that edit and
# runs the tests and MEGA_SED_CONFIGS again.
# Output on stdout (MEGA_SHOW: which lines of each run, an ERE); every run's full output in
# $OUT/mega_runs.log, JSON there too with MEGA_JSON=1. MEGA_NCU=MODEL profiles one launch of the
# kernel under Nsight Compute (stall reasons, the lines and SASS it stalls on most; build with
# CUDAFLAGS=-lineinfo for source lines).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export BATON_MODELS_DIR=$PWD/.device/models
T0=$(date +%s)
build() {  # backend_test only when there are tests to run
  [[ -z ${MEGA_TESTS-x} ]] || BUILD_TARGET=backend_test bash bench/gpu/build.sh
  BUILD_TARGET=baton-bench bash bench/gpu/build.sh
  echo "build: $(( $(date +%s) - T0 )) s"
}
tests() {  # $1: a label for the log
  local filter=${MEGA_TESTS-*CudaSkinny*:*CudaVsCpu*PrefillAndDecode*}
  [[ -n $filter ]] || return 0
  timeout "${MEGA_TEST_TIMEOUT:-300}" ./build-gpu/tests/backend_test --gtest_filter="$filter" > "$OUT/mega_tests$1.log" 2>&1 ||
    echo "backend_test: rc $?"
  grep -E "^\[ +(FAILED|PASSED) |Failure|Expected|Which is|rror" "$OUT/mega_tests$1.log" | head -40 || true
}
bench() {  # $1: configs (';'-separated), $2: a label
  local configs cfg m round label
  IFS=';' read -r -a configs <<< "$1"
  for m in ${MEGA_MODELS:-qwen2.5-0.5b llama3.2-1b}; do
    for round in $(seq "${MEGA_ROUNDS:-2}"); do
      for cfg in "${configs[@]}"; do
        echo "== $m $cfg$2 (round $round)"
        label=$(echo "$cfg$2" | sed 's#[^A-Za-z0-9_.=-]#_#g; s#=#-#g').r$round
        env $cfg timeout 120 ./build-gpu/apps/baton-bench model --model "$MODELS/$m" --device cuda \
          --kv-cache-dtype bf16 --gen-batches "" ${MEGA_JSON:+--json "$OUT/mega.$m.$label.json"} \
          ${MEGA_ARGS:---batches 1 --prefill 16} > "$OUT/run.log" 2>&1 || echo "(this configuration failed: rc $?)"
        cat "$OUT/run.log" >> "$OUT/mega_runs.log"
        grep -E "${MEGA_SHOW:-decode batch|one-kernel|error|rror:}" "$OUT/run.log" || true
        if [[ $cfg =~ BATON_CUDA_MEGA_TIMES=([^ ]+) ]]; then  # whole timeline in $OUT/timelines.txt
          echo "== $m $cfg$2 (round $round)" >> "$OUT/timelines.txt"
          python3 bench/gpu/mega_times.py "${BASH_REMATCH[1]}" 2>&1 | tee -a "$OUT/timelines.txt" |
            grep -E "${MEGA_TIMES_SHOW:-layer takes|a layer,|chunk loops|thread|rows out|attention}" || true
        fi
      done
    done
  done
}
build
tests ""
MODELS=/tmp/baton-models
python3 bench/gpu/hf_reference.py make "$MODELS" > /dev/null 2>&1
bench "${MEGA_CONFIGS:-BATON_CUDA_MEGA=0;BATON_CUDA_MEGA=1}" ""
if [[ -n ${MEGA_NCU:-} ]]; then  # the one-kernel step under Nsight Compute (build with CUDAFLAGS=-lineinfo)
  NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  rm -f /tmp/mega.ncu-rep
  BATON_CUDA_MEGA=1 "$NCU" --set full --import-source yes --graph-profiling node -k regex:mega_kernel \
    --launch-skip "${MEGA_NCU_SKIP:-8}" --launch-count 1 -o /tmp/mega ./build-gpu/apps/baton-bench model \
    --model "$MODELS/$MEGA_NCU" --device cuda --kv-cache-dtype bf16 --batches 1 --steps 16 --prefill 16 \
    --gen-batches "" > "$OUT/ncu_run.log" 2>&1 || echo "ncu: rc $?"
  grep -E "^==PROF==|^decode|rror" "$OUT/ncu_run.log" | head -5 || true
  "$NCU" --import /tmp/mega.ncu-rep --page details > "$OUT/ncu_details.txt" 2>&1 || true
  grep -E "${MEGA_NCU_SHOW:-Duration|DRAM Throughput|Executed Ipc A|Issue Slots Busy|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|Stall|L2 Hit|Registers Per|Achieved Occ}" \
    "$OUT/ncu_details.txt" | head -40 || true
  for src in cuda sass; do
    "$NCU" --import /tmp/mega.ncu-rep --page source --csv --print-source $src > "$OUT/ncu_$src.csv" 2>/dev/null || true
    python3 bench/gpu/ncu_source.py "$OUT/ncu_$src.csv" "${MEGA_NCU_LINES:-30}" | cut -c1-200 || true
  done
fi
if [[ -n ${MEGA_SED:-}${MEGA_APPLY:-} ]]; then
  if [[ -n ${MEGA_APPLY:-} ]]; then
    echo "== rebuilt with: git apply $MEGA_APPLY"
    git apply $MEGA_APPLY
  else
    echo "== rebuilt with: sed '$MEGA_SED' src/backend/cuda/mega.cu"
    sed -i "$MEGA_SED" src/backend/cuda/mega.cu
  fi
  build
  tests .edit
  bench "${MEGA_SED_CONFIGS:-BATON_CUDA_MEGA=1}" " [edit]"
fi
rm -f "$OUT/run.log"
echo "total: $(( $(date +%s) - T0 )) s"
