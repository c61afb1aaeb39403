#!/usr/bin/env bash
# The CUDA backend on the lent GPU machine, in one call (carry .device from prepare_deps.sh):
#   bash bench/gpu/cuda.sh test    build, then the CUDA tests (goldens with bf16 and fp8 KV, CPU
#                                  comparisons, device sampling) and the CPU goldens
#   bash bench/gpu/cuda.sh bench   build, then for random-weight models with the shapes of
#                                  Qwen2.5-0.5B and Llama-3.2-1B: greedy output against
#                                  transformers, baton-bench model, transformers' generate()
#   bash bench/gpu/cuda.sh all     both
#   bash bench/gpu/cuda.sh greedy  bench's greedy checks alone: free-running and teacher-forced
#                                  against transformers fp32 (hf_reference.py compare --forced)
#   bash bench/gpu/cuda.sh trace   the decode step inside its CUDA graph, kernel by kernel, from an
#                                  Nsight Systems trace (bench/gpu/nsys_sum.py); TRACE_MODELS,
#                                  TRACE_BATCHES="1 8 64", TRACE_CONFIGS="default;BATON_CUDA_GEMV=0"
#   bash bench/gpu/cuda.sh ncu     one kernel of the decode step under Nsight Compute's full set: its
#                                  sections and the source lines it stalls on most (build with
#                                  CUDAFLAGS=-lineinfo for CUDA lines); NCU_MODEL=llama3.2-1b,
#                                  NCU_KERNEL=regex:decode_kernel, NCU_BATCH=1, NCU_SKIP=200
#   bash bench/gpu/cuda.sh ab      decode step time on the default path and on the backend's
#                                  alternate paths (the BATON_CUDA_* switches, backend.h: CudaPaths);
#                                  AB_CONFIGS="default;BATON_CUDA_GEMV=0" picks configurations,
#                                  AB_ROUNDS=2 runs the list that many times, interleaved; AB_ARGS
#                                  go to baton-bench model (e.g. "--batches 8 --prefill 256"); a
#                                  configuration "bin=PATH ..." runs another build's baton-bench
# Results go to $OUT (logs, JSON); the models are written to /tmp.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
MODE=${1:-all}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
T0=$(date +%s)
# bench builds only the two programs it runs (a full build takes ~190 s there).
[[ $MODE != bench ]] || export BUILD_TARGET=${BUILD_TARGET:-baton-bench baton-generate}
[[ $MODE != greedy ]] || export BUILD_TARGET=${BUILD_TARGET:-baton-generate}
bash bench/gpu/build.sh
echo "build: $(( $(date +%s) - T0 )) s"

if [[ $MODE == test || $MODE == all ]]; then
  export BATON_MODELS_DIR=$PWD/.device/models
  ./build-gpu/tests/backend_test --gtest_filter='*Cuda*:Models/GoldensTest.*_tp1' 2>&1 | tee "$OUT/backend_test.log" |
    grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) |Failure|Expected|Which is|actual|error" | head -150 || true
  ./build-gpu/tests/engine_test --gtest_brief=1 2>&1 | tail -3 | tee "$OUT/engine_test.log"
  python3 bench/gpu/hf_reference.py bf16-error "$BATON_MODELS_DIR" --json "$OUT/hf_bf16_error.json" 2>&1 | grep -v Warn
fi

if [[ $MODE == bench || $MODE == all || $MODE == greedy ]]; then
  MODELS=/tmp/baton-models
  python3 bench/gpu/hf_reference.py make "$MODELS" 2>&1 | { grep -v Warning || true; } | tail -3
  for m in qwen2.5-0.5b llama3.2-1b; do
    python3 bench/gpu/hf_reference.py greedy "$MODELS/$m" "$OUT/$m" 2>&1 | tail -1
    ./build-gpu/apps/baton-generate --model "$MODELS/$m" --device cuda --prompts-file "$OUT/$m.prompts.jsonl" \
      --max-tokens 32 --ignore-eos --temperature 0 > "$OUT/$m.baton.jsonl" 2> "$OUT/$m.baton.log" ||
      { tail -5 "$OUT/$m.baton.log"; exit 1; }
    tail -1 "$OUT/$m.baton.log"
    # Teacher forcing: every prompt + the first k of transformers' tokens, one token each.
    ./build-gpu/apps/baton-generate --model "$MODELS/$m" --device cuda --prompts-file "$OUT/$m.forced.jsonl" \
      --max-tokens 1 --ignore-eos --temperature 0 > "$OUT/$m.baton.forced.jsonl" 2>> "$OUT/$m.baton.log" ||
      { tail -5 "$OUT/$m.baton.log"; exit 1; }
    python3 bench/gpu/hf_reference.py compare "$OUT/$m" "$OUT/$m.baton.jsonl" --forced "$OUT/$m.baton.forced.jsonl" |
      python3 -c 'import json, sys; s = json.load(sys.stdin); f = s.pop("forced"); m = f.pop("baton_misses"); print(json.dumps(s)); print("teacher-forced:", json.dumps(f)); print("misses:", json.dumps(m))'
    [[ $MODE == greedy ]] && continue
    for kv in bf16 fp8; do
      ./build-gpu/apps/baton-bench model --model "$MODELS/$m" --device cuda --kv-cache-dtype $kv \
        --json "$OUT/$m.$kv.bench.json" 2>&1 | tee "$OUT/$m.$kv.bench.txt"
    done
    python3 bench/gpu/hf_reference.py generate "$MODELS/$m" --json "$OUT/$m.hf_generate.json" 2>&1 | grep -v Warn
  done
fi
if [[ $MODE == trace ]]; then
  MODELS=/tmp/baton-models
  python3 bench/gpu/hf_reference.py make "$MODELS" > /dev/null 2>&1
  # Nsight Systems where it is installed; else our CUPTI tracer (bench/gpu/cupti_trace.cpp), built
  # against the CUPTI of the CUDA toolkit or of the PyPI package nvidia-cuda-cupti.
  NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1 || true)
  if [[ -z $NSYS ]]; then
    H=$(find /usr/local/cuda/ /usr/local/cuda/extras/CUPTI /usr/lib/python3*/ /usr/local/lib/python3*/ \
      -name cupti_activity.h 2>/dev/null | head -1 || true)
    [[ -n $H ]] || { echo "trace: neither nsys nor CUPTI on this machine"; exit 1; }
    INC=$(dirname "$H")
    LIB=$(find "$INC/.." /usr/local/cuda/ -name 'libcupti.so*' 2>/dev/null | head -1)
    for v in 12 11 10 9 8 7; do grep -q "CUpti_ActivityKernel$v;" "$H" && break; done
    echo "trace: CUPTI $H, $LIB, CUpti_ActivityKernel$v"
    g++ -O2 -shared -fPIC -std=c++20 -I"$INC" -I/usr/local/cuda/include -DKREC=CUpti_ActivityKernel$v \
      bench/gpu/cupti_trace.cpp "$LIB" -Wl,-rpath,"$(dirname "$LIB")" -o /tmp/libcupti_trace.so
  fi
  for m in ${TRACE_MODELS:-qwen2.5-0.5b llama3.2-1b}; do
    IFS=';' read -r -a tconfigs <<< "${TRACE_CONFIGS:-default}"
    for b in ${TRACE_BATCHES:-1}; do for cfg in "${tconfigs[@]}"; do
      [[ $cfg == default ]] && cfg=""
      echo "== trace $m batch $b ${cfg:-default}"
      rm -f /tmp/trace.nsys-rep /tmp/trace.sqlite /tmp/trace_cuda_gpu_trace.csv
      cmd=(env $cfg ./build-gpu/apps/baton-bench model --model "$MODELS/$m" --device cuda --kv-cache-dtype bf16 --batches "$b"
        --steps 8 --prefill 256 --gen-batches "" ${TRACE_ARGS:-})
      if [[ -n $NSYS ]]; then
        "$NSYS" profile -q --cuda-graph-trace=node -t cuda -o /tmp/trace "${cmd[@]}" 2>&1 | grep "^decode" || true
        "$NSYS" stats -q --report cuda_gpu_trace --format csv -o /tmp/trace /tmp/trace.nsys-rep > /dev/null 2>&1
      else
        CUDA_INJECTION64_PATH=/tmp/libcupti_trace.so CUPTI_TRACE_CSV=/tmp/trace_cuda_gpu_trace.csv "${cmd[@]}" 2>&1 |
          grep "^decode" || true
      fi
      python3 bench/gpu/nsys_sum.py /tmp/trace_cuda_gpu_trace.csv
    done; done
  done
fi
if [[ $MODE == ncu ]]; then
  MODELS=/tmp/baton-models
  python3 bench/gpu/hf_reference.py make "$MODELS" > /dev/null 2>&1
  NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  rm -f /tmp/kernel.ncu-rep
  "$NCU" --set full --import-source yes --graph-profiling node -k "${NCU_KERNEL:-regex:decode_kernel}" \
    --launch-skip "${NCU_SKIP:-200}" --launch-count 1 -o /tmp/kernel ./build-gpu/apps/baton-bench model \
    --model "$MODELS/${NCU_MODEL:-llama3.2-1b}" --device cuda --kv-cache-dtype bf16 --batches "${NCU_BATCH:-1}" \
    --steps 16 --prefill 256 --gen-batches "" 2>&1 | grep -E "^==PROF==|^decode|rror" | head -5 || true
  "$NCU" --import /tmp/kernel.ncu-rep --page details 2>&1 | grep -vE "^ +-+ +-+ +-+$|^\s*$" | head -230
  for src in cuda sass; do
    "$NCU" --import /tmp/kernel.ncu-rep --page source --csv --print-source $src > /tmp/kernel.$src.csv 2>/dev/null || true
    python3 bench/gpu/ncu_source.py /tmp/kernel.$src.csv ${NCU_LINES:-40} || true
  done
fi
if [[ $MODE == ab ]]; then
  MODELS=/tmp/baton-models
  python3 bench/gpu/hf_reference.py make "$MODELS" > /dev/null 2>&1
  IFS=';' read -r -a configs <<< "${AB_CONFIGS:-default;BATON_CUDA_GEMV=0;BATON_CUDA_GEMM_TUNE=0;BATON_CUDA_ATTN_MMA_TOKENS=0}"
  for m in qwen2.5-0.5b llama3.2-1b; do
    for round in $(seq "${AB_ROUNDS:-1}"); do
      for cfg in "${configs[@]}"; do
        [[ $cfg == default ]] && cfg=""
        echo "== $m ${cfg:-default} (round $round)"
        label=$(echo "${cfg:-default}" | sed 's#[ /]#_#g; s#=#-#g').r$round
        bin=./build-gpu/apps/baton-bench
        if [[ $cfg == bin=* ]]; then  # "bin=PATH [VAR=VALUE ...]": another build, e.g. of the commit before
          bin=${cfg%% *} && bin=${bin#bin=}
          [[ $cfg == *" "* ]] && cfg=${cfg#* } || cfg=""
        fi
        env $cfg "$bin" model --model "$MODELS/$m" --device cuda --kv-cache-dtype bf16 \
          --gen-batches "" --json "$OUT/ab.$m.$label.json" ${AB_ARGS:-} 2>&1 | awk '!/cuda backend:/ || /decode graph/' ||
          echo "(this configuration failed)"
      done
    done
  done
fi
echo "total: $(( $(date +%s) - T0 )) s"
