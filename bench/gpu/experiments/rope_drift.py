#!/usr/bin/env python3
"""Session 31: how far a bf16 checkpoint's logits move when its RoPE frequencies are rounded to bf16
(what baton did before, --rope-bf16-frequencies now), by position. transformers in fp32 on the
GPU, one random sequence of N tokens, the logits at every position with fp32 and with rounded
frequencies; prints the max |difference| over the vocabulary at a few positions, relative to the
logits' standard deviation there, and how often the argmax differs up to each position.
  python3 rope_drift.py MODEL_DIR [N]"""
import sys

import torch
import transformers

path, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8192
model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to("cuda").eval()
rotary = model.model.rotary_emb
exact = rotary.inv_freq.clone()
ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(0)).to("cuda")
out = {}
with torch.no_grad():
    for label, f in (("fp32", exact), ("bf16", exact.bfloat16().float())):
        rotary.inv_freq.copy_(f)
        out[label] = model(ids).logits[0].float()
diff = (out["fp32"] - out["bf16"]).abs().max(-1).values / out["fp32"].std(-1)
flips = (out["fp32"].argmax(-1) != out["bf16"].argmax(-1)).float()
print(f"{path}: {n} positions, max |logit difference| / logit std, and argmax flips so far")
for p in (16, 64, 256, 1024, 2048, 4096, 8192, 16384):
    if p <= n:
        print(f"  position {p:6d}: {diff[p - 1].item():.4f} (max over positions <= it {diff[:p].max().item():.4f}), "
              f"flips {int(flips[:p].sum())}/{p}")
