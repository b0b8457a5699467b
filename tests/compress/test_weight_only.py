"""Weight-only int8/int4 layers: the code layout, from_codes, fusion, the activation dtype and the notes."""

import copy

import pytest
import torch
from torch import nn

from effml.compress import weight_only as wo
from effml.compress.weight_only import WeightOnlyLinear, fast_act_dtype, minmax_int4, weight_only
from effml.errors import ConfigError


def _lin(i=64, o=32, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(i, o, bias=bias)


@pytest.mark.parametrize("bits", [8, 4])
def test_packed_kernel_equals_dequantized_reference_with_fp32_activations(bits):
    lin = _lin()
    q = WeightOnlyLinear(lin, bits, group_size=32, act_dtype="fp32")
    x = torch.randn(3, 5, 64)
    ref = nn.functional.linear(x, q.dequantized(), lin.bias)
    torch.testing.assert_close(q(x), ref, atol=1e-4, rtol=1e-4)  # the same arithmetic up to fp32 rounding


@pytest.mark.parametrize("bits", [8, 4])
def test_bf16_activations_err_by_at_most_bf16_rounding(bits):
    lin = _lin()
    q = WeightOnlyLinear(lin, bits, group_size=32, act_dtype="bf16")
    x = torch.randn(4, 64)
    w = q.dequantized()
    ref = nn.functional.linear(x, w, lin.bias)
    # x rounded to bf16 (relative error <= 2^-9 per element), products summed exactly enough in fp32, the
    # bf16 scales (relative <= 2^-9) and the bf16 output (<= 2^-9 |y|): |err| <= 2^-8 (|x| |W|^T + |y|) + slack
    bound = 2 ** -8 * (x.abs() @ w.abs().T + ref.abs()) + 1e-3
    assert ((q(x) - ref).abs() <= bound).all()
    assert q(x).dtype == torch.float32  # the caller's dtype comes back


def test_minmax_int4_recovers_q4_1_style_weights_exactly():
    # weights that already are d * q + m per group of 32 (q in 0..15, each group using both 0 and 15)
    torch.manual_seed(0)
    q = torch.randint(0, 16, (16, 64))
    q[:, 0], q[:, 1], q[:, 32], q[:, 33] = 0, 15, 0, 15
    d = torch.rand(16, 2, 1) * 0.01 + 0.001
    m = torch.rand(16, 2, 1) * 0.02  # positive offsets: a symmetric-around-0 grid would lose levels here
    w = (q.reshape(16, 2, 32) * d + m).reshape(16, 64)
    scale, zero, codes = minmax_int4(w, 32)
    assert torch.equal(codes, q.to(torch.int32))
    back = ((codes.reshape(16, 2, 32) - zero[..., None]) * scale[..., None]).reshape(16, 64)
    torch.testing.assert_close(back, w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("bits", [8, 4])
def test_from_codes_rebuilds_the_same_layer_and_cat_fuses_exactly(bits):
    a, b = WeightOnlyLinear(_lin(seed=1), bits, 32, act_dtype="fp32"), WeightOnlyLinear(_lin(seed=2), bits, 32,
                                                                                            act_dtype="fp32")
    c = WeightOnlyLinear.from_codes(a.codes, a.scale, a.zero, bits, 32, a.bias, act_dtype="fp32")
    x = torch.randn(2, 64)
    assert torch.equal(c(x), a(x))
    f = WeightOnlyLinear.cat([a, b])
    assert f.out_features == 64
    torch.testing.assert_close(f(x), torch.cat([a(x), b(x)], -1), atol=1e-5, rtol=1e-5)


def test_from_codes_refuses_bad_layouts():
    codes = torch.zeros(16, 64, dtype=torch.int32)
    with pytest.raises(ConfigError, match="int4 codes must lie in"):
        WeightOnlyLinear.from_codes(codes + 16, torch.ones(16, 2), torch.zeros(16, 2), 4, 32)
    with pytest.raises(ConfigError, match="scale must have out x groups = 16 x 2"):
        WeightOnlyLinear.from_codes(codes, torch.ones(16, 4), torch.zeros(16, 2), 4, 32)
    with pytest.raises(ConfigError, match="int8 weight-only is symmetric"):
        WeightOnlyLinear.from_codes(codes, torch.ones(16, 1), torch.ones(16, 1), 8)
    with pytest.raises(ConfigError, match="not a multiple of group_size 48"):
        WeightOnlyLinear.from_codes(codes, torch.ones(16, 1), None, 4, 48)


def test_packing_is_redone_after_loading_new_codes():
    a, b = WeightOnlyLinear(_lin(seed=1), 4, 32), WeightOnlyLinear(_lin(seed=2), 4, 32)
    x = torch.randn(1, 64)
    a(x)  # packs a's codes
    a.load_state_dict(b.state_dict())
    assert torch.equal(a(x), b(x))


def test_notes_name_the_kernel_and_a_cpu_without_a_fast_kernel_is_said(monkeypatch):
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    _, names, notes = weight_only(m, 8, 128, "packed")
    assert names == ["0", "2"]
    cap = torch.backends.cpu.get_cpu_capability()
    if fast_act_dtype() is not None:
        assert any(f"_weight_int8pack_mm (bfloat16 activations, CPU {cap})" in n for n in notes)
    monkeypatch.setattr(wo, "cpu_capability", lambda: "DEFAULT")
    assert fast_act_dtype() is None
    _, _, notes = weight_only(nn.Sequential(nn.Linear(64, 32)), 8, 128, "packed")
    assert any("no vectorized int8 weight-only kernel for CPU capability DEFAULT" in n for n in notes)


def test_tied_head_and_embedding_become_one_int8_table():
    """WeightOnlyConfig(tied="int8") on a transformers Llama with tied embeddings: the head runs int8 and the
    embedding reads the same codes; stored once. Hand count (vocab 320, d 64, 2 layers, ffn 128, 4 heads / 2 KV of
    16): params 320*64 + 2*(2*64*64 + 2*64*32 + 3*64*128 + 2*64) + 64 = 94,528 (fp32: 378,112 B); int8: the 94,208
    matrix weights as codes + one fp32 scale per output row (320 + 2*(64+32+32+64+128+128+64) = 1,344 rows: 5,376 B)
    + the 320 norm weights in fp32 (1,280 B) = 100,864 B."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from effml.compress import WeightOnlyConfig, quantize
    from effml.compress.weight_only import TiedInt8Embedding

    cfg = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).eval()
    ref = copy.deepcopy(m)
    keep = quantize(copy.deepcopy(m), WeightOnlyConfig(bits=8))
    assert [n for n, _ in keep.skipped] == ["lm_head"]  # the default keeps the tied pair float, and says so
    res = quantize(m, WeightOnlyConfig(bits=8, tied="int8"))
    assert res.skipped == [] and "lm_head" in res.layers and res.dense_bytes == 378_112
    assert res.stored_bytes == 100_864
    emb = m.model.embed_tokens
    assert isinstance(emb, TiedInt8Embedding) and isinstance(m.lm_head, WeightOnlyLinear)
    x = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # each embedding row is its int8 rounding: |error| <= scale / 2 = max|row| / 254 per element
        w = ref.model.embed_tokens.weight
        assert ((emb(x) - w[x]).abs() <= w[x].abs().amax(-1, keepdim=True) / 254 + 1e-7).all()
        a, b = ref(x).logits, m(x).logits
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999
    assert m.generate(x, max_new_tokens=4, do_sample=False).shape == (1, 16)
    with pytest.raises(ConfigError, match="tied 'int4' unknown"):
        WeightOnlyConfig(tied="int4")
