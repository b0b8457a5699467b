"""`effml kv`: the KV-cache formula on published configs, the GQA saving, max batch beside the weights."""

import json

import pytest

from effml.cli import main
from effml.errors import ConfigError
from effml.llm.kvcalc import kv_bytes, kv_report


def test_llama2_7b_4096_tokens_fp16_is_2_gib():
    r = kv_report("llama-2-7b", seq=4096, batch=1, dtype="fp16")
    assert r.bytes == 2 * 32 * 32 * 128 * 4096 * 2 == 2 * 2**30  # 2 (K, V) · layers · kv_heads · head_dim · T · B
    assert r.bytes_per_token == 2 * 32 * 32 * 128 * 2 == 524_288  # 512 KiB per token
    assert r.gqa_saving == 1.0  # Llama-2-7B is multi-head: 32 KV heads for 32 heads


def test_batch_and_dtype_scale_linearly():
    base = kv_report("llama-2-7b", seq=4096, batch=1, dtype="fp16").bytes
    assert kv_report("llama-2-7b", seq=4096, batch=8, dtype="fp16").bytes == 8 * base  # 16 GiB
    assert kv_report("llama-2-7b", seq=4096, batch=1, dtype="fp32").bytes == 2 * base
    assert kv_report("llama-2-7b", seq=4096, batch=1, dtype="int8").bytes == base / 2


@pytest.mark.parametrize("name, heads, kv_heads", [("llama-3-8b", 32, 8), ("mistral-7b", 32, 8),
                                                   ("llama-2-70b", 64, 8), ("smollm2-135m", 9, 3)])
def test_gqa_saving_is_heads_over_kv_heads(name, heads, kv_heads):
    r = kv_report(name, seq=1024, batch=1, dtype="bf16")
    assert (r.heads, r.kv_heads) == (heads, kv_heads)
    assert r.gqa_saving == heads / kv_heads and r.mha_bytes == r.bytes * heads / kv_heads


def test_llama3_8b_8k_context():
    # 2 · 32 layers · 8 KV heads · 128 · 8192 tokens · 2 B = 1 GiB per sequence (MHA would be 4 GiB)
    r = kv_report("llama-3-8b", seq=8192, batch=1, dtype="bf16")
    assert r.bytes == 2**30 and r.mha_bytes == 4 * 2**30


def test_max_batch_beside_the_weights_on_h100():
    # H100 80 GB (catalog, GB = 1e9); Llama-2-7B fp16 weights 6,738,415,616 x 2 B = 13,476,831,232 B;
    # (80e9 − 13,476,831,232) / 2 GiB per 4096-token sequence = 66,523,168,768 / 2,147,483,648 = 30.98 -> 30
    r = kv_report("llama-2-7b", seq=4096, batch=8, dtype="fp16", hw="h100")
    assert r.weights_bytes == 13_476_831_232
    assert r.max_batch == 30 and r.fits is True
    # Llama-3-8B bf16: (80e9 − 8,030,261,248 x 2) / 1 GiB = 63,939,477,504 / 1,073,741,824 = 59.5 -> 59
    assert kv_report("llama-3-8b", seq=8192, batch=64, dtype="bf16", hw="h100").max_batch == 59
    assert kv_report("llama-3-8b", seq=8192, batch=64, dtype="bf16", hw="h100").fits is False


def test_mistral_v01_rolling_buffer_at_32k():
    # Mistral-7B-v0.1 (Jiang et al. 2023): W = 4096 in all 32 layers, a rolling buffer of the last 4096 tokens:
    # 2 · 32 · 8 kv heads · 128 · 4096 · 2 B = 536,870,912 B = 0.5 GiB at 32k
    # (not 2 · 32 · 8 · 128 · 32768 · 2 = 4 GiB, which v0.3 without a window does hold)
    r = kv_report("mistral-7b-v0.1", seq=32768, batch=1, dtype="fp16", hw="h100")
    assert r.bytes == 2 * 32 * 8 * 128 * 4096 * 2 == 2**29
    assert kv_report("mistral-7b", seq=32768, batch=1, dtype="fp16").bytes == 2**32
    assert (r.window, r.windowed_layers) == (4096, 32) and "rolling buffer" in r.formula
    # max batch: (80e9 − 7,241,732,096 · 2) / 2^29 = 65,516,535,808 / 536,870,912 = 122.03 -> 122 (v0.3 at 4 GiB: 15)
    assert r.max_batch == 122
    assert kv_report("mistral-7b-v0.1", seq=4096, dtype="fp16").bytes == 2**29  # a window's worth: the same
    assert kv_report("mistral-7b-v0.1", seq=1000, dtype="fp16").bytes == 2 * 32 * 8 * 128 * 1000 * 2  # below W


def test_kv_shape_follows_per_layer_types():
    # Gemma-2 alternates sliding (W = 4096) and full layers; Qwen2 with use_sliding_window slides from
    # max_window_layers on. 4 layers, 2 windowed, at 10,000 tokens: 2 · 10,000 + 2 · 4096 = 28,192 tokens held
    from transformers import AutoConfig

    from effml.hardware.kv import KVShape

    gemma = KVShape.of(AutoConfig.for_model("gemma2", num_hidden_layers=4, sliding_window=4096))
    assert gemma.windows == (4096, None, 4096, None) and gemma.cached_tokens(10_000) == 28_192
    qwen = KVShape.of(AutoConfig.for_model("qwen2", num_hidden_layers=4, use_sliding_window=True,
                                           sliding_window=4096, max_window_layers=2))
    assert qwen.windows == (None, None, 4096, 4096) and qwen.cached_tokens(10_000) == 28_192
    assert KVShape.of(AutoConfig.for_model("qwen2", num_hidden_layers=4)).windows == ()  # no window by default


def test_bad_input_names_the_field():
    with pytest.raises(ConfigError, match="--seq 8192 exceeds llama-2-7b's context of 4096"):
        kv_report("llama-2-7b", seq=8192)
    with pytest.raises(ConfigError, match="--batch"):
        kv_report("llama-2-7b", seq=16, batch=0)
    with pytest.raises(ConfigError, match="unknown dtype"):
        kv_report("llama-2-7b", seq=16, dtype="fp12")
    with pytest.raises(ConfigError, match="causal-lm"):
        kv_report("bert-base", seq=16)
    assert kv_bytes(1, 1, 1, 1, 1, "int4") == 1.0  # 2 x 0.5 B


def test_cli_json_is_one_object_with_2_gib(capsys):
    assert main(["kv", "--config", "llama-2-7b", "--seq", "4096", "--batch", "1", "--dtype", "fp16", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["bytes"] == 2_147_483_648 and d["gib"] == 2.0 and d["gqa_saving"] == 1.0
    assert d["formula"].startswith("2 · 32 layers · 32 kv_heads · 128 head_dim · 4096 tokens")


def test_cli_table_and_error(capsys):
    assert main(["kv", "--config", "llama-3-8b", "--seq", "8192", "--batch", "8", "--dtype", "bf16",
                 "--hw", "h100"]) == 0
    out = capsys.readouterr().out
    assert "8 GiB" in out and "4x smaller" in out and "59 sequences" in out
    assert main(["kv", "--config", "llama-2-7b", "--seq", "99999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "context of 4096" in err[0]


def test_int4_weights_beside_the_cache_are_what_the_checkpoint_holds():
    # Llama-2-7B in int4 (GPTQ/AWQ g128): 6,476,271,616 quantized weights x 4.15625 bits + 262,144,000 fp16
    # embedding/head weights x 2 B = 3,888,913,488 B, not 6,738,415,616 x 0.5 = 3,369,207,808 B
    r = kv_report("llama-2-7b", seq=4096, dtype="int4")
    assert r.weights_bytes == 3_888_913_488 and "kept in fp16" in r.weights_note
