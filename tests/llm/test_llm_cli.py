"""`effml generate` and `effml serve-bench` end to end on the toy models (fast); one-line errors."""

import json

import pytest

from effml.cli import main
from effml.llm import registry
from effml.llm.registry import CharTokenizer, LoadedModel


def run_json(capsys, *argv) -> dict:
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON object on stdout


def test_generate_json(capsys):
    d = run_json(capsys, "generate", "--model", "tiny", "--prompt", "In the beginning", "--max-new-tokens", "12",
                 "--ignore-eos", "--kv", "contiguous")
    assert d["mode"] == "plain" and d["result"]["new_tokens"] == 12 and d["result"]["prompt_tokens"] == 16
    assert d["text"] == CharTokenizer.ascii().decode(d["result"]["tokens"])


def test_generate_speculative_matches_plain_greedy(capsys):
    plain = run_json(capsys, "generate", "--model", "tiny", "--prompt", "abc", "--max-new-tokens", "20",
                     "--ignore-eos")
    spec = run_json(capsys, "generate", "--model", "tiny", "--prompt", "abc", "--max-new-tokens", "20",
                    "--ignore-eos", "--speculative", "tiny-draft", "--gamma", "auto")
    assert spec["mode"] == "speculative" and spec["result"]["tokens"] == plain["result"]["tokens"]
    for key in ("alpha", "c", "tokens_per_target_call", "formula_speedup", "gamma"):
        assert key in spec["result"]
    sub = run_json(capsys, "generate", "--model", "tiny", "--prompt", "abc", "--max-new-tokens", "20", "--ignore-eos",
                   "--speculative", "layers:0", "--gamma", "3")
    assert sub["result"]["tokens"] == plain["result"]["tokens"]
    both = run_json(capsys, "generate", "--model", "tiny", "--prompt", "abcabcab", "--max-new-tokens", "20",
                    "--ignore-eos", "--speculative", "lookup+tiny-draft", "--gamma", "3")
    ref = run_json(capsys, "generate", "--model", "tiny", "--prompt", "abcabcab", "--max-new-tokens", "20",
                   "--ignore-eos")
    assert both["result"]["tokens"] == ref["result"]["tokens"] and both["result"]["lookup_rounds"] >= 1


def test_generate_kernel_choice_names_the_kernel(capsys):
    """--kernel exact keeps fp32 activations (no gemv_a8 anywhere in the plan); the default names gemv_a8 where the
    CPU has it (AVX-512 VNNI or AVX2); the greedy tokens of both are printed for the same prompt."""
    from effml import native

    ext = native.load()
    runs = {k: run_json(capsys, "generate", "--model", "tiny", "--format", "int4", "--kernel", k, "--prompt", "abc",
                        "--max-new-tokens", "8", "--ignore-eos") for k in ("packed", "exact")}
    assert not any("gemv_a8" in k for k in runs["exact"]["engine"]["kernels"])
    a8 = any("gemv_a8" in k for k in runs["packed"]["engine"]["kernels"])
    assert a8 == bool(ext is not None and ext.a8_isa())
    assert all(len(r["result"]["tokens"]) == 8 for r in runs.values())
    assert main(["generate", "--model", "tiny", "--kernel", "fast", "--prompt", "abc"]) == 2  # argparse: one line
    assert "--kernel" in capsys.readouterr().err


def test_generate_streams_text(capsys):
    assert main(["generate", "--model", "tiny", "--prompt", "xyz", "--max-new-tokens", "8", "--ignore-eos"]) == 0
    out = capsys.readouterr().out
    assert "8 tokens in" in out and "tok/s" in out


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


def test_generate_bad_input(capsys, monkeypatch):
    assert "prompt" in _one_line_error(capsys, ["generate", "--model", "tiny", "--prompt", "  "])
    assert "context of 256" in _one_line_error(capsys, ["generate", "--model", "tiny", "--prompt", "a" * 200,
                                                        "--max-new-tokens", "100"])
    assert "--model 'gpt-9' is not a known LLM name" in _one_line_error(capsys, ["generate", "--model", "gpt-9",
                                                                                 "--prompt", "hi"])
    assert "--gamma" in _one_line_error(capsys, ["generate", "--model", "tiny", "--prompt", "hi", "--speculative",
                                                 "tiny-draft", "--gamma", "many"])
    # a draft with another vocabulary (50 ids instead of 97): refused before any decoding
    from effml.llm.model import ModelArgs, build

    monkeypatch.setattr(registry.MODELS, "_items", {**registry.MODELS._items, "tiny-v50": lambda: LoadedModel(
        "tiny-v50", build(ModelArgs.preset("tiny", vocab_size=50)), CharTokenizer.ascii())})
    msg = _one_line_error(capsys, ["generate", "--model", "tiny", "--prompt", "hi", "--speculative", "tiny-v50"])
    assert "draft vocabulary (50 tokens) differs from the target's (97)" in msg
    assert "lookup[:N]+DRAFT" in _one_line_error(capsys, ["generate", "--model", "tiny", "--prompt", "hi",
                                                          "--speculative", "lookup+lookup"])


def test_serve_bench_json_both(capsys):
    d = run_json(capsys, "serve-bench", "--model", "tiny", "--requests", "8", "--rate", "100", "--mean-output", "8",
                 "--max-output", "24", "--max-batch", "4", "--block-size", "8")
    st, co = d["results"]["static"], d["results"]["continuous"]
    assert st["generated_tokens"] == co["generated_tokens"] and st["requests"] == co["requests"] == 8
    assert d["continuous_over_static_throughput"] == pytest.approx(co["throughput_tok_s"] / st["throughput_tok_s"])
    for key in ("latency_p50_s", "latency_p99_s", "ttft_p50_s", "ttft_p99_s", "kv"):
        assert key in co
    assert "paged" in co["kv"] and "contiguous" in st["kv"]


def test_serve_bench_prefill_budget(capsys):
    # --max-prefill-tokens 1: every prompt is longer than the budget, so each prefills alone; the same work is done
    args = ["serve-bench", "--model", "tiny", "--requests", "6", "--rate", "100", "--mean-output", "4",
            "--max-output", "8", "--batching", "continuous"]
    alone = run_json(capsys, *args, "--max-prefill-tokens", "1")["results"]["continuous"]
    joint = run_json(capsys, *args)["results"]["continuous"]
    assert alone["generated_tokens"] == joint["generated_tokens"] and alone["prompt_tokens"] == joint["prompt_tokens"]
    assert main([*args, "--max-prefill-tokens", "0"]) == 2  # a bad command line: one stderr line naming the flag
    assert "--max-prefill-tokens" in capsys.readouterr().err


def test_serve_bench_table(capsys):
    assert main(["serve-bench", "--model", "tiny", "--requests", "4", "--rate", "100", "--mean-output", "4",
                 "--batching", "continuous"]) == 0
    out = capsys.readouterr().out
    assert "continuous" in out and "throughput" in out


def test_serve_bench_prefix_cache(capsys):
    # the held-out prompts share openings ("What are three interesting facts about ..."): with 4-token blocks the
    # paged engines find some of them in the pool; the static engine's contiguous cache has no prefix caching
    d = run_json(capsys, "serve-bench", "--model", "tiny", "--requests", "8", "--rate", "100", "--mean-output", "4",
                 "--max-output", "8", "--block-size", "4", "--batching", "all", "--prefix-cache")
    r = d["results"]
    assert r["continuous"]["cached_prompt_tokens"] > 0 and r["chunked"]["cached_prompt_tokens"] >= 0
    assert r["static"]["cached_prompt_tokens"] == 0
    assert r["continuous"]["cached_prompt_tokens"] % 4 == 0 < r["continuous"]["prompt_tokens"]


def test_serve_bench_int4_format(capsys):
    d = run_json(capsys, "serve-bench", "--model", "tiny", "--requests", "4", "--rate", "100", "--mean-output", "4",
                 "--max-output", "8", "--format", "int4", "--batching", "continuous")
    assert d["format"] == "int4" and d["results"]["continuous"]["generated_tokens"] > 0
    assert any("int4" in k for k in d["engine"]["kernels"])  # the engine the tokens came from: int4 weights


def test_generate_and_serve_bench_take_a_checkpoint_directory(capsys, tmp_path):
    """`--model DIR` in both LLM commands: a small random Qwen3 saved by transformers with SmolLM2's tokenizer
    files (its vocabulary, 49152 ids); greedy `generate` equals transformers' greedy generate on the same ids."""
    import shutil

    import torch
    import transformers as tf

    from effml.llm.weights import converted_dir, ensure_converted

    ensure_converted()
    cfg = tf.Qwen3Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, intermediate_size=64, vocab_size=49152, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    hf = tf.Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():  # std 0.02 init gives near-uniform logits, where a summation order can flip an argmax
        for p in hf.parameters():
            p.mul_(5)
    hf.save_pretrained(tmp_path)
    for f in converted_dir().iterdir():
        if f.name != "config.json" and not f.name.endswith(".safetensors"):
            shutil.copy(f, tmp_path)
    d = run_json(capsys, "generate", "--model", str(tmp_path), "--prompt", "Hi", "--max-new-tokens", "6",
                 "--ignore-eos")
    from effml.llm.weights import Tokenizer

    ids = torch.tensor([Tokenizer.from_dir(tmp_path).chat("Hi")])  # what the command feeds: the chat template
    assert d["result"]["new_tokens"] == 6 and d["result"]["prompt_tokens"] == ids.shape[1]
    ref = hf.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert d["result"]["tokens"] == ref[0, ids.shape[1]:].tolist()
    s = run_json(capsys, "serve-bench", "--model", str(tmp_path), "--requests", "4", "--rate", "100",
                 "--mean-output", "4", "--max-output", "8", "--batching", "all")
    got = {name: r["generated_tokens"] for name, r in s["results"].items()}
    assert set(got) == {"static", "continuous", "chunked"} and len(set(got.values())) == 1  # the same work
