"""The fused decode step (effml.llm.fastpath) computes what the generic Transformer.hidden computes."""

import copy

import pytest
import torch

from effml.llm import fastpath
from effml.llm.engine import FormatConfig, PackedLinear, prepare, to_format
from effml.llm.generate import GenerateConfig, generate, new_session
from effml.llm.kvcache import CacheFull

pytestmark = pytest.mark.skipif(not fastpath.available(), reason="effml's native kernels are not built here")


def _feed_both(m, prompt, steps, kv="contiguous"):
    """Logits of the prompt's prefill and each later feed, with the fused path on and off."""
    out = []
    for fast in (True, False):
        m.fast_decode = fast
        s = new_session(kv, m, 64)
        out.append([s.feed(prompt)] + [s.feed(toks) for toks in steps])
    m.fast_decode = True
    return out


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8", "int4"])
def test_fused_steps_give_the_generic_logits(model, fmt):
    m = copy.deepcopy(model)
    to_format(m, FormatConfig(fmt))
    plan = prepare(m)
    assert m.fast_decode and any("fused decode ops" in k for k in plan.kernels)
    with torch.no_grad():
        fast, slow = _feed_both(m, [5, 17, 42, 7], [[3], [9, 1, 2, 60], [11]])  # 1-token and 4-token feeds
    for a, b in zip(fast, slow):
        # the same fp32 arithmetic in another summation order: logits of size ~10 agree to ~1e-5 relative
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    if fmt != "bf16" or fastpath.kernel_spec(m.layers[0].attention.wqkv) is not None:
        # every projection is effml's GEMV or torch's int4 kernel: the whole layer loop runs in C++ (int4: its own
        # fp32 <-> bf16 loops around the kernel, which must round as torch's .to() does for the 1e-5 match below)
        assert m._fast_layers is not None
    layers, m._fast_layers = m._fast_layers, None  # the Python loop over the same kernels: the same logits
    with torch.no_grad():
        py, _ = _feed_both(m, [5, 17, 42, 7], [[3], [9, 1, 2, 60], [11]])
    m._fast_layers = layers
    for a, b in zip(py, fast):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    m.fast_decode = False
    ref = generate(m, [5, 17, 42], GenerateConfig(max_new_tokens=10)).tokens
    m.fast_decode = True
    assert generate(m, [5, 17, 42], GenerateConfig(max_new_tokens=10)).tokens == ref


@pytest.mark.parametrize("fmt", ["fp32", "int8", "int4"])
def test_qk_norms_and_wide_heads_run_in_the_fused_step(fmt):
    """Qwen3's shape: 4 heads of 32 in a 64-wide model, each q and k head RMS-normed before RoPE; the C++ layer loop
    applies the norms (a loop that skipped them would give other logits: the weights below are far from 1)."""
    from effml.llm.model import ModelArgs, build

    m = build(ModelArgs.preset("tiny", head_size=32, qk_norm=True))
    g = torch.Generator().manual_seed(0)  # (the global generator's state here depends on the tests run before)
    with torch.no_grad():
        for b in m.layers:
            b.attention.q_norm.weight.normal_(1, 0.5, generator=g)
            b.attention.k_norm.weight.normal_(1, 0.5, generator=g)
    to_format(m, FormatConfig(fmt))
    prepare(m)
    assert m._fast_layers is not None and len(m._fast_layers[3]) == 2 * m.args.n_layers  # the q/k norm weights
    # fp32 sums in another order, as above. int4 runs gemv_a8, which rounds each activation to int8 (per 32): a
    # last-bit difference from the other order can move one activation by a whole int8 step, about 1% of its
    # block's largest, and the logits by up to ~2e-3 (12 seeds of these norm weights: ten within 2e-7, two at
    # 3.5e-4 and 1.9e-3); dropping one layer's q norm moves them by 0.07-0.29 in the same 12 seeds
    tol = 5e-3 if fmt == "int4" else 1e-4
    with torch.no_grad():
        fast, slow = _feed_both(m, [5, 17, 42, 7], [[3], [9, 1, 2, 60], [11]])
        for a, b in zip(fast, slow):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=tol)
        m._fast_layers[3][0].fill_(1.0)  # layer 0's q norm dropped: the fused step's logits move
        moved, _ = _feed_both(m, [5, 17, 42, 7], [])
    assert (moved[0] - fast[0]).abs().max() > max(1e-2, 10 * tol)


def test_calls_it_does_not_take_run_the_generic_step(model):
    m = copy.deepcopy(model)
    prepare(m)
    long_feed = list(range(1, fastpath.MAX_TOKENS + 2))  # 17 tokens: a prefill, not a single-sequence step
    s = new_session("contiguous", m, 64)
    assert not fastpath.eligible(m, torch.tensor([long_feed]), s.cache)
    assert fastpath.eligible(m, torch.tensor([[1]]), s.cache)
    p = new_session("paged", m, 64)  # a paged cache: generic (the fused attend reads a contiguous one)
    assert not fastpath.eligible(m, torch.tensor([[1]]), p.cache)
    with torch.no_grad():
        fast, slow = _feed_both(m, long_feed, [[4]], kv="paged")
    torch.testing.assert_close(fast[1], slow[1])


@pytest.mark.parametrize("kv", ["contiguous", "paged"])
def test_a_long_fp32_feed_takes_the_cxx_loop(model, kv):
    """fp32: gemv_tiles takes any number of rows, so a prefill (40 tokens) and a 12-token verification run through
    the C++ block loop; the logits are the generic path's (the same gemv_tiles sums through PackedLinear, attention
    in C++ instead of SDPA). Tiles of bf16 weights take at most ROWS_FLOAT rows there (oneDNN's bf16 matmul in the
    generic path is faster for more)."""
    m = copy.deepcopy(model)
    prepare(m)
    specs = m._fast_layers[2]
    assert all(sp[0] == 4 and sp[2] is None for sp in specs) and all(map(fastpath.many_rows, specs))
    assert all(isinstance(p, PackedLinear) and p.packed is None for p in fastpath.projections(m))  # no library copy
    long_feed = [(7 * i) % 90 + 1 for i in range(40)]
    s = new_session(kv, m, 64)
    assert fastpath.eligible_rows(m, torch.tensor([long_feed]), s.cache)
    with torch.no_grad():
        fast, slow = _feed_both(m, long_feed, [[4] * 12, [9]], kv=kv)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    m._fast_layers = (*m._fast_layers[:2], [(k, w.to(torch.bfloat16), sc, b, n) for k, w, sc, b, n in specs],
                      *m._fast_layers[3:])
    assert not fastpath.eligible_rows(m, torch.tensor([long_feed]), s.cache)
    assert fastpath.eligible_rows(m, torch.tensor([long_feed[:fastpath.ROWS_FLOAT]]), s.cache)


def test_a_full_cache_is_the_same_error(model):
    m = copy.deepcopy(model)
    prepare(m)
    s = new_session("contiguous", m, 8)
    with torch.no_grad():
        s.feed([1, 2, 3, 4, 5, 6, 7])
        with pytest.raises(CacheFull, match="exceed max_len=8"):
            s.feed([8, 9])


def test_bf16_weights_decode_with_fp32_activations(model):
    """bf16 weights are widened exactly inside effml's GEMV: the step runs in fp32 with the bf16 weights' values."""
    m = copy.deepcopy(model)
    to_format(m, FormatConfig("bf16"))
    plan = prepare(m)
    assert m.fast_decode and plan.act_dtype == "float32" and m.tok_embeddings.weight.dtype == torch.bfloat16
    with torch.no_grad():
        fast, slow = _feed_both(m, [5, 17, 42, 7], [[3], [9, 1]])
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["fp32", "int8", "int4"])
@pytest.mark.parametrize("kind", ["paged", "varlen", "contiguous"])
def test_several_sequences_in_one_pass_give_each_sequences_own_logits(model, fmt, kind):
    """fastpath.fast_rows (continuous batching, chunked prefill, a static batch): one C++ pass over the tokens of
    several sequences at different lengths gives, per sequence, what the generic path gives (the same fp32 sums;
    int8/int4 on gemv_a8 round each row's activations on their own)."""
    from effml.llm.kvcache import ContiguousCache, PagedCache, VarlenPagedCache

    m = copy.deepcopy(model)
    to_format(m, FormatConfig(fmt))
    prepare(m)
    prompts = [[5, 17, 42, 7, 8], [3, 9], [11, 12, 13, 14, 15, 16, 2]]
    steps = [[21], [22], [23]]

    def run(fast: bool) -> list[torch.Tensor]:
        m.fast_decode = fast
        out = []
        with torch.no_grad():
            if kind == "contiguous":  # a right-padded static batch: prefill (B, P), then one token per row
                cache = ContiguousCache(m.args, 3, 16)
                P = max(map(len, prompts))
                toks = torch.tensor([p + [0] * (P - len(p)) for p in prompts])
                out.append(m(toks, cache=cache))
                cache.truncate([len(p) for p in prompts])
                out.append(m(torch.tensor(steps), cache=cache))
                return out
            cache = (VarlenPagedCache if kind == "varlen" else PagedCache)(m.args, 32, 4)
            for i, p in enumerate(prompts):
                cache.add(i)
                cache.select_varlen([i], [len(p)]) if kind == "varlen" else cache.select([i])
                out.append(m(torch.tensor([p]), cache=cache))  # each prompt's prefill
            if kind == "varlen":  # one flat row: 1 token of sequence 0, 2 of 1, 1 of 2; then a (B, 1) step on
                cache.select_varlen([0, 1, 2], [1, 2, 1])  # the same cache (the continuous engine's decode)
                out.append(m(torch.tensor([[21, 22, 30, 23]]), cache=cache))
                cache.select([0, 1, 2])
                out.append(m(torch.tensor([[24], [25], [26]]), cache=cache))
            else:
                cache.select([0, 1, 2])
                out.append(m(torch.tensor(steps), cache=cache))
        m.fast_decode = True
        return out

    fast, slow = run(True), run(False)
    m.fast_decode = True
    assert fastpath.eligible_rows(m, torch.tensor(steps), PagedCache(m.args, 8, 4)) == (m._fast_layers is not None)
    for a, b in zip(fast, slow):
        if fmt == "fp32":
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        else:  # gemv_a8's rounding of an activation can land on the other side of a half step: a bounded change
            assert (a - b).abs().max() < 0.05 * b.abs().max()


def test_attend_rows_is_attend_per_sequence():
    from effml import native

    ext = native.load()
    g = torch.Generator().manual_seed(0)
    H, Hkv, hd, L = 4, 2, 16, 12
    k1, v1 = torch.zeros(2, Hkv, L, hd), torch.zeros(2, Hkv, L, hd)  # two sequences, contiguous rows
    k2, v2 = k1.clone(), v1.clone()
    lens = [3, 5]
    for c in (k1, v1, k2, v2):
        c[:, :, :5] = torch.randn(2, Hkv, 5, hd, generator=g)
    k2.copy_(k1), v2.copy_(v1)
    qkv = torch.randn(3, (H + 2 * Hkv) * hd, generator=g)  # tokens: seq 0 at 3, seq 1 at 5 and 6
    cos, sin = torch.randn(3, hd, generator=g), torch.randn(3, hd, generator=g)
    got = ext.attend_rows(qkv, cos, sin, k1, v1, None, torch.tensor([0, 1, 1]), torch.tensor([3, 5, 6]), H, Hkv)
    a = ext.attend(qkv[:1].contiguous(), cos[:1].contiguous(), sin[:1].contiguous(), k2[0], v2[0], lens[0], H, Hkv)
    b = ext.attend(qkv[1:].contiguous(), cos[1:].contiguous(), sin[1:].contiguous(), k2[1], v2[1], lens[1], H, Hkv)
    torch.testing.assert_close(got, torch.cat([a, b]), rtol=0, atol=0)  # the same sums in the same order
    torch.testing.assert_close(k1, k2, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="outside the cache"):
        ext.attend_rows(qkv, cos, sin, k1, v1, None, torch.tensor([0, 2, 1]), torch.tensor([3, 5, 6]), H, Hkv)


@pytest.mark.parametrize("fmt", ["fp32", "int4", "int8"])
def test_the_weights_a_step_reads_lie_in_one_region_in_reading_order(model, fmt):
    m = copy.deepcopy(model)
    to_format(m, FormatConfig(fmt))
    prepare(m)
    mods = [p for b in m.layers for p in (b.attention.wqkv, b.attention.wo, b.feed_forward.w13, b.feed_forward.w2)]
    mods.append(m.output)
    specs = [fastpath.kernel_spec(p) for p in mods]
    # gemv_a8 (int4: kind 2, int8: 3) or gemv_tiles (4) for every projection; the tiny head (97 rows, not a multiple
    # of 16) may run effml's row-major int8 GEMV (kind 0), which place() leaves where it is
    assert all(s[0] in (2, 3, 4) for s in specs[:-1])
    specs = [s for s in specs if s[0] in (2, 3, 4)]
    assert all(s[2] is None for s in specs)  # gemv_a8's scales travel inside its packed tensor, tiles have none
    starts = [s[1].data_ptr() for s in specs]
    ends = [s[1].data_ptr() + s[1].nbytes for s in specs]
    # each one starts on the first 64-byte line after the one before it: one sequential stream per step
    assert all(b == -(-e // 64) * 64 for e, b in zip(ends, starts[1:])), fmt
    with torch.no_grad():
        before = new_session("contiguous", m, 16).feed([5, 17, 42, 7])
        assert fastpath.place(m, __import__("effml.native", fromlist=["load"]).load()) > 0  # placed again: same numbers
        fastpath.enable(m)
        assert torch.equal(new_session("contiguous", m, 16).feed([5, 17, 42, 7]), before)
