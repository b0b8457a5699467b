"""effml's compiled CPU kernels against the torch ops they replace (same arithmetic, fp32 rounding only)."""

import pytest
import torch
import torch.nn.functional as F

from effml import native
from effml.llm.model import gqa_attention

ext = native.load()
pytestmark = pytest.mark.skipif(ext is None, reason=f"no native kernels here: {native.status()}")


@pytest.mark.parametrize("rows", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("K", [576, 300])  # 300: not a multiple of the 16 (AVX-512) or 8 (AVX2) lanes: scalar tail
def test_int8_gemv_is_the_weight_only_product(rows, K):
    g = torch.Generator().manual_seed(rows * K)
    x = torch.randn(rows, K, generator=g)
    w = torch.randint(-127, 128, (40, K), dtype=torch.int8, generator=g)
    scale, bias = torch.rand(40, generator=g) / 100, torch.randn(40, generator=g)
    ref = (x.double() @ w.double().T) * scale.double() + bias.double()  # (rows, 40) in fp64
    got = ext.gemv(x, w, scale, bias)
    # fp32 sums of K products of |x w| <= ~4 * 127: the rounding error is < K * eps32 * max partial sum
    bound = K * 2 ** -23 * (x.abs() @ w.abs().double().T.float()).max() * scale.max()
    assert got.shape == (rows, 40) and (got.double() - ref).abs().max() <= bound
    assert (ext.gemv(x, w, scale, None).double() + bias.double() - ref).abs().max() <= bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float_gemv_is_f_linear(dtype):
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(3, 300, generator=g), torch.randn(50, 300, generator=g).to(dtype), torch.randn(50, generator=g)
    ref = x.double() @ w.double().T + b.double()  # the bf16 weights exactly (widening bf16 -> fp32 is exact)
    bound = 300 * 2 ** -23 * (x.abs() @ w.abs().float().T).max()  # fp32 rounding of 300-term sums
    assert (ext.gemv(x, w, None, b).double() - ref).abs().max() <= bound


def test_gemv_refuses_wrong_inputs_by_name():
    x, w, s = torch.randn(1, 64), torch.randint(-5, 5, (8, 64), dtype=torch.int8), torch.rand(8)
    with pytest.raises(RuntimeError, match="int8 weights need a scale"):
        ext.gemv(x, w, None, None)
    with pytest.raises(RuntimeError, match="bf16/fp32 take none"):
        ext.gemv(x, w.float(), s, None)
    with pytest.raises(RuntimeError, match="int8, bf16 or fp32"):
        ext.gemv(x, w.half(), None, None)
    with pytest.raises(RuntimeError, match="K = x.size"):
        ext.gemv(torch.randn(1, 32), w, s, None)
    with pytest.raises(RuntimeError, match="scale must be"):
        ext.gemv(x, w, torch.rand(7), None)


def test_rms_norm_and_silu_mul_match_torch():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 576, generator=g) * 3, torch.rand(576, generator=g)
    torch.testing.assert_close(ext.rms_norm(x, w, 1e-5), F.rms_norm(x, (576,), w, 1e-5), rtol=1e-5, atol=1e-5)
    gu = torch.randn(4, 2 * 96, generator=g) * 4
    torch.testing.assert_close(ext.silu_mul(gu), F.silu(gu[:, :96]) * gu[:, 96:], rtol=1e-5, atol=1e-5)


def _rotate(x, cos, sin):  # rotate-half RoPE, as effml.llm.model: x (..., T, hd), cos/sin (T, hd)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("hd, pos0", [(16, 5), (64, 37), (128, 37)])
def test_attend_is_rope_cache_write_and_causal_gqa_attention(T, hd, pos0):
    """H=6 query heads over Hkv=2 KV heads, pos0 tokens already cached, T new ones: the cache rows and the output
    are what RoPE + SDPA over the same cache give (query t sees positions 0..pos0+t). Head sizes 64 and 128 take
    the vector score path (16 positions at a time: 38-41 positions are two blocks and a tail), 16 the generic one."""
    g = torch.Generator().manual_seed(T)
    H, Hkv, L = 6, 2, 64
    kc, vc = torch.randn(Hkv, L, hd, generator=g), torch.randn(Hkv, L, hd, generator=g)
    k_ref, v_ref = kc.clone(), vc.clone()
    qkv = torch.randn(T, (H + 2 * Hkv) * hd, generator=g)
    ang = torch.arange(pos0, pos0 + T)[:, None] * torch.rand(hd // 2, generator=g)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)  # (T, hd)
    y = ext.attend(qkv, cos, sin, kc, vc, pos0, H, Hkv)
    heads = qkv.view(T, H + 2 * Hkv, hd).transpose(0, 1)  # (heads, T, hd)
    q, k, v = _rotate(heads[:H], cos, sin), _rotate(heads[H:H + Hkv], cos, sin), heads[H + Hkv:]
    k_ref[:, pos0:pos0 + T], v_ref[:, pos0:pos0 + T] = k, v
    torch.testing.assert_close(kc, k_ref)
    torch.testing.assert_close(vc, v_ref)
    S = pos0 + T
    mask = torch.arange(S)[None] <= torch.arange(pos0, S)[:, None]  # (T, S): query t sees 0..pos0+t
    ref = gqa_attention(q[None], k_ref[None, :, :S], v_ref[None, :, :S], mask[None])  # (1, H, T, hd)
    torch.testing.assert_close(y, ref[0].transpose(0, 1).reshape(T, H * hd), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="past the cache's max_len"):
        ext.attend(qkv, cos, sin, kc, vc, L - T + 1, H, Hkv)


def test_disabled_by_environment_says_so(monkeypatch):
    monkeypatch.setenv("EFFML_NATIVE_KERNELS", "0")
    native.load.cache_clear()
    try:
        assert native.load() is None and "EFFML_NATIVE_KERNELS=0" in native.status()
    finally:
        monkeypatch.delenv("EFFML_NATIVE_KERNELS")
        native.load.cache_clear()
        assert native.load() is not None


def test_the_build_is_keyed_by_source_torch_and_cpu(monkeypatch):
    before = native.tag()
    assert native.build_dir().name == before
    monkeypatch.setattr(native, "_cpu_flags", lambda: "flags: sse2 avx2")  # another CPU kind: another binary
    assert native.tag() != before


def test_a_stale_build_lock_is_cleared_and_a_fresh_one_kept(tmp_path):
    """A build killed half-way leaves torch's `lock` file, which would make every later build wait forever."""
    import os
    import time

    lock = tmp_path / "lock"
    lock.write_text("")
    native._clear_stale_lock(tmp_path)
    assert lock.exists()  # a build may hold it right now
    old = time.time() - 3600
    os.utime(lock, (old, old))
    native._clear_stale_lock(tmp_path)
    assert not lock.exists()


def test_measured_compute_roofs_are_physical():
    """fma_rate / vnni_rate time 12 independent chains on this thread. A real rate lies between one instruction per
    10 ns (any CPU that builds these kernels does far more) and 2 instructions a cycle at 6 GHz (no x86 core issues
    more FMAs or vpdpbusd a cycle, nor runs faster); lanes: 16 fp32 (AVX-512), 8 (AVX2), 1 (scalar); vpdpbusd 64."""
    if ext is None:
        pytest.skip(native.status())
    lanes = {"AVX-512": 16, "AVX2": 8}.get(ext.tiles_isa(), 1)
    fma = ext.fma_rate(0.02)
    assert lanes * 1e8 < fma < lanes * 2 * 6e9
    vnni = ext.vnni_rate(0.02)
    if ext.a8_isa() == "AVX-512 VNNI":
        assert 64 * 1e8 < vnni < 64 * 2 * 6e9
    else:
        assert vnni == 0.0


def test_kernels_split_work_over_torch_threads_with_the_same_bits():
    """The kernels are linked with OpenMP (without it at::parallel_for is inline and serial: every kernel ran on one
    thread whatever torch.get_num_threads() said), and a split changes which thread computes an output, never its
    sum: 1 and 2 threads give the same bits. The matrices are large enough to split: each thread is handed at
    least 256 KiB of weights (vec.h grain_for) and these hold 2-8 MiB."""
    from pathlib import Path

    from tests.native.test_a8 import layer

    assert b"libgomp" in Path(ext.__file__).read_bytes()  # DT_NEEDED: resolved to the libgomp torch loaded
    g = torch.Generator().manual_seed(11)
    w, x = torch.randn(2048, 512, generator=g), torch.randn(5, 512, generator=g)  # 4 MiB fp32
    t = ext.pack_tiles(w)
    packed, group, _ = layer(4096, 2048, 4, 32, seed=12)  # 4 MiB of int4 codes
    xa = torch.randn(3, 2048, generator=g)
    calls = [lambda: ext.gemv_tiles(x, t, 2048, None), lambda: ext.gemv(x, w, None, None),
             lambda: ext.gemv_a8(xa, packed, 4, group, None)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [c() for c in calls]
        torch.set_num_threads(2)
        two = [c() for c in calls]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_no_rows_give_an_empty_product_in_every_kernel():
    """M = 0 (a chunked-prefill step where no prompt ends asks the head for no rows): (0, N), not a division by
    zero in the row split or the threads' grain."""
    from tests.native.test_a8 import layer

    w = torch.randn(40, 64)
    packed, group, _ = layer(32, 64, 4, 32, seed=1)
    assert ext.gemv(torch.empty(0, 64), w, None, None).shape == (0, 40)
    assert ext.gemv_tiles(torch.empty(0, 64), ext.pack_tiles(w), 40, torch.randn(40)).shape == (0, 40)
    assert ext.gemv_a8(torch.empty(0, 64), packed, 4, group, None).shape == (0, 32)
