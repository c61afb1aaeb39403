#!/usr/bin/env bash
# baton-server vs llama.cpp's server (PyPI llama-cpp-python[server], built here from its sdist)
# on the same CPU, model and prompts, with baton-bench serve at the same request rates.
#
#   bench/peers/llama_cpp.sh [--model ../shared/models/tiny-qwen3] [--rates 2,8,inf]
#       [--num-prompts 60] [--input-len 256] [--output-len 64] [--out bench/out/llama_cpp]
#
# Setup (once, ~10 min on 2 cores): .venv-llama with llama-cpp-python[server] (compiles llama.cpp),
# PyTorch, and gguf-py from the same sdist; then llama.cpp's own convert_hf_to_gguf.py writes an
# f32 GGUF (baton computes in fp32 on the CPU). The test models' tokenizer is a small byte-level BPE
# that the converter's table of known pre-tokenizers does not list: the conversion names it
# "gpt-2" (its pre-tokenizer is plain ByteLevel with GPT-2's regex); nothing else is changed.
# llama.cpp's server takes text prompts only and sends no usage in streams, so both servers get
# the same text prompts (--text-prompts) and tokens are counted from the stream (--no-token-ids):
# one chunk per token there; baton's usage counts its tokens. Its server interrupts a running stream
# when a new request comes (--interrupt_requests, on by default): off here, requests queue.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=../shared/models/tiny-qwen3 RATES=2,8,inf NUM=60 IN_LEN=256 OUT_LEN=64 OUT=bench/out/llama_cpp
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --rates) RATES="$2"; shift 2 ;;
    --num-prompts) NUM="$2"; shift 2 ;;
    --input-len) IN_LEN="$2"; shift 2 ;;
    --output-len) OUT_LEN="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "llama_cpp.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
VER=0.3.36
VENV=.venv-llama
SRC=/tmp/llama_cpp_python-$VER
if ! $VENV/bin/python -c "import llama_cpp.server, torch, gguf" 2>/dev/null; then
  python3 -m venv $VENV
  $VENV/bin/pip download -q --no-deps --no-binary=:all: "llama-cpp-python==$VER" -d /tmp
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    $VENV/bin/pip install -q "/tmp/llama_cpp_python-$VER.tar.gz[server]"
  tar xzf "/tmp/llama_cpp_python-$VER.tar.gz" -C /tmp "llama_cpp_python-$VER/vendor/llama.cpp"
  $VENV/bin/pip install -q torch numpy sentencepiece protobuf transformers "$SRC/vendor/llama.cpp/gguf-py"
fi
[ -d "$SRC/vendor/llama.cpp/conversion" ] || tar xzf "/tmp/llama_cpp_python-$VER.tar.gz" -C /tmp "llama_cpp_python-$VER/vendor/llama.cpp"
mkdir -p "$OUT"
GGUF="$OUT/$(basename "$MODEL")-f32.gguf"
$VENV/bin/python - "$SRC/vendor/llama.cpp" "$MODEL" --outfile "$GGUF" --outtype f32 <<'EOF' 2>&1 | tail -1
import runpy, sys
sys.path.insert(0, sys.argv[1])
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = [sys.argv[1] + "/convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
EOF

source bench/procs.sh
trap stop_all EXIT
# llama.cpp's server has no ignore_eos: EOS is biased away there (baton gets ignore_eos), so that
# every request makes the same number of tokens on both.
EOS=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1] + '/config.json'))['eos_token_id'])" "$MODEL")
sweep() {  # label url [extra request body]
  IFS=, read -ra rates <<<"$RATES"
  # A new seed per rate: the same prompts again would hit the server's prefix cache.
  local seed=0
  for r in "${rates[@]}"; do
    seed=$((seed + 1))
    build/apps/baton-bench serve --base-url "$2" --label "$1" --request-rate "$r" --num-prompts "$NUM" --warmup 2 \
      --tokenizer "$MODEL" --text-prompts --no-token-ids --random-input-len "$IN_LEN" --random-output-len "$OUT_LEN" \
      --seed "$seed" ${3:+--extra-body "$3"} --json "$OUT/${1}_rate$r.json" > "$OUT/${1}_rate$r.txt" || true
    grep -E "Successful|Failed req|Output token|Median tpot" "$OUT/${1}_rate$r.txt" | tr -s ' ' | paste -sd ';'
  done
}
build/apps/baton-server --model "$MODEL" --host 127.0.0.1 --port 18601 --log-level warning > "$OUT/baton.log" 2>&1 &
PIDS+=($!)
wait_url http://127.0.0.1:18601/v1/models 60 && sweep baton http://127.0.0.1:18601
stop_all
$VENV/bin/python -m llama_cpp.server --model "$GGUF" --host 127.0.0.1 --port 18602 --n_threads "$(nproc)" \
  --n_ctx 4096 --interrupt_requests False --model_alias "$(basename "$MODEL")" > "$OUT/llama_cpp.log" 2>&1 &
PIDS+=($!)
wait_url http://127.0.0.1:18602/v1/models 60 && sweep llama.cpp http://127.0.0.1:18602 "{\"logit_bias\": {\"$EOS\": -100}}"
stop_all
build/apps/baton-bench report "$OUT"/*_rate*.json --table "$OUT/compare.md" --plot "$OUT/compare.png" \
  --title "baton vs llama.cpp server, $(basename "$MODEL") on $(nproc) CPU cores, in $IN_LEN / out $OUT_LEN"
