#!/usr/bin/env bash
# Session 31: which RoPE frequencies transformers uses for a bf16 checkpoint loaded as fp32 or
# bf16, and baton's agreement with transformers fp32 (free-running and teacher-forced) with the
# frequencies in fp32 (now the default) or rounded to bf16 (--rope-bf16-frequencies; baton's rule
# for bf16 checkpoints before this session). The run recorded in `git show
# 455d66a:bench/results/gpu_h200_session31/runs.txt` used a one-off switch for the fp32 ones instead.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-out}
BUILD_TARGET=baton-generate bash bench/gpu/build.sh
M=/tmp/baton-models
python3 bench/gpu/hf_reference.py make $M > /dev/null 2>&1
python3 - <<'PY' 2>&1 | grep -v Warn
import torch, transformers
for name in ("qwen2.5-0.5b", "llama3.2-1b"):
    for dt in (torch.float32, torch.bfloat16):
        m = transformers.AutoModelForCausalLM.from_pretrained(f"/tmp/baton-models/{name}", dtype=dt)
        f = m.model.rotary_emb.inv_freq
        exact = getattr(m.model.rotary_emb, "original_inv_freq", None)
        print(name, dt, "inv_freq", f.dtype, f[:6].tolist(), "bf16-representable:",
              bool((f.float() == f.float().bfloat16().float()).all()))
PY
for m in qwen2.5-0.5b llama3.2-1b; do
  python3 bench/gpu/hf_reference.py greedy $M/$m $OUT/$m 2>&1 | tail -1
  for cfg in "" --rope-bf16-frequencies; do
    ./build-gpu/apps/baton-generate --model $M/$m --device cuda --prompts-file $OUT/$m.forced.jsonl $cfg \
      --max-tokens 1 --ignore-eos --temperature 0 > $OUT/$m.forced.$cfg.jsonl 2> /dev/null
    ./build-gpu/apps/baton-generate --model $M/$m --device cuda --prompts-file $OUT/$m.prompts.jsonl $cfg \
      --max-tokens 32 --ignore-eos --temperature 0 > $OUT/$m.free.$cfg.jsonl 2> /dev/null
    echo "== $m ${cfg:-fp32 frequencies}"
    python3 bench/gpu/hf_reference.py compare $OUT/$m $OUT/$m.free.$cfg.jsonl --forced $OUT/$m.forced.$cfg.jsonl |
      python3 -c 'import json, sys; s = json.load(sys.stdin); f = s.pop("forced"); m = f.pop("baton_misses"); s.pop("divergences"); print(json.dumps(s)); print("forced:", json.dumps(f))'
  done
done
