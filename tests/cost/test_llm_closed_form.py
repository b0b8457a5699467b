"""Transformer shapes on meta against the closed form 2·T·(Linear weights) + 2·d·L·T(T+1)."""

import pytest

import effml
from effml import configs
from effml.models import resolve


def linear_weights(hf: dict) -> int:
    """All Linear weights of a Llama-style decoder incl. lm_head (GQA: K and V project to kv_heads·hd)."""
    d, L, ffn, V = hf["hidden_size"], hf["num_hidden_layers"], hf["intermediate_size"], hf["vocab_size"]
    kv = d // hf["num_attention_heads"] * hf.get("num_key_value_heads", hf["num_attention_heads"])
    return L * (2 * d * d + 2 * d * kv + 3 * d * ffn) + V * d


@pytest.mark.parametrize("name, seq", [("llama-2-7b", 2048), ("llama-2-70b", 256), ("mistral-7b", 512)])
def test_decoder_matches_closed_form(name, seq):
    spec = resolve(config=name, seq=seq, dtype="bf16")
    p = effml.profile(spec.model, *spec.args, forward_kwargs=spec.kwargs)
    hf = configs.load(name).hf_config
    d, L, T = hf["hidden_size"], hf["num_hidden_layers"], seq
    closed = 2 * T * linear_weights(hf) + 2 * d * L * T * (T + 1)  # causal attention: d·T(T+1) MACs per layer
    assert p.unsupported == {}
    assert abs(p.total().flops / closed - 1) < 0.01  # norms, SiLU, RoPE, softmax make up the rest
    # the matmul and attention MACs alone are exact
    cats = p.by_category()
    assert cats["matmul"].macs == T * linear_weights(hf)
    assert cats["attention"].macs == d * L * T * (T + 1)


def test_llama_2_7b_params_and_bf16_weights():
    spec = resolve(config="llama-2-7b", seq=16, dtype="bf16")
    p = effml.profile(spec.model, *spec.args, forward_kwargs=spec.kwargs)
    assert p.params == 6_738_415_616  # the published count
    assert p.memory("bf16") == 2 * 6_738_415_616 == p.param_bytes  # profiled in bf16: 13.48 GB
    assert p.meta["embedding_params"] == 2 * 32000 * 4096  # embed_tokens + untied lm_head: fp16 in int4 checkpoints


@pytest.mark.parametrize("name", ["gpt2", "bert-base", "vit-base", "resnet-50", "mobilenet-v2", "smollm2-135m"])
def test_every_op_of_the_bundled_architectures_has_a_formula(name):
    """Forward and backward of each architecture family (Llama via SmolLM2) leave nothing unsupported."""
    task = configs.load(name).task
    spec = resolve(config=name, seq=None if task == "image-classification" else 16)
    p = effml.profile(spec.model, *spec.args, forward_kwargs=spec.kwargs, backward=True)
    assert p.unsupported == {}
    assert 1.9 < p.total("backward").macs / p.total("forward").macs <= 2.0  # backward ≈ 2x forward


def test_mistral_v01_sliding_window_attention_at_8192():
    # Mistral-7B-v0.1 (Jiang et al. 2023): W = 4096, 32 layers x 32 query heads x head dim 128 (E + E_v = 256).
    # Full square: 8192² = 67,108,864 pairs -> 67,108,864·256·32·32 = 17.59 T MACs (an explicit mask's cost before).
    # Window: Σ_i min(i+1, 4096) = 4096·4097/2 + 4096·4096 = 8,390,656 + 16,777,216 = 25,167,872 pairs
    #         -> 25,167,872·256·1024 = 6,597,606,637,568 = 6.6 T MACs (causal without a window: 8.8 T).
    T, W = 8192, 4096
    pairs = sum(min(i + 1, W) for i in range(T))
    assert pairs == 25_167_872
    spec = resolve(config="mistral-7b-v0.1", seq=T)
    p = effml.profile(spec.model, *spec.args, forward_kwargs=spec.kwargs)
    assert p.by_category()["attention"].macs == pairs * 256 * 32 * 32 == 6_597_606_637_568
    assert p.meta["unknown_masks"] == 0
    assert p.params == 7_241_732_096  # the published count of the v0.1 checkpoint


def test_mixtral_8x7b_total_and_active_params_and_flops_per_token():
    # Mixtral-8x7B (Jiang et al. 2024): d 4096, ffn 14336, 32 layers, GQA 8 kv heads, 8 experts, top-2, vocab 32000.
    # per layer: attention 2·4096² + 2·4096·1024 = 41,943,040; one expert 3·4096·14336 = 176,160,768; router
    # 8·4096 = 32,768; 2 RMSNorms 8,192.  total = 32·(41,943,040 + 8·176,160,768 + 32,768 + 8,192)
    # + 2·32000·4096 + 4096 = 46,702,792,704 (46.7 B); active = the same with 2 experts = 12,879,925,248 (12.9 B)
    layer = 41_943_040 + 32_768 + 8_192
    total = 32 * (layer + 8 * 176_160_768) + 2 * 32000 * 4096 + 4096
    active = 32 * (layer + 2 * 176_160_768) + 2 * 32000 * 4096 + 4096
    assert (total, active) == (46_702_792_704, 12_879_925_248)
    T = 128
    spec = resolve(config="mixtral-8x7b", seq=T, dtype="bf16")
    p = effml.profile(spec.model, *spec.args, forward_kwargs=spec.kwargs)
    assert p.unsupported == {} and (p.params, p.active_params) == (total, active)
    # expert matmuls: T·2 routed rows x (4096 x 2·14336 up, 14336 x 4096 down) per layer
    assert p.by_op()["aten._grouped_mm"].macs == 32 * T * 2 * 3 * 4096 * 14336
    # FLOPs per token ≈ 2 x active params = 25.76 G (the embedding lookup is no matmul, attention at T=128 is small)
    assert p.flops / T == pytest.approx(2 * active, rel=0.02)
    assert p.to_dict()["active_params"] == active


def test_qwen2_sliding_layers_count_the_window_full_layers_the_causal_triangle():
    # Qwen2 with use_sliding_window and max_window_layers=1: layer 0 full, layer 1 windowed (W = 8). T = 32,
    # 4 query heads, head dim 16 (E + E_v = 32): causal 32·33/2 = 528 pairs -> 4·528·32 = 67,584 MACs;
    # window Σ_i min(i+1, 8) = 36 + 24·8 = 228 pairs -> 4·228·32 = 29,184 MACs
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = AutoConfig.for_model("qwen2", hidden_size=64, intermediate_size=128, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, vocab_size=100, num_hidden_layers=2,
                              use_sliding_window=True, sliding_window=8, max_window_layers=1)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf, attn_implementation="sdpa").eval()
    p = effml.profile(model, torch.empty(1, 32, dtype=torch.long, device="meta"), forward_kwargs={"use_cache": True})
    assert [e.macs for e in p.events if e.category == "attention"] == [67_584, 29_184]
