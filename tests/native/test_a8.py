"""effml.native's gemv_a8: int4 / int8 codes x activations rounded to int8 per block of 32 (a8.cpp).

Two references: (1) the same arithmetic in fp64 (the kernel's activation rounding reproduced here, then the exact
dequantized product): the kernel may differ only by fp32 rounding; (2) the exact weight-only product with fp32
activations: the difference is the activation rounding, bounded by sum_k |w[n, k]| * a_b / 2 (each rounded value
is off by at most half its block's step a_b = max|x_b| / 127). The build's own ISA runs them: AVX-512 VNNI or AVX2
(the two kinds of CPU this project runs on; `EFFML_NATIVE_MARCH=haswell` tests the AVX2 version on an AVX-512
machine), the scalar loop elsewhere.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effml import native
from effml.compress.weight_only import WeightOnlyLinear

ext = native.load()
pytestmark = pytest.mark.skipif(ext is None, reason=f"no native kernels here: {native.status()}")


def rounded(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) rounded as a8.cpp does: per block of 32, a = max|x| / 127, q = nearbyint(x * (127 / max|x|)).
    Returns (the rounded values a * q in fp64, the step a per element)."""
    M, K = x.shape
    b = x.reshape(M, K // 32, 32)
    amax = b.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros(()))  # fp32, as in C++
    q = torch.round(b * inv).clamp(-127, 127)  # round half to even, like nearbyint
    a = (amax / 127).double()
    return (a * q.double()).reshape(M, K), a.expand_as(b).reshape(M, K)


def layer(N: int, K: int, bits: int, group: int, seed: int):
    """Random codes + the gemv_a8 arguments + the dequantized fp64 weight (N, K)."""
    g = torch.Generator().manual_seed(seed)
    if bits == 4:
        codes = torch.randint(0, 16, (N, K), dtype=torch.uint8, generator=g)
        scale, zero = torch.rand(N, K // group, generator=g) / 50 + 1e-3, torch.rand(N, K // group, generator=g) * 15
    else:
        group = K
        codes = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
        scale, zero = torch.rand(N, 1, generator=g) / 50 + 1e-3, torch.zeros(N, 1)
    w = ((codes.double().reshape(N, -1, group) - zero.double()[..., None]) * scale.double()[..., None]).reshape(N, K)
    sp = scale.reshape(N // 16, 16, -1).transpose(1, 2).contiguous()
    zp = (-scale * zero).reshape(N // 16, 16, -1).transpose(1, 2).contiguous() if bits == 4 else None
    return ext.pack_a8(codes, bits), sp, zp, group, w


@pytest.mark.parametrize("bits,group", [(4, 32), (4, 64), (4, 128), (8, None)])
@pytest.mark.parametrize("M", [1, 3, 5, 16, 37])  # 37: a prefill (passes of 4 rows, a remainder of 1)
def test_gemv_a8_is_the_product_with_int8_rounded_activations(bits, group, M):
    N, K = 48, 384
    packed, sp, zp, group, w = layer(N, K, bits, group or K, seed=M * bits)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)) * 3
    x[:, 7] = 40.0  # an outlier channel, as LLM activations have: its block's step is 40 / 127
    bias = torch.randn(N) if bits == 8 else None
    got = ext.gemv_a8(x, packed, sp, zp, bits, group, bias).double()
    xd, step = rounded(x)
    same = xd @ w.T + (0 if bias is None else bias.double())
    scale = (xd.abs() @ w.abs().T).max()
    assert (got - same).abs().max() <= 1e-5 * scale  # fp32 rounding of K-term sums only
    exact = x.double() @ w.T + (0 if bias is None else bias.double())
    bound = (step / 2) @ w.abs().T  # (M, N): |sum_k w (x - xd)| <= sum_k |w| a_b / 2
    assert ((got - exact).abs() <= bound + 1e-5 * scale).all()
    # each row alone gives the same bits: a row's result never depends on the rows beside it (speculative
    # verification and batching agree with one-token decoding)
    alone = torch.cat([ext.gemv_a8(x[i:i + 1].contiguous(), packed, sp, zp, bits, group, bias) for i in range(M)])
    assert torch.equal(alone.double(), got)


def test_zero_rows_and_blocks_give_zero():
    packed, sp, zp, group, _ = layer(16, 64, 4, 32, seed=0)
    assert torch.equal(ext.gemv_a8(torch.zeros(2, 64), packed, sp, zp, 4, group, None), torch.zeros(2, 16))


def test_gemv_a8_refuses_wrong_inputs_by_name():
    packed, sp, zp, group, _ = layer(32, 64, 4, 32, seed=1)
    x = torch.randn(1, 64)
    with pytest.raises(RuntimeError, match="N must be a multiple of 16"):
        ext.pack_a8(torch.zeros(20, 64, dtype=torch.uint8), 4)
    with pytest.raises(RuntimeError, match="group 48 must be a multiple of 32"):
        ext.gemv_a8(x, packed, sp, zp, 4, 48, None)
    with pytest.raises(RuntimeError, match="int4 takes zterm"):
        ext.gemv_a8(x, packed, sp, None, 4, group, None)
    with pytest.raises(RuntimeError, match="packed codes do not match"):
        ext.gemv_a8(x, packed[:-1], sp, zp, 4, group, None)
    with pytest.raises(RuntimeError, match="x must be a contiguous fp32"):
        ext.gemv_a8(x.double(), packed, sp, zp, 4, group, None)


@pytest.mark.parametrize("bits", [4, 8])
def test_weight_only_linear_a8_kernel(bits):
    lin = nn.Linear(256, 64)
    q = WeightOnlyLinear(lin, bits=bits, group_size=64, kernel="a8")
    x = torch.randn(2, 5, 256)
    y = q(x)
    ref = F.linear(x, q.dequantized(), q.bias)
    _, step = rounded(x.reshape(-1, 256))
    bound = ((step / 2) @ q.dequantized().abs().double().T).reshape(2, 5, 64)
    assert y.shape == (2, 5, 64) and ((y - ref).abs().double() <= bound + 1e-4).all()
    if ext.a8_isa():
        assert q.a8() is not None and f"gemv_a8 ({ext.a8_isa()}" in q.kernel_used()
    else:  # no vector ISA for it: the exact kernels run, and the layer says which
        assert q.a8() is None and "gemv_a8" not in q.kernel_used()
        assert torch.allclose(y, ref, atol=1e-2)


def test_prefetch_distance_changes_no_result():
    """The software prefetch distance is a speed knob only (a hint to the CPU): every distance, including none,
    gives the same bits, and the setter reports the distance in force."""
    packed, sp, zp, group, _ = layer(64, 256, 4, 32, seed=11)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(2))
    before = ext.a8_prefetch(-1)
    try:
        ref = ext.gemv_a8(x, packed, sp, zp, 4, group, None)
        for d in (0, 64, 8192):
            assert ext.a8_prefetch(d) == d
            assert torch.equal(ext.gemv_a8(x, packed, sp, zp, 4, group, None), ref)
    finally:
        ext.a8_prefetch(before)
    assert ext.a8_prefetch(-1) == before
