"""effml.native's gemv_a8: int4 / int8 codes x activations rounded to int8 per block of 32 (a8.cpp).

Two references: (1) the same arithmetic in fp64 (the kernel's activation rounding reproduced here, then the exact
product with the weights as packed: int4 scales and zero terms in fp16): the kernel may differ only by fp32
rounding; (2) the exact weight-only product with fp32 activations: the difference is the activation rounding,
bounded by sum_k |w[n, k]| * a_b / 2 (each rounded value is off by at most half its block's step
a_b = max|x_b| / 127). The build's own ISA runs them: AVX-512 VNNI or AVX2 (the two kinds of CPU this project runs
on; `EFFML_NATIVE_MARCH=haswell` tests the AVX2 version on an AVX-512 machine), the scalar loop elsewhere.
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
    """Random codes packed for gemv_a8, the group, and the fp64 weight (N, K) the packed tensor holds (int4: scale
    and zero term rounded to fp16, as pack_a8 stores them; int8: fp32 scales)."""
    g = torch.Generator().manual_seed(seed)
    if bits == 4:
        codes = torch.randint(0, 16, (N, K), dtype=torch.uint8, generator=g)
        scale, zero = torch.rand(N, K // group, generator=g) / 50 + 1e-3, torch.rand(N, K // group, generator=g) * 15
    else:
        group = K
        codes = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
        scale, zero = torch.rand(N, 1, generator=g) / 50 + 1e-3, torch.zeros(N, 1)
    zterm = -scale * zero if bits == 4 else None
    packed = ext.pack_a8(codes, bits, scale, zterm, group)
    if bits == 4:
        s, z = scale.half().double(), zterm.half().double()
        w = (codes.double().reshape(N, -1, group) * s[..., None] + z[..., None]).reshape(N, K)
    else:
        w = codes.double() * scale.double()
    return packed, group, w


def test_packed_layout_holds_each_group_head_then_codes():
    """pack_a8's layout (a8.cpp): per 16-row tile, per group a 64-byte head (int4: 16 fp16 scales, 16 fp16 zero
    terms; int8: 16 fp32 scales) then the group's codes, 16 rows x 4 bytes per step of 8 (int4) / 4 (int8) inputs."""
    N, K, group = 32, 128, 64
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(0, 16, (N, K), dtype=torch.uint8, generator=g)
    scale, zterm = torch.rand(N, K // group, generator=g), -torch.rand(N, K // group, generator=g) * 9
    p = ext.pack_a8(codes, 4, scale, zterm, group)
    gb = 64 + 16 * group // 2  # a group: its head + 16 rows x 64 codes at half a byte
    assert p.shape == (N // 16, K // group * gb) and p.dtype == torch.uint8
    t, gi, row = 1, 1, 5  # output row 16 + 5, inputs 64..127
    head = p[t, gi * gb:gi * gb + 64]
    assert head[:32].view(torch.float16)[row] == scale[16 * t + row, gi].half()
    assert head[32:].view(torch.float16)[row] == zterm[16 * t + row, gi].half()
    b = p[t, gi * gb + 64 + 64 * 2 + 4 * row + 3]  # step o = 2 (inputs 64 + 16..23), byte j = 3
    n = 16 * t + row
    assert b == codes[n, 64 + 16 + 3] | (codes[n, 64 + 16 + 4 + 3] << 4)
    c8 = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    p8 = ext.pack_a8(c8, 8, scale[:, :1].contiguous(), None, K)
    assert p8.shape == (N // 16, 64 + 16 * K)
    assert torch.equal(p8[1, :64].view(torch.float32), scale[16:, 0])  # fp32 scales, exact
    assert p8[1, 64 + 64 * 3 + 4 * row + 1] == int(c8[16 + row, 3 * 4 + 1]) + 128


@pytest.mark.parametrize("bits,group", [(4, 32), (4, 64), (4, 128), (8, None)])
@pytest.mark.parametrize("M", [1, 3, 5, 16, 37])  # 37: a prefill (passes of 4 rows, a remainder of 1)
def test_gemv_a8_is_the_product_with_int8_rounded_activations(bits, group, M):
    N, K = 48, 384
    packed, group, w = layer(N, K, bits, group or K, seed=M * bits)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)) * 3
    x[:, 7] = 40.0  # an outlier channel, as LLM activations have: its block's step is 40 / 127
    bias = torch.randn(N) if bits == 8 else None
    got = ext.gemv_a8(x, packed, bits, group, bias).double()
    xd, step = rounded(x)
    same = xd @ w.T + (0 if bias is None else bias.double())
    scale = (xd.abs() @ w.abs().T).max()
    assert (got - same).abs().max() <= 1e-5 * scale  # fp32 rounding of K-term sums only
    exact = x.double() @ w.T + (0 if bias is None else bias.double())
    bound = (step / 2) @ w.abs().T  # (M, N): |sum_k w (x - xd)| <= sum_k |w| a_b / 2
    assert ((got - exact).abs() <= bound + 1e-5 * scale).all()
    # each row alone gives the same bits: a row's result never depends on the rows beside it (speculative
    # verification and batching agree with one-token decoding)
    alone = torch.cat([ext.gemv_a8(x[i:i + 1].contiguous(), packed, bits, group, bias) for i in range(M)])
    assert torch.equal(alone.double(), got)


def test_zero_rows_and_blocks_give_zero():
    packed, group, _ = layer(16, 64, 4, 32, seed=0)
    assert torch.equal(ext.gemv_a8(torch.zeros(2, 64), packed, 4, group, None), torch.zeros(2, 16))


def test_gemv_a8_refuses_wrong_inputs_by_name():
    packed, group, _ = layer(32, 64, 4, 32, seed=1)
    x = torch.randn(1, 64)
    s = torch.ones(20, 2)
    with pytest.raises(RuntimeError, match="N must be a multiple of 16"):
        ext.pack_a8(torch.zeros(20, 64, dtype=torch.uint8), 4, s, s, 32)
    with pytest.raises(RuntimeError, match=r"scale must be a contiguous fp32 \(N, K/group\) = \(32, 2\)"):
        ext.pack_a8(torch.zeros(32, 64, dtype=torch.uint8), 4, s, s, 32)
    with pytest.raises(RuntimeError, match="int4 takes zterm"):
        ext.pack_a8(torch.zeros(32, 64, dtype=torch.uint8), 4, torch.ones(32, 2), None, 32)
    with pytest.raises(RuntimeError, match="equal K for int8"):
        ext.pack_a8(torch.zeros(32, 64, dtype=torch.int8), 8, torch.ones(32, 2), None, 32)
    with pytest.raises(RuntimeError, match="group 48 must be a multiple of 32"):
        ext.gemv_a8(x, packed, 4, 48, None)
    with pytest.raises(RuntimeError, match=r"packed must be pack_a8's contiguous \(N/16, 640\) uint8 tensor"):
        ext.gemv_a8(x, packed[:, :-1].contiguous(), 4, group, None)  # one byte short
    with pytest.raises(RuntimeError, match=r"packed must be pack_a8's contiguous \(N/16, 1088\)"):
        ext.gemv_a8(x, packed, 8, 64, None)  # int4 codes read as int8: the sizes disagree
    with pytest.raises(RuntimeError, match="x must be a contiguous fp32"):
        ext.gemv_a8(x.double(), packed, 4, group, None)


def test_scales_outside_fp16_are_refused_and_the_layer_says_which_kernel_runs():
    """gemv_a8 holds int4 scales and zero terms in fp16: a scale below 2^-14 (subnormal: its relative precision
    lost) or a value past 65504 is refused by name, and WeightOnlyLinear then runs torch's kernel and says why."""
    codes = torch.zeros(16, 64, dtype=torch.uint8)
    ok = torch.full((16, 2), 0.01)
    tiny = ok.clone()
    tiny[3, 1] = 2.0 ** -15
    with pytest.raises(RuntimeError, match=r"pack_a8: row 3 group 1: scale .* outside fp16's range"):
        ext.pack_a8(codes, 4, tiny, ok, 32)
    with pytest.raises(RuntimeError, match="outside fp16's range"):
        ext.pack_a8(codes, 4, ok, ok * 1e7, 32)
    lin = nn.Linear(64, 16)
    with torch.no_grad():
        lin.weight.mul_(1e-5)  # group ranges ~1e-5: scales ~1e-6, below fp16's normal range
    q = WeightOnlyLinear(lin, bits=4, group_size=32, kernel="a8", name="tiny")
    x = torch.randn(3, 64)
    y = q(x)
    assert q.a8() is None and "gemv_a8" not in q.kernel_used()
    if ext.a8_isa():
        assert q.note.startswith("tiny: int4 scales in") and "outside fp16's normal range" in q.note
    assert torch.allclose(y, F.linear(x, q.dequantized(), q.bias), rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
def test_weight_only_linear_a8_kernel(bits):
    lin = nn.Linear(256, 64)
    q = WeightOnlyLinear(lin, bits=bits, group_size=64, kernel="a8")
    x = torch.randn(2, 5, 256)
    y = q(x)
    ref = F.linear(x, q.dequantized(), q.bias)
    _, step = rounded(x.reshape(-1, 256))
    w = q.dequantized().abs().double()
    if bits == 4:  # fp16 scale and zero term: each weight within 2^-11 (|scale * code| + |zterm|) of its fp32 value
        s = q.scale.double().repeat_interleave(64, 1)
        w = w + 2.0 ** -11 * (s * q.codes.double() + (s * q.zero.double().repeat_interleave(64, 1)).abs())
    bound = ((step / 2) @ w.T + x.reshape(-1, 256).abs().double() @ (w - q.dequantized().abs().double()).T)
    bound = bound.reshape(2, 5, 64)
    assert y.shape == (2, 5, 64) and ((y - ref).abs().double() <= bound + 1e-4).all()
    if ext.a8_isa():
        assert q.a8() is not None and f"gemv_a8 ({ext.a8_isa()}" in q.kernel_used()
    else:  # no vector ISA for it: the exact kernels run, and the layer says which
        assert q.a8() is None and "gemv_a8" not in q.kernel_used()
        # torch's int4 kernel takes bf16 activations (each within 2^-9 of itself) and returns bf16 (2^-9 of the
        # result); int8's exact GEMV is fp32 throughout. Twice those relative steps bound the difference (an
        # absolute 1e-2 failed ~1 run in 6 with unseeded inputs: the bf16 sums of 256 terms reach ~0.01)
        xa = x.reshape(-1, 256).abs() @ q.dequantized().abs().T
        assert ((y - ref).abs() <= 2.0 ** -8 * (xa.reshape(2, 5, 64) + ref.abs()) + 1e-5).all()


def test_prefetch_distance_changes_no_result():
    """The software prefetch distances (into L1, into L2) are speed knobs only (hints to the CPU): every pair,
    including none, gives the same bits; the setter reports the pair in force and -1 leaves a distance as it is."""
    packed, group, _ = layer(64, 256, 4, 32, seed=11)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(2))
    before = ext.a8_prefetch()
    assert len(before) == 2 and all(d >= 0 for d in before)
    try:
        ref = ext.gemv_a8(x, packed, 4, group, None)
        for l1, l2 in ((0, 0), (64, 0), (8192, 0), (0, 8192), (1024, 1 << 20)):  # 1 MiB: far past the layer's end
            assert tuple(ext.a8_prefetch(l1, l2)) == (l1, l2)
            assert torch.equal(ext.gemv_a8(x, packed, 4, group, None), ref)
        assert tuple(ext.a8_prefetch(l2=4096)) == (1024, 4096)  # l1 left as it was
    finally:
        ext.a8_prefetch(*before)
    assert tuple(ext.a8_prefetch()) == tuple(before)


AMX = ext is not None and ext.a8_amx() > 0


def test_amx_threshold_is_a_knob_and_zero_without_amx():
    """a8_amx(rows) sets the fewest rows that run the AMX kernel (amx.cpp) and reports it; it reports 0 (never) where
    the build, the CPU or the OS gives no AMX, whatever is asked."""
    before = ext.a8_amx()
    try:
        assert ext.a8_amx(5) == (5 if AMX else 0)
        assert ext.a8_amx() == (5 if AMX else 0)  # -1 leaves it
        assert ext.a8_amx(0) == 0
    finally:
        ext.a8_amx(before)
    assert ext.a8_amx() == before


@pytest.mark.skipif(not AMX, reason="no AMX kernel here (build without -mamx-int8, a CPU without AMX, or the OS "
                                    "refused the tile state)")
@pytest.mark.parametrize("bits,group", [(4, 32), (4, 128), (8, None)])
@pytest.mark.parametrize("K", [256, 160, 32])  # 8, 5 (odd) and 1 blocks of 32 through the kernel's block pipeline
# 12, 29: a last group of 12 and 13 rows, filled with zero rows; 23, 40: a last 7 and 8 rows, one vector pass;
# 5: no group of 16 at all (the threshold at 1 here), the vector pass alone
@pytest.mark.parametrize("M", [5, 12, 16, 23, 29, 40])
def test_amx_kernel_gives_the_vector_kernels_bits(bits, group, K, M):
    """The AMX kernel's integer sums are exact and its float steps are the VNNI kernel's, in the same order: every
    output is the same bits as the vector kernel's (so a prefill through AMX and a decode through VNNI agree)."""
    if group and K % group:
        pytest.skip(f"group {group} does not divide K = {K}")
    N = 80
    packed, group, _ = layer(N, K, bits, group or K, seed=M + bits)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)) * 2
    x[:, 3] = -30.0
    bias = torch.randn(N)
    before = ext.a8_amx()
    try:
        ext.a8_amx(0)
        vec = ext.gemv_a8(x, packed, bits, group, bias)
        ext.a8_amx(1)
        amx = ext.gemv_a8(x, packed, bits, group, bias)
    finally:
        ext.a8_amx(before)
    assert torch.equal(amx, vec)
