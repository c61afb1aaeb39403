#!/usr/bin/env bash
# The main job: installs what is missing, builds, and generates text.
#   scripts/demo.sh                         # a small random-weight model (its text is noise)
#   scripts/demo.sh --model /path/to/hf-dir # any Llama / Qwen2 / Qwen3 / Mistral HF directory
# Extra arguments after --model DIR go to baton-generate (e.g. --prompt "..." --max-tokens 64).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"

MODEL=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
if [ -z "$MODEL" ]; then
  MODEL="$BUILD_DIR/demo-model"
  if [ ! -f "$MODEL/model.safetensors" ]; then
    "$BUILD_DIR/apps/baton-make-model" --out "$MODEL"
  fi
  echo "demo: using a RANDOM-WEIGHT Llama model in $MODEL, so the generated text is noise."
  echo "demo: for real text, pass a Hugging Face model directory: scripts/demo.sh --model /path/to/Qwen2.5-0.5B-Instruct"
fi
if [ ${#EXTRA[@]} -eq 0 ]; then
  EXTRA=(--prompt "Once upon a time" --max-tokens 48 --temperature 0)
fi
echo "demo: baton-generate --model $MODEL ${EXTRA[*]}"
"$BUILD_DIR/apps/baton-generate" --model "$MODEL" "${EXTRA[@]}"
