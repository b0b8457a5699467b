"""The decode step with a decode step's small ops fused (effml.native's rms_norm, attend, silu_mul).

    x = fast_hidden(model, tokens, cache)   # (1, T, C), or None when this call is not one the fast path takes

The generic `Transformer.hidden` dispatches ~170 aten ops per layer for one token (norm: 10, RoPE + cache write +
SDPA: ~100 with their views and casts), a few microseconds each: for SmolLM2-135M that is as long as reading the
int8 weights. Here a layer is 7 kernel calls: norm, fused QKV projection, attend (RoPE, cache write, causal
grouped-query attention), output projection + residual, norm, fused gate/up projection, SiLU·up, down projection +
residual;
the projections are called directly (`direct`), not through their modules, and when every projection is effml's
GEMV or torch's int4 kernel the whole block loop is one C++ call (`effml.native.decode_layers_rows`, `kernel_spec`).
The arithmetic is the same as the modules' (fp32), so the tokens agree with the generic path
(tests/llm/test_fastpath.py checks the logits). Taken when `prepare` enabled it, the activations are fp32 and the
projections fused, for: one sequence in a ContiguousCache, at most 16 new tokens (decode steps, speculative
verification); the tokens of several sequences (a contiguous batch, a PagedCache, a VarlenPagedCache) when every
projection is one of effml's kernels: any number on gemv_a8 and on gemv_tiles over fp32 weights (a prefill's rows
too), up to ROWS_FLOAT on bf16 tiles. The rest (a bf16 prefill, bf16 activations) takes the generic path.
"""

from __future__ import annotations

import torch

from effml.llm.kvcache import ContiguousCache

MAX_TOKENS = 16
ROWS_FLOAT = 8  # rows of several sequences the fp32/bf16 gemv_tiles takes (see eligible_rows)


def available() -> bool:
    from effml import native

    ext = native.load()
    return ext is not None and hasattr(ext, "attend")


def eligible(model, tokens: torch.Tensor, cache) -> bool:
    return (getattr(model, "fast_decode", False) and type(cache) is ContiguousCache and cache.batch == 1
            and tokens.shape[0] == 1 and tokens.shape[1] <= MAX_TOKENS
            and cache.k.dtype == torch.float32 and model.rope._table is not None
            and cache.lengths[0] + tokens.shape[1] <= model.rope._table[0].shape[0])


def eligible_rows(model, tokens: torch.Tensor, cache) -> bool:
    """Several sequences, or a chunked prefill, through the C++ block loop (`fast_rows`): a contiguous batch cache,
    a PagedCache or a VarlenPagedCache in fp32, every projection one of effml's kernels; more than ROWS_FLOAT rows
    only when every projection takes them at a matmul's speed (`many_rows`: gemv_a8, gemv_tiles on fp32 weights).
    gemv_tiles takes up to 12 rows per pass over the weights (AVX-512; 6 on AVX2), 8 at ~1.2x the cost of one; a
    longer bf16 prefill goes to oneDNN's bf16 matmul in the generic path."""
    from effml.llm.kvcache import PagedCache

    if not (getattr(model, "fast_decode", False) and model._fast_layers is not None and cache is not None
            and (isinstance(cache, PagedCache) or type(cache) is ContiguousCache)
            and cache.k.dtype == torch.float32 and model.rope._table is not None):
        return False
    if tokens.numel() > ROWS_FLOAT and not all(many_rows(sp) for sp in model._fast_layers[2]):
        return False
    return max(cache.lengths, default=0) + tokens.shape[1] <= model.rope._table[0].shape[0]


def many_rows(spec: tuple) -> bool:
    """Whether a projection (kernel_spec) takes any number of rows at the speed of a matmul: gemv_a8 (integer dot
    products, 8 rows per pass), or gemv_tiles on fp32 weights (blocks of up to 12 rows, 6 on AVX2, over each chunk of
    groups held in L2: a prefill at the FMA units' rate; bench_kernels' fp32 prefill rows). bf16
    tiles are widened at every use: oneDNN's bf16 matmul takes a bf16 prefill in the generic path."""
    return spec[0] in (2, 3) or (spec[0] == 4 and spec[1].dtype == torch.float32)


def fast_rows(model, tokens: torch.Tensor, cache) -> torch.Tensor:
    """The last block's hidden states (B, T, C) for `tokens` (B, T) of the cache's selected sequences (a
    VarlenPagedCache: one flat row (1, T) of every sequence's new tokens), in one C++ call
    (effml.native.decode_layers_rows): the projections read their weights once for all rows."""
    from effml import native
    from effml.llm.kvcache import PagedCache, VarlenPagedCache

    ext = native.load()
    B, T = tokens.shape
    positions = cache.begin(T)  # (B, T) or (1, T); allocates blocks, raises CacheFull like the generic path
    if isinstance(cache, VarlenPagedCache) and cache.counts is not None:
        seq = torch.repeat_interleave(torch.arange(len(cache.seq_ids)), torch.tensor(cache.counts))
    else:
        seq = torch.arange(B).repeat_interleave(T)
    pos = positions.reshape(-1).contiguous()
    tables = None  # cache.k: (L, B, Hkv, max_len, hd) contiguous, or a paged pool (L, Hkv, N, bs, hd)
    if isinstance(cache, PagedCache):
        rows = [cache.tables[s] for s in cache.seq_ids]
        nb = max(len(r) for r in rows)
        tables = torch.tensor([r + [0] * (nb - len(r)) for r in rows], dtype=torch.long)  # (S, nb)
    cos_t, sin_t = model.rope._table
    x = model.tok_embeddings(tokens.reshape(-1)).float()  # (B*T, C)
    norms, eps, projs, qk_norms, qk_eps = model._fast_layers  # qk_norms: [] unless Qwen3-style q/k norms
    a = model.args
    x = ext.decode_layers_rows(x, norms, eps, projs, cache.k, cache.v, cos_t[pos], sin_t[pos], tables, seq, pos,
                               a.n_heads, a.n_kv_heads, qk_norms, qk_eps)
    cache.commit(T)
    return x.reshape(B, T, -1)


def fast_hidden(model, tokens: torch.Tensor, cache) -> torch.Tensor | None:
    """The last block's hidden states (B, T, C) for `tokens` (B, T), written through `cache`; None if not eligible.
    When every projection is one of effml's kernels, one sequence's step goes through the same C++ loop as several
    sequences' (`fast_rows`): decoding alone, in a batch and in a speculative verification then give a token the
    same numbers (two compiled copies of the same sums can differ in the last bit, which gemv_a8's rounding can
    amplify). Otherwise a single sequence's step runs the fused ops from Python (`_fast_plan`)."""
    one = eligible(model, tokens, cache)
    if (one and model._fast_layers is not None) or eligible_rows(model, tokens, cache):
        return fast_rows(model, tokens, cache)
    if not one or model.args.qk_norm:  # the Python loop below has no per-head q/k norm: the generic step
        return None
    from effml import native

    ext = native.load()
    T = tokens.shape[1]
    positions = cache.begin(T)  # (1, T); raises CacheFull like the generic path
    pos0 = int(positions[0, 0])
    cos_t, sin_t = model.rope._table
    cos, sin = cos_t[pos0:pos0 + T], sin_t[pos0:pos0 + T]  # (T, hd) contiguous rows of the table
    x = model.tok_embeddings(tokens[0]).float()  # (T, C)
    a = model.args
    for i, (n1, e1, wqkv, wo, n2, e2, w13, w2) in enumerate(model._fast_plan):
        y = ext.attend(wqkv(ext.rms_norm(x, n1, e1)), cos, sin, cache.k[i, 0], cache.v[i, 0], pos0, a.n_heads,
                       a.n_kv_heads)
        x = x + wo(y)
        x = x + w2(ext.silu_mul(w13(ext.rms_norm(x, n2, e2))))
    cache.commit(T)
    return x[None]  # (1, T, C)


def kernel_spec(m) -> tuple | None:
    """A projection as effml.native.decode_layers_rows takes it: (0, codes, scale, bias, 0) for effml's int8 GEMV,
    (1, packed, scales_and_zeros, None, group) for torch's int4 kernel, (2, packed, None, None, group) / (3, packed,
    None, bias, in) for effml's int8-activation kernel on int4 / int8 codes (packed with their scales), (4, tiles,
    None, bias, out) for gemv_tiles on fp32/bf16 weights; None for a layer only its module can run."""
    from effml.compress.weight_only import WeightOnlyLinear
    from effml.llm.engine import PackedLinear

    if isinstance(m, WeightOnlyLinear) and m.a8() is not None and (m.bits == 8 or m.bias is None):
        _, packed, group = m.a8()
        if m.bits == 4:
            return (2, packed, None, None, group)
        return (3, packed, None, None if m.bias is None else m.bias.detach().float().contiguous(), group)
    if isinstance(m, WeightOnlyLinear) and m.native():
        (codes, _), (_, s32) = m._prepare(), m._gemv
        return (0, codes, s32, None if m.bias is None else m.bias.detach().float().contiguous(), 0)
    if isinstance(m, PackedLinear) and m._gemv is not None:
        return (4, m._tiles, None, m._bias32, m.out_features)
    if isinstance(m, WeightOnlyLinear) and m.bits == 4 and m.kernel in ("packed", "torch") and m.bias is None \
            and m.act_dtype == torch.bfloat16:
        w, sz = m._prepare()
        return (1, w, sz, None, m.spec.group_size)
    return None


def direct(m, ext):
    """A projection as one direct kernel call on (T, in) fp32 rows, T <= 16 (the nn.Module call and its wrapper's
    reshapes and dtype checks cost ~70 µs per layer, 2 ms per SmolLM2 token): the kernel `kernel_spec` names, else
    the module itself. Bound to the tensors the layer holds now: `engine.prepare` builds these after the weights
    are final."""
    spec = kernel_spec(m)
    if spec is None:
        return m
    kind, w, scale, bias, group = spec
    if kind == 0:
        return lambda x: ext.gemv(x, w, scale, bias)
    if kind == 4:
        return lambda x: ext.gemv_tiles(x, w, group, bias)
    if kind in (2, 3):
        bits = 4 if kind == 2 else 8
        return lambda x: ext.gemv_a8(x, w, bits, group, bias)
    op = torch.ops.aten._weight_int4pack_mm_for_cpu
    return lambda x: op(x.to(torch.bfloat16), w, group, scale).float()


def projections(model) -> list:
    """The projections a decode step multiplies by, in the order it reads them: per layer QKV, O, gate/up, down."""
    return [p for b in model.layers for p in (b.attention.wqkv, b.attention.wo, b.feed_forward.w13, b.feed_forward.w2)]


def place(model, ext) -> int:
    """Copy the packed weights a decode step reads (gemv_a8's codes with their scales, gemv_tiles' tiles) into
    one region in the order the step reads them: layer by layer (QKV, O, gate/up, down), then the head. A small
    model's projections are each far below a 2 MiB page, so per-tensor copies leave them in ordinary pages and make
    the step hundreds of short streams (`native.arena`). Returns the bytes placed."""
    from effml.compress.weight_only import WeightOnlyLinear
    from effml.llm.engine import PackedLinear

    mods = [m for m in projections(model) + [model.output]
            if (isinstance(m, WeightOnlyLinear) and m.a8() is not None)
            or (isinstance(m, PackedLinear) and m._gemv is not None)]
    if not mods:
        return 0
    views = ext.arena([m._a8[1] if isinstance(m, WeightOnlyLinear) else m._tiles for m in mods], copy=False)
    total = 0
    for m, view in zip(mods, views):  # fill one view, let its original go, then the next: ~one copy at a time
        if isinstance(m, WeightOnlyLinear):
            view.copy_(m._a8[1])
            m._a8 = (m._a8[0], view, m._a8[2])
        else:
            view.copy_(m._tiles)
            m._tiles = view
        total += view.nbytes
    return total


def enable(model) -> list[str]:
    """Turn the fast path on for a prepared fp32-activation model; returns notes (why not, when it cannot)."""
    from effml import native
    from effml.llm.model import compute_dtype

    model.fast_decode, model._fast_head = False, None
    if not available():
        return [f"fused decode ops unavailable: {native.status()}; the generic step runs"]
    if compute_dtype(model) != torch.float32:
        return []  # bf16 activations: the generic step (the fused ops are fp32)
    if not all(b.attention.fused and b.feed_forward.fused for b in model.layers):
        return ["fused decode ops need fused QKV and gate/up projections; the generic step runs"]
    qk = [n for b in model.layers for n in ((b.attention.q_norm, b.attention.k_norm) if b.attention.qk_norm else ())]
    for norm in [model.norm] + [n for b in model.layers for n in (b.attention_norm, b.ffn_norm)] + qk:
        norm.weight.data = norm.weight.data.float()  # a bf16 model's norm weights, widened exactly (C values each)
    ext = native.load()
    place(model, ext)
    model._fast_plan = [(b.attention_norm.weight.detach(), b.attention_norm.eps, direct(b.attention.wqkv, ext),
                         direct(b.attention.wo, ext), b.ffn_norm.weight.detach(), b.ffn_norm.eps,
                         direct(b.feed_forward.w13, ext), direct(b.feed_forward.w2, ext)) for b in model.layers]
    specs = [kernel_spec(p) for p in projections(model)]
    head = direct(model.output, ext)
    norm_w, norm_eps = model.norm.weight.detach(), model.norm.eps
    model._fast_head = None if head is model.output else (lambda x: ext.rms_norm(x, norm_w, norm_eps), head)
    model._fast_layers = None if any(sp is None for sp in specs) or not hasattr(ext, "decode_layers_rows") else (
        [w for b in model.layers for w in (b.attention_norm.weight.detach(), b.ffn_norm.weight.detach())],
        [e for b in model.layers for e in (float(b.attention_norm.eps), float(b.ffn_norm.eps))], specs,
        [n.weight.detach() for n in qk], float(model.args.norm_eps))
    model.fast_decode = True
    if qk and model._fast_layers is None:
        return ["a model with per-head q/k norms (Qwen3) decodes through the fused C++ loop only when every "
                "projection is one of effml's kernels; these are not: the generic step runs"]
    return []
