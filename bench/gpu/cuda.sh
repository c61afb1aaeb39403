#!/usr/bin/env bash
# The CUDA backend on the lent GPU machine, in one call (carry .device from prepare_deps.sh):
#   bash bench/gpu/cuda.sh test    build, then the CUDA tests (goldens with bf16 and fp8 KV, CPU
#                                  comparisons, device sampling) and the CPU goldens
#   bash bench/gpu/cuda.sh bench   build, then for random-weight models with the shapes of
#                                  Qwen2.5-0.5B and Llama-3.2-1B: greedy output against
#                                  transformers, baton-bench model, transformers' generate()
#   bash bench/gpu/cuda.sh all     both
#   bash bench/gpu/cuda.sh profile where a step's time goes, kernel by kernel (BATON_CUDA_PROFILE=1);
#                                  PROFILE_MODELS="qwen2.5-0.5b llama3.2-1b", PROFILE_ARGS="ARGS|ARGS"
#   bash bench/gpu/cuda.sh ab      decode step time with our skinny GEMMs and programmatic dependent
#                                  launch, each turned off in turn (BATON_CUDA_GEMV=0, BATON_CUDA_PDL=0);
#                                  AB_CONFIGS="default;BATON_CUDA_PDL=0" picks configurations,
#                                  AB_ROUNDS=2 runs the list that many times, interleaved; AB_ARGS
#                                  go to baton-bench model (e.g. "--batches 8 --prefill 256")
# Results go to $OUT (logs, JSON); the models are written to /tmp.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
MODE=${1:-all}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
T0=$(date +%s)
bash bench/gpu/build.sh
echo "build: $(( $(date +%s) - T0 )) s"

if [[ $MODE == test || $MODE == all ]]; then
  export BATON_MODELS_DIR=$PWD/.device/models
  ./build-gpu/tests/backend_test --gtest_filter='*Cuda*:Models/GoldensTest.*_tp1' 2>&1 | tee "$OUT/backend_test.log" |
    grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) |Failure|Expected|Which is|actual|error" | head -150 || true
  ./build-gpu/tests/engine_test --gtest_brief=1 2>&1 | tail -3 | tee "$OUT/engine_test.log"
  python3 bench/gpu/hf_reference.py bf16-error "$BATON_MODELS_DIR" --json "$OUT/hf_bf16_error.json" 2>&1 | grep -v Warn
fi

if [[ $MODE == bench || $MODE == all ]]; then
  MODELS=/tmp/baton-models
  python3 bench/gpu/hf_reference.py make "$MODELS" 2>&1 | { grep -v Warning || true; } | tail -3
  for m in qwen2.5-0.5b llama3.2-1b; do
    python3 bench/gpu/hf_reference.py greedy "$MODELS/$m" "$OUT/$m" 2>&1 | tail -1
    ./build-gpu/apps/baton-generate --model "$MODELS/$m" --device cuda --prompts-file "$OUT/$m.prompts.jsonl" \
      --max-tokens 32 --ignore-eos --temperature 0 > "$OUT/$m.baton.jsonl" 2> "$OUT/$m.baton.log" ||
      { tail -5 "$OUT/$m.baton.log"; exit 1; }
    tail -1 "$OUT/$m.baton.log"
    python3 bench/gpu/hf_reference.py compare "$OUT/$m" "$OUT/$m.baton.jsonl"
    for kv in bf16 fp8; do
      ./build-gpu/apps/baton-bench model --model "$MODELS/$m" --device cuda --kv-cache-dtype $kv \
        --json "$OUT/$m.$kv.bench.json" 2>&1 | tee "$OUT/$m.$kv.bench.txt"
    done
    python3 bench/gpu/hf_reference.py generate "$MODELS/$m" --json "$OUT/$m.hf_generate.json" 2>&1 | grep -v Warn
  done
fi
if [[ $MODE == profile || $MODE == all ]]; then
  # Where a step's time goes: kernels timed one by one (no graphs), by default on the Llama-shaped model.
  MODELS=/tmp/baton-models
  python3 bench/gpu/hf_reference.py make "$MODELS" > /dev/null 2>&1
  # PROFILE_ARGS picks the runs ("|" between them); the default: decode at batch 1 and a prefill-bound run.
  IFS='|' read -r -a runs <<< "${PROFILE_ARGS:---batches 1 --steps 20 --prefill 16|--batches 1 --steps 1 --context 16 --prefill 2048}"
  for m in ${PROFILE_MODELS:-llama3.2-1b}; do
    for args in "${runs[@]}"; do
      echo "profile: $m $args"
      BATON_CUDA_PROFILE=1 ./build-gpu/apps/baton-bench model --model "$MODELS/$m" --device cuda $args \
        --gen-batches "" 2>&1 | grep -vE "cuda backend:|^device|^model" | tail -30
    done
  done
fi
if [[ $MODE == ab ]]; then
  MODELS=/tmp/baton-models
  python3 bench/gpu/hf_reference.py make "$MODELS" > /dev/null 2>&1
  IFS=';' read -r -a configs <<< "${AB_CONFIGS:-default;BATON_CUDA_PDL=0;BATON_CUDA_GEMV=0;BATON_CUDA_GEMV=0 BATON_CUDA_PDL=0}"
  for m in qwen2.5-0.5b llama3.2-1b; do
    for round in $(seq "${AB_ROUNDS:-1}"); do
      for cfg in "${configs[@]}"; do
        [[ $cfg == default ]] && cfg=""
        echo "== $m ${cfg:-default} (round $round)"
        label=$(echo "${cfg:-default}" | tr ' =' '_-').r$round
        env $cfg ./build-gpu/apps/baton-bench model --model "$MODELS/$m" --device cuda --kv-cache-dtype bf16 \
          --gen-batches "" --json "$OUT/ab.$m.$label.json" ${AB_ARGS:-} 2>&1 | awk '!/cuda backend:/ || /decode graph/'
      done
    done
  done
fi
echo "total: $(( $(date +%s) - T0 )) s"
