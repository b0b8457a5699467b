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


@pytest.mark.parametrize("name", ["gpt2", "bert-base", "vit-base", "resnet-50", "mobilenet-v2", "smollm2-135m"])
def test_every_op_of_the_bundled_architectures_has_a_formula(name):
    """Forward and backward of each architecture family (Llama via SmolLM2) leave nothing unsupported."""
    task = configs.load(name).task
    spec = resolve(config=name, seq=None if task == "image-classification" else 16)
    p = effml.profile(spec.model, *spec.args, forward_kwargs=spec.kwargs, backward=True)
    assert p.unsupported == {}
    assert 1.9 < p.total("backward").macs / p.total("forward").macs <= 2.0  # backward ≈ 2x forward
