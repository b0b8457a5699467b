"""effml.native's gemv_tiles (fp32 / bf16 weights, tiles_width() output rows interleaved) and huge() (tiles.cpp).

Reference: the product in fp64 of the same (bf16-widened) weights. gemv_tiles sums in fp32 in k order, so it may
differ by fp32 rounding only: |error| <= K * 2^-23 * sum_k |x_k w_k| (a loose a-priori bound for a length-K
recursive sum; the observed error is far below it). Shapes cover an N that is not a multiple of the width (the last
group's zero padding must never reach the output), a number of groups that is odd (one or two rows take two groups
per pass: the last one alone; one row of bf16 four, then two, then one), several passes of rows (12 per pass on
AVX-512, 6 on AVX2), and a bias (no rows: test_native).
"""

import pytest
import torch

from effml import native

ext = native.load()
pytestmark = pytest.mark.skipif(ext is None, reason=f"no native kernels here: {native.status()}")


def _check(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> None:
    N, K = w.shape
    y = ext.gemv_tiles(x, ext.pack_tiles(w), N, bias)
    ref = x.double() @ w.double().T + (0 if bias is None else bias.double())
    bound = K * 2.0 ** -23 * (x.double().abs() @ w.double().abs().T) + 1e-30
    assert y.shape == (x.shape[0], N) and y.dtype == torch.float32
    assert ((y.double() - ref).abs() <= bound).all()


@pytest.mark.parametrize("N,K,M", [(16, 32, 1), (37, 40, 3), (960, 576, 5), (100, 96, 8), (50, 64, 17), (80, 24, 2),
                                   (96, 16, 1), (200, 48, 12), (300, 64, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_tiles_matches_the_product(N, K, M, dtype):
    g = torch.Generator().manual_seed(N * 1000 + K + M)
    w = torch.randn(N, K, generator=g).to(dtype)
    x = torch.randn(M, K, generator=g)
    _check(x, w, None)
    _check(x, w, torch.randn(N, generator=g))


def test_prefetch_distance_changes_no_result():
    """The software prefetches (into L1, into L2) only hint the memory system: every pair of distances gives the same
    bits (0 = none); the setter returns the pair in force and -1 leaves a distance as it is."""
    g = torch.Generator().manual_seed(5)
    w, x = torch.randn(200, 48, generator=g), torch.randn(9, 48, generator=g)
    t = ext.pack_tiles(w)
    before = tuple(ext.tiles_prefetch())
    try:
        ys = []
        # 1 MiB: far past the end of these tiles (a prefetch never faults)
        for pf in ((0, 0), (64, 0), (2048, 8192), (0, 1 << 20), (1 << 20, 64)):
            assert tuple(ext.tiles_prefetch(*pf)) == pf
            ys.append(ext.gemv_tiles(x, t, 200, None))
        assert tuple(ext.tiles_prefetch(l1=128)) == (128, 64)
    finally:
        ext.tiles_prefetch(*before)
    assert tuple(ext.tiles_prefetch()) == before
    assert all(torch.equal(ys[0], y) for y in ys[1:])


def test_read_sum_is_the_sum():
    # 1..n in fp32: exact integers below 2^24, the sum n(n+1)/2 = 500500 for n = 1000 (an odd tail past 4 vectors)
    assert ext.read_sum(torch.arange(1, 1001, dtype=torch.float32)) == 500500.0
    with pytest.raises(RuntimeError, match="read_sum: t must be a contiguous fp32"):
        ext.read_sum(torch.ones(4, dtype=torch.float64))


def test_pack_tiles_layout_and_padding():
    W = ext.tiles_width()  # 32 on AVX-512 (two vectors), 16 on AVX2
    assert W == {"AVX-512": 32, "AVX2": 16, "scalar": 16}[ext.tiles_isa()]
    N = W + 4  # two groups, the second with W - 4 zero rows
    w = torch.arange(N * 3, dtype=torch.float32).reshape(N, 3)
    t = ext.pack_tiles(w)
    assert t.shape == (2, 3, W)
    assert torch.equal(t[0, 2], w[:W, 2]) and torch.equal(t[1, 1, :4], w[W:, 1])  # tiles[g][k][j] = w[W g + j][k]
    assert not t[1, :, 4:].any()


def test_pack_tiles_bf16_pairs():
    """bf16 tiles of the vector builds: each k's W weights in pairs, 32-bit lane i = (output i, output W/2 + i), so one
    load gives both vectors; the scalar build keeps them in order."""
    W = ext.tiles_width()
    N = W + 4
    w = torch.arange(N * 3, dtype=torch.float32).reshape(N, 3).to(torch.bfloat16)  # integers < 256: exact in bf16
    t = ext.pack_tiles(w)
    assert t.shape == (2, 3, W) and t.dtype == torch.bfloat16
    if ext.tiles_isa() == "scalar":
        assert torch.equal(t[0, 2], w[:W, 2])
        return
    half = W // 2
    assert torch.equal(t[0, 2, 0::2], w[:half, 2]) and torch.equal(t[0, 2, 1::2], w[half:W, 2])
    assert torch.equal(t[1, 1, 0:8:2], w[W:, 1]) and not t[1, :, 8:].any() and not t[1, :, 1::2].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_are_independent(dtype):
    """A row's result does not depend on the rows computed beside it (same pass or not; one row of bf16 takes four
    groups a pass, more rows two or one): bit for bit. 300 outputs: 10 groups of 32 (AVX-512), 19 of 16 (AVX2)."""
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(300, 64, generator=g).to(dtype), torch.randn(11, 64, generator=g)
    t = ext.pack_tiles(w)
    together = ext.gemv_tiles(x, t, 300, None)
    for m in range(11):
        assert torch.equal(ext.gemv_tiles(x[m:m + 1].contiguous(), t, 300, None)[0], together[m])


def test_huge_is_an_equal_copy():
    for t in (torch.randn(3, 5), torch.randn(700_000), torch.arange(600_000, dtype=torch.int32).reshape(600, 1000)):
        h = ext.huge(t)
        assert torch.equal(h, t) and h.is_contiguous() and h.data_ptr() != t.data_ptr()


def test_arena_places_equal_copies_back_to_back_on_64_byte_lines():
    ts = [torch.randn(3, 5), torch.arange(600_000, dtype=torch.int32).reshape(600, 1000),
          torch.randint(0, 255, (1001,), dtype=torch.uint8), torch.randn(8, 4).T]  # the last one non-contiguous
    out = ext.arena(ts)
    assert all(torch.equal(a, b) and a.is_contiguous() and a.dtype == b.dtype for a, b in zip(out, ts))
    # 60 B -> one 64-byte line, 2.4 MB (a multiple of 64), 1001 B -> 16 lines: each starts where the last one ends
    starts = [t.data_ptr() for t in out]
    assert [b - a for a, b in zip(starts, starts[1:])] == [64, 2_400_000, 1024]
    assert starts[0] % 64 == 0
    first = out[0].clone()
    del out[1:], ts  # the region lives as long as any view of it
    assert torch.equal(out[0], first)


def test_arena_without_copying_gives_views_to_fill():
    ts = [torch.randn(3, 5), torch.arange(10, dtype=torch.int64), torch.randint(0, 255, (100,), dtype=torch.uint8)]
    views = ext.arena(ts, copy=False)  # shaped like ts, unwritten: the caller fills them one by one
    assert [(v.shape, v.dtype) for v in views] == [(t.shape, t.dtype) for t in ts]
    starts = [v.data_ptr() for v in views]
    assert [b - a for a, b in zip(starts, starts[1:])] == [64, 128]  # 60 B and 80 B, each rounded to 64-byte lines
    for v, t in zip(views, ts):
        v.copy_(t)
    assert all(torch.equal(v, t) for v, t in zip(views, ts))


def test_arena_with_ordinary_pages(monkeypatch):
    monkeypatch.setenv("EFFML_HUGE_PAGES", "0")
    a, b = ext.arena([torch.ones(10), torch.zeros(3, dtype=torch.int64)])
    assert torch.equal(a, torch.ones(10)) and torch.equal(b, torch.zeros(3, dtype=torch.int64))
    assert b.data_ptr() - a.data_ptr() == 64


def test_bad_arguments_are_named():
    W = ext.tiles_width()
    t = ext.pack_tiles(torch.randn(W - 4, 8))  # one group
    with pytest.raises(RuntimeError, match="x has 9 columns, the tiles K = 8"):
        ext.gemv_tiles(torch.randn(2, 9), t, W - 4, None)
    with pytest.raises(RuntimeError, match=f"N = {W + 1} does not match 1 tiles of {W} rows"):
        ext.gemv_tiles(torch.randn(2, 8), t, W + 1, None)
    with pytest.raises(RuntimeError, match=f"bias must be a contiguous fp32 tensor of N = {W - 4}"):
        ext.gemv_tiles(torch.randn(2, 8), t, W - 4, torch.randn(W - 5))
    with pytest.raises(RuntimeError, match="fp32 or bf16"):
        ext.pack_tiles(torch.ones(4, 4, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="x must be a contiguous fp32"):
        ext.gemv_tiles(torch.randn(8, 2).T, t, 20, None)  # a transposed (non-contiguous) view
