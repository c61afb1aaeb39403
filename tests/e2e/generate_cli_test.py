"""e2e: the command-line tools as a user runs them. baton-make-model writes a random model,
baton-generate runs it (text and JSON), and bad input gets a one-line error and exit code 1.

usage: pytest tests/e2e/generate_cli_test.py [--bin-dir build/apps] [--models ../shared/models]
"""
import json
import os
import shutil
import subprocess

import pytest


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def gen(bin_dir):
    return os.path.join(bin_dir, "baton-generate")


@pytest.fixture(scope="module")
def model(bin_dir, tmp_path_factory):
    """A random model written by baton-make-model."""
    out = str(tmp_path_factory.mktemp("cli") / "demo")
    r = run([os.path.join(bin_dir, "baton-make-model"), "--out", out, "--num-layers", "2", "--hidden-size", "64",
             "--intermediate-size", "128", "--num-heads", "4", "--num-kv-heads", "2", "--num-merges", "200"])
    assert r.returncode == 0, f"baton-make-model failed: {r.stderr}"
    return out


@pytest.fixture(scope="module")
def json_args(gen, model):
    return [gen, "--model", model, "--prompt", "Once upon a time", "--max-tokens", "12", "--temperature", "0",
            "--ignore-eos", "--output", "json"]


@pytest.fixture(scope="module")
def json_run(json_args):
    return run(json_args)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
def test_random_model_has(model, name):
    assert os.path.exists(os.path.join(model, name)), f"random model lacks {name}"


def test_json_greedy_is_deterministic(json_args, json_run):
    # Text prompt, JSON output: greedy is deterministic, and the text is the decoded ids.
    assert json_run.returncode == 0, f"baton-generate json failed: {json_run.stderr}"
    out = json.loads(json_run.stdout.strip().splitlines()[-1])
    assert len(out["token_ids"]) == 12, f"expected 12 tokens, got {out}"
    assert isinstance(out["text"], str), "text missing"
    assert run(json_args).stdout == json_run.stdout, "greedy output differs between two runs"


def test_streamed_text_equals_json(json_args, json_run):
    # Streamed text mode prints the same text as the JSON mode.
    want = json.loads(json_run.stdout.strip().splitlines()[-1])["text"]
    r = run(json_args[:-2] + ["--output", "text"])
    assert r.returncode == 0, f"baton-generate text failed: {r.stderr}"
    assert r.stdout.rstrip("\n") == want, f"streamed text {r.stdout!r} != json text {want!r}"
    assert "tok/s" in r.stderr, "no timing line on stderr"


def goldens(models_dir):
    return json.load(open(os.path.join(models_dir, "goldens.json")))["tiny-qwen3"]


def test_reference_model_equals_goldens(gen, tiny_qwen3, models_dir):
    # A real reference model through the CLI equals the golden continuation (RoPE frequencies
    # as transformers had them for the goldens: BackendOptions::rope_bf16_frequencies).
    golden = goldens(models_dir)[1]
    r = run([gen, "--model", tiny_qwen3, "--prompt-ids", ",".join(map(str, golden["prompt_ids"])), "--max-tokens",
             "24", "--temperature", "0", "--ignore-eos", "--output", "json", "--rope-bf16-frequencies"])
    assert r.returncode == 0 and json.loads(r.stdout)["token_ids"] == golden["greedy_ids"], \
        f"CLI greedy ids differ from goldens: {r.stdout} {r.stderr}"


def test_prompts_file_batch_equals_goldens(gen, tiny_qwen3, models_dir, tmp_path):
    # A batch from --prompts-file: every golden prompt at once, each line its golden continuation.
    batch_file = tmp_path / "prompts.jsonl"
    batch_file.write_text("".join(json.dumps(g["prompt_ids"]) + "\n" for g in goldens(models_dir)))
    r = run([gen, "--model", tiny_qwen3, "--prompts-file", str(batch_file), "--max-tokens", "24", "--temperature",
             "0", "--ignore-eos", "--rope-bf16-frequencies"])
    assert r.returncode == 0, f"--prompts-file failed: {r.stderr}"
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["token_ids"] for x in lines] == [g["greedy_ids"] for g in goldens(models_dir)], \
        f"--prompts-file outputs differ from goldens: {r.stdout}"


def test_bad_prompts_file_line(gen, tiny_qwen3, tmp_path):
    batch_file = tmp_path / "prompts.jsonl"
    batch_file.write_text("[1, 2]\n[1, \"x\"]\n")
    r = run([gen, "--model", tiny_qwen3, "--prompts-file", str(batch_file)])
    assert r.returncode == 1 and "prompts.jsonl:2: not a JSON array of token ids" in r.stderr, \
        f"bad --prompts-file line: {r.returncode} {r.stderr}"


# Bad input: (arguments after baton-generate, what its one line of stderr says). MODEL stands for
# the random model, MODELS/ for the reference models' directory.
BAD_CASES = [
    pytest.param([], "--model is required", id="no-model"),
    pytest.param(["--model", "MODEL"], "give exactly one of --prompt, --prompt-ids and --prompts-file", id="no-prompt"),
    pytest.param(["--model", "MODEL", "--prompt", "x", "--max-tokens", "ten"], "is not an integer",
                 id="max-tokens-text"),
    pytest.param(["--model", "MODEL", "--prompt", "x", "--bogus"], "unknown argument", id="unknown-argument"),
    pytest.param(["--model", "/nonexistent", "--prompt-ids", "1"], "/nonexistent", id="no-model-dir"),
    pytest.param(["--model", "MODEL", "--prompt-ids", "1,abc"], "is not an integer", id="prompt-ids-text"),
    pytest.param(["--model", "MODEL", "--prompt-ids", "999999"], "outside the vocabulary", id="id-outside-vocab"),
    pytest.param(["--model", "MODEL", "--prompt", "x", "--temperature", "-1"], "temperature must be >= 0",
                 id="negative-temperature"),
    pytest.param(["--model", "MODEL", "--prompt", "x", "--kv-cache-dtype", "int3"], "not supported",
                 id="kv-dtype-int3"),
    pytest.param(["--model", "MODEL", "--prompt", "x", "--kv-cache-memory", "10"], "holds no block",
                 id="kv-memory-10-bytes"),
    pytest.param(["--model", "MODELS/stories260k", "--prompt", "x"], "no tokenizer.json", id="no-tokenizer"),
]


@pytest.mark.parametrize("argv, needle", BAD_CASES)
def test_bad_input_is_one_line_and_exit_1(gen, model, models_dir, argv, needle):
    argv = [model if a == "MODEL" else a.replace("MODELS/", models_dir + "/") for a in argv]
    r = run([gen, *argv])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, f"{argv}: exit {r.returncode}, want 1 ({r.stderr!r})"
    assert len(lines) == 1 and needle in lines[0], f"{argv}: stderr {r.stderr!r} lacks one line with {needle!r}"


def test_truncated_weights_are_one_line_error(gen, model, tmp_path):
    # A corrupt model directory is a one-line error too (a copy: the other tests keep the model).
    corrupt = shutil.copytree(model, tmp_path / "corrupt")
    with open(corrupt / "model.safetensors", "r+b") as f:
        f.truncate(100)
    r = run([gen, "--model", str(corrupt), "--prompt", "x"])
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, f"truncated weights: {r.stderr!r}"
