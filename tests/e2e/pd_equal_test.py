"""e2e: P/D disaggregation with real processes on 127.0.0.1 (baton-proxy + prefill + decode)
answers as a colocated server does (pd_faults_test.py and pd_proxy_test.py have the rest).

- greedy outputs through the proxy equal colocated outputs, completions and chat, streamed and
  not, for tiny-qwen3 (bf16 KV) and tiny-llama3 (fp8 KV), for every (prefill tp, decode tp) pair
- every request's KV came over the transfer engine, and no block stays used or held

usage: pytest tests/e2e/pd_equal_test.py [--bin-dir build/apps] [--models ../shared/models]
"""
import os

import pytest

from server_util import PROMPTS, SANITIZED, Fleet, answer, metric, start_server

# (prefill tp, decode tp, model, KV dtype).
EQUAL_CASES = [(p_tp, d_tp, model, kv) for p_tp, d_tp in [(1, 1), (2, 2), (2, 1), (1, 2), (4, 1)]
               for model, kv in [("tiny-qwen3", "bf16"), ("tiny-llama3", "fp8")]]
if SANITIZED:  # TP slices and fp8 scales in one case; tp 1 -> 1 runs in every other P/D test.
    EQUAL_CASES = [(2, 1, "tiny-llama3", "fp8")]


@pytest.mark.parametrize("p_tp, d_tp, model_name, kv_dtype", EQUAL_CASES,
                         ids=[f"tp{p}-{d}-{m}-{kv}" for p, d, m, kv in EQUAL_CASES])
def test_pd_equals_colocated(bin_dir, models_dir, p_tp, d_tp, model_name, kv_dtype):
    model = os.path.join(models_dir, model_name)
    # Sanitized runs: the two prompts that differ most (a long ASCII one, a multi-byte one).
    prompts = [PROMPTS[1], PROMPTS[3]] if SANITIZED else PROMPTS
    with (start_server(bin_dir, model, "--kv_cache_dtype", kv_dtype, "--threads", "1") as ref,
          Fleet(bin_dir, model, (p_tp,), (d_tp,), kv_dtype) as fleet):
        for prompt in prompts:
            for stream in (False, True):
                body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "stream": stream}
                if stream:
                    body["stream_options"] = {"include_usage": True}
                want = answer(ref.url, "/v1/completions", body)
                got = answer(fleet.url, "/v1/completions", body)
                assert got == want, (model_name, kv_dtype, p_tp, d_tp, prompt, stream, got, want)
                chat = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 16, "temperature": 0,
                        "stream": stream}
                want = answer(ref.url, "/v1/chat/completions", chat)
                got = answer(fleet.url, "/v1/chat/completions", chat)
                assert got == want, (model_name, kv_dtype, p_tp, d_tp, "chat", prompt, stream, got, want)
        d = fleet.decodes[0]
        # Every request's KV came over the transfer engine; nothing was recomputed.
        assert metric(d.url, "baton:kv_transfers_total") == len(prompts) * 4, metric(d.url, "baton:kv_transfers_total")
        assert metric(d.url, "baton:kv_transfer_failures_total") == 0
        assert metric(d.url, "baton:prompt_tokens_total") == 0, "decode computed prompt tokens itself"
        fleet.assert_no_leaks()
        assert metric(fleet.prefills[0].url, "baton:kv_released_by_reader_total") == len(prompts) * 4
