"""Matmul, convolution and attention counts against hand-computed numbers."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import effml
from effml.cost.formulas.linalg import causal_pairs


def _only(profile, op):
    return profile.by_op()[op]


def test_linear_with_bias_flops_macs_bytes():
    lin = nn.Linear(5, 7)
    p = effml.profile(lin, torch.randn(3, 5))
    s = _only(p, "aten.addmm")
    assert s.macs == 3 * 5 * 7  # m·k·n = 105
    assert s.flops == 2 * 105 + 3 * 7  # 2·MACs + one bias add per output = 231
    assert s.bytes_read == (3 * 5 + 7 * 5 + 7) * 4  # x, W (read through the transposed view), b: 228 B
    assert s.bytes_written == 3 * 7 * 4  # 84 B
    assert p.total().flops == 231  # the transpose is a view: no FLOPs, no bytes


def test_linear_without_bias_on_3d_input_is_one_mm():
    p = effml.profile(nn.Linear(5, 7, bias=False), torch.randn(2, 3, 5))
    assert p.total().macs == 2 * 3 * 5 * 7  # the (2, 3) leading dims fold into m = 6: 210 MACs
    assert p.total().flops == 2 * 210


@pytest.mark.parametrize("conv, x_shape, macs, bias_adds", [
    # out 5x5 = floor((9 + 2·1 - 3) / 2) + 1; MACs = N·C_out·H·W·(C_in/groups)·k² = 1·6·25·2·9
    (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (1, 4, 9, 9), 2700, 6 * 25),
    # dilation 2 makes the 3x3 kernel span 5: out 6x6; 2·8·36·3·9
    (nn.Conv2d(3, 8, 3, dilation=2, bias=False), (2, 3, 10, 10), 15552, 0),
    # depthwise: groups = channels, 1 input channel per filter: 8·36·1·9
    (nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), (1, 8, 6, 6), 2592, 0),
    # transposed: every input position scatters a full kernel: N·C_in·H·W·(C_out/groups)·k² = 1·4·25·2·9
    (nn.ConvTranspose2d(4, 2, 3, stride=2, bias=False), (1, 4, 5, 5), 1800, 0),
    # 1-D: out length 8 - 3 + 1 = 6; 2·4·6·3·3
    (nn.Conv1d(3, 4, 3), (2, 3, 8), 432, 2 * 4 * 6),
])
def test_convolution(conv, x_shape, macs, bias_adds):
    s = _only(effml.profile(conv, torch.randn(x_shape)), "aten.convolution")
    assert s.macs == macs
    assert s.flops == 2 * macs + bias_adds


def test_bmm():
    a, b = torch.randn(4, 8, 16), torch.randn(4, 16, 32)
    p = effml.profile(_Fn(torch.bmm), a, b)
    assert p.total().macs == 4 * 8 * 16 * 32  # 16384


class _Fn(nn.Module):
    def __init__(self, fn, **kw):
        super().__init__()
        self.fn, self.kw = fn, kw

    def forward(self, *args):
        return self.fn(*args, **self.kw)


def _sdpa(q, k, v, device="cpu", backend=None, **kw):
    mod = _Fn(F.scaled_dot_product_attention, **kw)
    args = [t.to(device) for t in (q, k, v)]
    if backend is None:
        return effml.profile(mod, *args)
    with sdpa_kernel(backend):
        return effml.profile(mod, *args)


def test_causal_pairs_closed_form():
    assert causal_pairs(10, 10) == 55  # 1 + 2 + ... + 10
    assert causal_pairs(4, 10) == 10  # top-left aligned: rows see 1..4 keys
    assert causal_pairs(10, 4) == 34  # 1+2+3+4, then 6 rows of all 4 keys
    for L, S in [(7, 3), (3, 7), (5, 5)]:
        assert causal_pairs(L, S) == int(torch.ones(L, S).tril().sum())


@pytest.mark.parametrize("device, backend", [("cpu", None), ("cpu", SDPBackend.MATH), ("meta", None)])
def test_sdpa_non_causal_every_backend(device, backend):
    q, k, v = torch.randn(2, 4, 10, 16), torch.randn(2, 4, 12, 16), torch.randn(2, 4, 12, 16)
    s = _only(_sdpa(q, k, v, device, backend), "aten.scaled_dot_product_attention")
    scores = 2 * 4 * 10 * 12  # batch·heads·L·S = 960 query-key pairs
    assert s.macs == scores * (16 + 16)  # q·k (E) and p·v (E_v) per pair: 30720
    assert s.flops == 2 * s.macs + scores * 6  # + scale (1) + softmax (5) per score: 67200


@pytest.mark.parametrize("device, backend", [("cpu", None), ("cpu", SDPBackend.MATH), ("meta", None)])
def test_sdpa_causal_counts_unmasked_pairs(device, backend):
    q = k = v = torch.randn(2, 4, 10, 16)
    p = _sdpa(q, k, v, device, backend, is_causal=True)
    s = _only(p, "aten.scaled_dot_product_attention")
    assert s.macs == 8 * 55 * 32  # 8 heads x 55 unmasked pairs x (16 + 16) = 14080
    assert s.flops == 2 * 14080 + 8 * 55 * 6  # 30800
    assert p.total().flops == s.flops  # the math backend's bmm/softmax are not counted again


def test_sdpa_gqa_follows_query_heads():
    q, k, v = torch.randn(1, 8, 6, 16), torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16)
    for device in ("cpu", "meta"):
        s = _only(_sdpa(q, k, v, device, is_causal=True, enable_gqa=True), "aten.scaled_dot_product_attention")
        assert s.macs == 8 * 21 * 32  # 8 query heads x 21 causal pairs (6·7/2) x 32 = 5376


def test_sdpa_explicit_mask_counts_the_pairs_it_keeps_plus_mask_add():
    q = k = v = torch.randn(1, 2, 5, 8)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    s = _only(effml.profile(_Fn(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=mask)), q, k, v),
              "aten.scaled_dot_product_attention")
    assert s.macs == 2 * 15 * 16  # 2 heads x the 1+2+3+4+5 = 15 pairs tril keeps x (8 + 8)
    assert s.flops == 2 * s.macs + 2 * 15 * 7  # scale, softmax (5) and the mask add per kept score


def _window_mask(T, W, device):
    # transformers' sdpa_mask for a sliding window: kv <= q and kv > q - W, from aranges (on meta: no values)
    qi, ki = torch.arange(T, device=device)[:, None], torch.arange(T, device=device)[None, :]
    return ((ki <= qi) & (ki > qi - W))[None, None].expand(2, 1, T, T)  # (B, 1, T, T)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_sliding_window_mask_counts_sum_of_min_i_plus_1_w(device):
    # T = 12, W = 4: rows see 1, 2, 3, 4, 4, ... keys: 1+2+3+4 + 8·4 = 42 pairs per head (not 144, nor causal 78)
    T, W = 12, 4
    assert sum(min(i + 1, W) for i in range(T)) == 42
    q = k = v = torch.empty(2, 3, T, 8, device=device)  # B=2, H=3
    fn = _Fn(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=_window_mask(T, W, a.device)))
    s = _only(effml.profile(fn, q, k, v), "aten.scaled_dot_product_attention")
    assert s.macs == 2 * 3 * 42 * 16


def test_additive_float_mask_keeps_finite_entries():
    q = k = v = torch.randn(1, 1, 4, 8)
    mask = torch.zeros(4, 4).masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), float("-inf"))
    s = _only(effml.profile(_Fn(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=mask)), q, k, v),
              "aten.scaled_dot_product_attention")
    assert s.macs == 10 * 16  # 1+2+3+4 finite entries


def test_mask_too_large_to_evaluate_counts_every_pair_and_says_so(monkeypatch):
    from effml.cost import masks
    monkeypatch.setattr(masks, "MAX_BYTES", 100)  # a 12 x 12 bool mask (144 B) is then "too large"
    q = k = v = torch.empty(1, 1, 12, 8, device="meta")
    fn = _Fn(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=_window_mask(12, 4, "meta")[:1]))
    p = effml.profile(fn, q, k, v)
    assert _only(p, "aten.scaled_dot_product_attention").macs == 144 * 16 and p.meta["unknown_masks"] == 1


def test_fused_cpu_kernel_called_directly():
    q = k = v = torch.randn(1, 2, 10, 8)
    fn = _Fn(lambda a, b, c: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(a, b, c, is_causal=True)[0])
    s = _only(effml.profile(fn, q, k, v), "aten._scaled_dot_product_flash_attention_for_cpu")
    assert s.macs == 2 * 55 * 16  # 2 heads x 55 causal pairs x (8 + 8)


def test_sdpa_backward_is_twice_forward_macs():
    q, k, v = (torch.randn(1, 2, 10, 8, requires_grad=True) for _ in range(3))
    for backend in (None, SDPBackend.MATH):
        p = _sdpa(q, k, v, "cpu", backend, is_causal=True)
        assert p.unsupported == {}
        pb = _profile_backward_sdpa(q, k, v, backend)
        fwd = pb.by_op("forward")["aten.scaled_dot_product_attention"]
        bwd = pb.by_op("backward")["aten.scaled_dot_product_attention"]
        assert fwd.macs == 2 * 55 * 16
        assert bwd.macs == 2 * fwd.macs  # dV, dP, dQ, dK: four products against the forward's two
        assert pb.total("backward").macs == bwd.macs  # nothing else in backward does MACs


def _profile_backward_sdpa(q, k, v, backend):
    mod = _Fn(F.scaled_dot_product_attention, is_causal=True)
    if backend is None:
        return effml.profile(mod, q, k, v, backward=True)
    with sdpa_kernel(backend):
        return effml.profile(mod, q, k, v, backward=True)


def test_mlp_backward_is_twice_forward_when_input_needs_grad():
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(5, 8, requires_grad=True)
    p = effml.profile(mlp, x, backward=True)
    fwd = p.total("forward").macs
    assert fwd == 5 * (8 * 16 + 16 * 4)  # 960
    assert p.total("backward").macs == 2 * fwd  # grad wrt input and wrt weight, each one matmul per layer


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_grouped_mm_counts_routed_rows_times_expert_shape_and_backward_twice(device):
    # 6 routed rows split 2 + 4 over 2 experts of (16 x 8): MACs = 6·16·8 = 768 whatever the split; backward:
    # d_input (6 x 8 @ 8 x 16 per group) = 768 and d_weight (2D x 2D over the grouped K = 6 rows) 16·8·6 = 768.
    # fp32 on meta: torch's meta kernel accepts only bf16, so the counter supplies the output shape.
    a = torch.randn(6, 16, device=device, requires_grad=True)
    w = nn.Parameter(torch.randn(2, 16, 8, device=device))
    offs = torch.tensor([2, 6], dtype=torch.int32, device=device)

    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = w

        def forward(self, x):
            return torch._grouped_mm(x, self.w, offs=offs)

    p = effml.profile(Experts(), a, backward=True)
    assert p.by_op("forward")["aten._grouped_mm"].macs == 6 * 16 * 8
    assert p.by_op("backward")["aten._grouped_mm"].macs == 2 * 6 * 16 * 8


def test_transformers_grouped_mm_fallback_counts_like_grouped_mm():
    # transformers' per-expert loop (its CPU path for torch <= 2.10): the same routed rows x k x n, backward twice
    moe = pytest.importorskip("transformers.integrations.moe")
    x = torch.randn(6, 16, requires_grad=True)
    w = nn.Parameter(torch.randn(2, 16, 8))
    offs = torch.tensor([2, 6], dtype=torch.int32)

    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = w

        def forward(self, inp):
            return torch.ops.transformers.grouped_mm_fallback(inp, self.w, offs)

    assert moe is not None
    p = effml.profile(Experts(), x, backward=True)
    assert p.unsupported == {}
    assert p.total("forward").macs == 6 * 16 * 8 and p.total("backward").macs == 2 * 6 * 16 * 8


@pytest.mark.parametrize("device, rows, split, hit", [("cpu", 6, [2, 2, 6], 2), ("meta", 2, [1, 2, 2], 2),
                                                      ("meta", 6, [2, 2, 6], 3)])
def test_grouped_mm_reads_only_the_experts_that_got_rows(device, rows, split, hit):
    # 3 experts of (16 x 8) fp32 = 512 B each. On CPU the offsets say which experts got rows (2, 0, 4 rows: 2
    # experts); on meta min(experts, rows) (a decode step's top-2 of 8 reads 2 experts' weights, not 8)
    a = torch.randn(rows, 16, device=device)
    w = torch.randn(3, 16, 8, device=device)
    offs = torch.tensor(split, dtype=torch.int32, device=device)
    p = effml.profile(_Fn(lambda x, y: torch._grouped_mm(x, y, offs=offs)), a, w)
    assert p.by_op()["aten._grouped_mm"].bytes_read == rows * 16 * 4 + 3 * 4 + hit * 16 * 8 * 4


def test_decode_past_a_sliding_window_reads_only_the_window():
    # one query over 12 cached keys with a window of 4: 4 pairs per head, and only those 4 keys' K and V are read
    # (a rolling buffer holds just them): q (1,2,1,8) + mask (1,1,1,12) bool + K, V 2 x (1,2,4,8) fp32
    q = torch.randn(1, 2, 1, 8)
    k = v = torch.randn(1, 2, 12, 8)
    mask = torch.zeros(1, 1, 1, 12, dtype=torch.bool)
    mask[..., 8:] = True
    s = _only(effml.profile(_Fn(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=mask)), q, k, v),
              "aten.scaled_dot_product_attention")
    assert s.macs == 2 * 4 * 16
    assert s.bytes_read == 2 * 8 * 4 + 12 + 2 * (2 * 4 * 8 * 4)
