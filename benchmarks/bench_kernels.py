"""effml's CPU kernels one at a time on SmolLM2-135M's own shapes (1 thread): what the decode step is made of.

- the 120 int4 projections of a decode step through gemv_a8 (SmolLM2 int4 g32 as effml's engine prepares it): time,
  bytes read (codes + scales) and the rate, beside the machine's read bandwidth (effml.llm.roofline)
- the int8 LM head (49152 x 576) through gemv_a8, 1 row
- a prefill-sized product (64 rows) on the gate/up layer (3072 x 576, g32): gemv_a8 (its AMX kernel where the CPU
  has one, beside its AVX-512 VNNI kernel) vs torch's `_weight_int4pack_mm_for_cpu` (bf16 rows) vs an fp32 F.linear
  of the dequantized weight, in GMAC/s
- the fused attention (`attend`) of one token per layer at 8, 90 and 500 cached positions (9 query, 3 KV heads of
  64): as in a step (its code warm, the K/V cache cold), all warm, all cold
- the same 120 projections with every tensor in its own buffer vs in the engine's one region (native.arena)
- one int4 layer called again and again (its 1.1 MB of codes and scales in L2 and L3: the kernel's rate without DRAM);
  gemv_a8's prefetch distances (none; into L1 only; into L1 and L2 at 1-4 KiB and 8-32 KiB ahead of the code
  stream, interleaved); a one-thread sum over 256 MiB in 4 KiB and in 2 MiB pages; the greedy pick over 49152
  logits, numpy (generate.argmax) vs torch.argmax
- SmolLM2's fp32 projections and head (538 MB) for 1, 5 and 8 rows (a decode step, a speculative verification of
  γ = 4 and 7): gemv_tiles (32 outputs interleaved on AVX-512, 16 on AVX2: what the engine runs) vs the row-major
  GEMV (gemv.cpp); 9, 12 and 16 rows in one gemv_tiles call (up to 12 rows a pass on AVX-512, 6 on AVX2; more in
  blocks over each chunk of groups, its weights from L2 after the first block) vs in calls of 8 rows (a whole pass
  over the weights each)
- the same weights as bf16 tiles, 1 and 8 rows; a 512 x 576 slice of the gate/up layer in L2, 1 row, bf16 vs fp32
  (the kernel's own rate without DRAM)
- fp32 prefills: layer 0's projections at 9-400 rows through gemv_tiles, oneDNN's and MKL's packed matmuls and
  F.linear; a prompt of 39 and of 85 tokens through the engine vs the generic Python layer loop
- the compute roofs on this thread, measured: the fp32 FMA rate (GMAC/s) and vpdpbusd's int8 rate where the build
  has AVX-512 VNNI
Minimum over repeats, interleaved where compared. Run: `flock /tmp/effml_bench.lock python benchmarks/bench_kernels.py`.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from functools import partial

from common import print_table, write_results


_FLUSH = []


def best(fn, reps: int = 15, flush: bool = True) -> float:
    """The fastest of `reps` calls, each after reading 64 MiB of other memory (flush): a matrix smaller than the
    last-level cache (the 28 MB head) is read from DRAM, as in a decode step, not from the previous call's cache
    lines. flush=False for data a step has just written (the logits the greedy pick reads)."""
    import torch

    if not _FLUSH:
        _FLUSH.append(torch.ones(16 * 2 ** 20))
    t = float("inf")
    for _ in range(reps):
        if flush:
            _FLUSH[0].sum()
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def fp32_prefill_rows(f32, rowmajor: dict) -> list[dict]:
    """fp32 prefills: layer 0's four projections (QKV, O, gate/up, down) at 9-400 rows through effml's gemv_tiles
    (what the engine runs), oneDNN's packed matmul, MKL's packed sgemm and F.linear (GMAC/s over the four),
    interleaved; then whole prompts of 39 and 85 tokens through the engine (prepare: the C++ block loop,
    `fastpath.many_rows`) vs the generic Python layer loop over the same modules (fast_decode off). rowmajor:
    id(projection) -> its row-major weight, kept before prepare dropped it."""
    import torch
    import torch.nn.functional as F

    from effml import native
    from effml.llm import fastpath
    from effml.llm.generate import new_session

    ext = native.load()
    mods = fastpath.projections(f32)[:4]
    ws = [rowmajor[id(q)] for q in mods]  # main() kept them before prepare dropped them
    mkl = [torch.ops.mkl._mkl_reorder_linear_weight(w, 1) for w in ws]
    dnn = [torch.ops.mkldnn._reorder_linear_weight(w, 32) for w in ws]
    rows = []
    for M in (9, 16, 40, 80, 400):
        xs = [torch.randn(M, w.shape[1]) for w in ws]
        macs = M * sum(w.numel() for w in ws)
        calls = {"gemv_tiles": lambda: [ext.gemv_tiles(x, q._tiles, q.out_features, None) for x, q in zip(xs, mods)],
                 "oneDNN packed": lambda: [torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
                                           for x, p in zip(xs, dnn)],
                 "MKL packed": lambda: [torch.ops.mkl._mkl_linear(x, p, w, None, 1) for x, p, w in zip(xs, mkl, ws)],
                 "F.linear": lambda: [F.linear(x, w) for x, w in zip(xs, ws)]}
        t = {k: float("inf") for k in calls}
        for _ in range(3):
            for k, fn in calls.items():
                t[k] = min(t[k], best(fn, 5, False))
        rows.append({"kernel": f"fp32 prefill product, {M} rows, layer 0's 4 projections",
                     "ms": t["gemv_tiles"] * 1e3,
                     "rate": " / ".join(f"{macs / v / 1e9:.0f}" for v in t.values()) + " GMAC/s",
                     "beside": " / ".join(calls)})
    for n in (39, 85):
        ids = [(7 * i) % 5000 + 100 for i in range(n)]

        def prompt(fast: bool) -> float:
            f32.fast_decode = fast
            s = new_session("contiguous", f32, n + 1)
            t0 = time.perf_counter()
            with torch.no_grad():
                s.feed(ids, last=1)
            return time.perf_counter() - t0
        t = {True: float("inf"), False: float("inf")}
        for _ in range(5):
            for fast in t:
                t[fast] = min(t[fast], prompt(fast))
        f32.fast_decode = True
        cxx = fastpath.eligible_rows(f32, torch.tensor([ids]), new_session("contiguous", f32, n + 1).cache)
        rows.append({"kernel": f"fp32 prompt of {n} tokens (engine)", "ms": t[True] * 1e3,
                     "rate": f"{n * sum(w.numel() for w in ws) * len(f32.layers) / t[True] / 1e9:.0f} GMAC/s",
                     "beside": f"generic layer loop {t[False] * 1e3:.1f} ms; C++ loop takes it: {cxx}"})
    return rows


def main() -> int:
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="kernels", help="results file stem (e.g. kernels_avx2 for an AVX2 build)")
    opts = ap.parse_args()
    torch.set_num_threads(1)
    from effml import native
    from effml.compress.weight_only import WeightOnlyLinear
    from effml.llm import fastpath
    from effml.llm.engine import FormatConfig, prepare, to_format
    from effml.llm.model import fuse_projections
    from effml.llm.registry import load_model
    from effml.llm.roofline import read_bandwidth

    ext = native.load()
    if ext is None or not ext.a8_isa():
        print(f"no gemv_a8 here: {native.status()}")
        return 0
    lm = load_model("smollm2-135m")
    m = copy.deepcopy(lm.model)
    to_format(m, FormatConfig("int4"))
    prepare(m)
    rows = []
    layers = fastpath.projections(m)
    args = [q.a8() for q in layers]
    nbytes = sum(p.numel() for _, p, _ in args)  # codes with their bf16 scales and zero terms
    xs = {q.in_features: torch.randn(1, q.in_features) for q in layers}
    proj = best(lambda: [ext.gemv_a8(xs[q.in_features], p, 4, g, None) for q, (_, p, g) in zip(layers, args)])
    bw = read_bandwidth()  # what the decode roofline divides by (effml.llm.roofline.read_bandwidth)
    rows.append({"kernel": "120 int4 projections (gemv_a8, 1 row)", "ms": proj * 1e3,
                 "rate": f"{nbytes / proj / 1e9:.1f} GB/s of {nbytes / 1e6:.0f} MB",
                 "beside": f"read bandwidth {bw / 1e9:.1f} GB/s"})
    # the same projections with each tensor in a buffer of its own (ordinary pages: what per-tensor copies give a
    # tensor below 2 MiB, i.e. every SmolLM2 projection) vs the engine's one region in reading order (native.arena)
    own = [(p.clone(), g) for _, p, g in args]
    t_own, t_one = float("inf"), float("inf")
    for _ in range(3):
        t_own = min(t_own, best(lambda: [ext.gemv_a8(xs[q.in_features], p, 4, g, None)
                                         for q, (p, g) in zip(layers, own)], 5))
        t_one = min(t_one, best(lambda: [ext.gemv_a8(xs[q.in_features], p, 4, g, None)
                                         for q, (_, p, g) in zip(layers, args)], 5))
    rows.append({"kernel": "the same, a buffer per tensor / one region (arena)", "ms": t_one * 1e3,
                 "rate": f"{nbytes / t_own / 1e9:.1f} / {nbytes / t_one / 1e9:.1f} GB/s",
                 "beside": f"{t_own * 1e3:.2f} / {t_one * 1e3:.2f} ms, interleaved"})
    own.clear()  # the copies go (the region stays with the model)
    _, p1, g1 = args[2]  # layer 0's gate/up (3072 x 576, 1.1 MB with its scales): again and again, in L2
    b1 = p1.numel()
    t1 = best(lambda: ext.gemv_a8(xs[layers[2].in_features], p1, 4, g1, None), 200, False)
    rows.append({"kernel": "one int4 gate/up layer from L2 (gemv_a8, 1 row)", "ms": t1 * 1e3,
                 "rate": f"{b1 / t1 / 1e9:.1f} GB/s", "beside": "the kernel's own rate, without DRAM"})
    pf0 = tuple(ext.a8_prefetch())  # gemv_a8's software prefetch distances (into L1, into L2), interleaved
    t_pf = {d: float("inf") for d in ((0, 0), (4096, 0), (1024, 8192), (4096, 8192), (1024, 32768))}
    t_pf.setdefault(pf0, float("inf"))
    for _ in range(3):
        for d in t_pf:
            ext.a8_prefetch(*d)
            t_pf[d] = min(t_pf[d], best(lambda: [ext.gemv_a8(xs[q.in_features], p, 4, g, None)
                                                 for q, (_, p, g) in zip(layers, args)], 5))
    ext.a8_prefetch(*pf0)
    rows.append({"kernel": "the same, prefetch " + " / ".join(f"{a}+{b}" for a, b in t_pf) + " B ahead (L1+L2)",
                 "ms": t_pf[pf0] * 1e3, "rate": " / ".join(f"{t_pf[d] * 1e3:.2f}" for d in t_pf) + " ms",
                 "beside": f"default {pf0[0]}+{pf0[1]} B"})
    big = torch.ones(256 * 2 ** 18)  # 256 MiB of fp32, summed in 4 KiB pages and in 2 MiB pages (native.huge)
    pages = {"4 KiB": big, "2 MiB": ext.huge(big)}
    t_pg = {k: best(lambda: v.sum(), 5) for k, v in pages.items()}
    t_pg["effml"] = best(partial(ext.read_sum, pages["2 MiB"]), 5)  # vector loads + the passes' software prefetch
    rows.append({"kernel": "one-thread sum over 256 MiB: torch 4 KiB / 2 MiB pages, effml read_sum 2 MiB",
                 "ms": t_pg["2 MiB"] * 1e3,
                 "rate": " / ".join(f"{big.numel() * 4 / t / 1e9:.1f}" for t in t_pg.values()) + " GB/s",
                 "beside": "the decode bound takes the fastest (read_sum: L1 prefetch "
                           f"{ext.tiles_prefetch()[0]} B ahead)"})
    del big, pages
    logits = torch.randn(m.args.vocab_size)
    from effml.llm.generate import argmax

    t_np, t_torch = best(lambda: argmax(logits), 200, False), best(lambda: int(logits.argmax()), 200, False)
    rows.append({"kernel": f"greedy pick over {m.args.vocab_size} logits (generate.argmax)", "ms": t_np * 1e3,
                 "rate": f"{t_np * 1e6:.1f} us", "beside": f"torch.argmax {t_torch * 1e6:.1f} us"})
    head = m.output
    x = torch.randn(1, head.in_features)
    t = best(lambda: head(x))
    hb = head.a8()[1].numel() if head.a8() is not None else head.codes.numel() + head.scale.numel() * 4
    rows.append({"kernel": "int8 head 49152 x 576 (gemv_a8, 1 row)", "ms": t * 1e3,
                 "rate": f"{hb / t / 1e9:.1f} GB/s", "beside": ""})
    w13 = next(q for q in layers if q.out_features == 2 * m.args.hidden_dim)  # gate/up, 3072 x 576
    M, N, K = 64, w13.out_features, w13.in_features
    xp = torch.randn(M, K)
    exact = WeightOnlyLinear.from_codes(w13.codes, w13.scale, w13.zero, 4, w13.spec.group_size, kernel="torch",
                                        act_dtype="bf16")  # the same codes on torch's int4 kernel, bf16 rows
    wd = w13.dequantized()
    amx_rows = ext.a8_amx()  # 0: no AMX kernel here; else 64 rows run it
    ta = best(lambda: w13(xp), 9)
    tv = ta
    th = {}  # the same product called again and again (its 1.1 MB in L2): the kernels' compute rate
    if amx_rows:  # the same product on the AVX-512 VNNI kernel, side by side
        ext.a8_amx(0)
        try:
            tv = best(lambda: w13(xp), 9)
            th["vector"] = best(lambda: w13(xp), 15, False)
        finally:
            ext.a8_amx(amx_rows)
    th["amx" if amx_rows else "vector"] = best(lambda: w13(xp), 15, False)
    tt = best(lambda: exact(xp), 9)
    tf = best(lambda: torch.nn.functional.linear(xp, wd), 9)
    gmac = lambda s: f"{M * N * K / s / 1e9:.0f} GMAC/s"  # noqa: E731
    rows.append({"kernel": f"prefill {M} rows, {N} x {K} int4 g32 (gemv_a8{', AMX' if amx_rows else ''})",
                 "ms": ta * 1e3, "rate": gmac(ta),
                 "beside": (f"its vector kernel {gmac(tv)}, " if amx_rows else "")
                 + f"torch int4 kernel {gmac(tt)}, fp32 F.linear {gmac(tf)}"})
    rows.append({"kernel": f"the same, in L2 (called again and again){': AMX' if amx_rows else ''}",
                 "ms": th["amx" if amx_rows else "vector"] * 1e3, "rate": gmac(th["amx" if amx_rows else "vector"]),
                 "beside": f"its vector kernel {gmac(th['vector'])}" if amx_rows else ""})
    H, Hkv, hd = m.args.n_heads, m.args.n_kv_heads, m.args.head_dim
    kc, vc = torch.randn(Hkv, 1024, hd), torch.randn(Hkv, 1024, hd)
    qkv = torch.randn(1, (H + 2 * Hkv) * hd)
    cos, sin = torch.randn(1, hd), torch.randn(1, hd)
    kc2, vc2 = torch.randn(Hkv, 1024, hd), torch.randn(Hkv, 1024, hd)  # another layer's cache: warms the code only
    for pos in (8, 90, 500):
        t = best(lambda: ext.attend(qkv, cos, sin, kc, vc, pos, H, Hkv), 200)  # all cold (code and data)
        warm = best(lambda: ext.attend(qkv, cos, sin, kc, vc, pos, H, Hkv), 200, False)

        def step_like():  # as in a step: the code ran a layer ago, this layer's K/V left the cache since
            _FLUSH[0].sum()
            ext.attend(qkv, cos, sin, kc2, vc2, 4, H, Hkv)
            t0 = time.perf_counter()
            ext.attend(qkv, cos, sin, kc, vc, pos, H, Hkv)
            return time.perf_counter() - t0

        in_step = min(step_like() for _ in range(30))
        rows.append({"kernel": f"attend, 1 token at {pos} positions (per layer)", "ms": in_step * 1e3,
                     "rate": f"{in_step * 1e6:.1f} us with cold K/V",
                     "beside": f"warm {warm * 1e6:.1f} us, all cold {t * 1e6:.1f} us"})
    assert all(isinstance(q, WeightOnlyLinear) for q in layers)
    f32 = copy.deepcopy(lm.model)
    fuse_projections(f32)  # the engine's shapes; their row-major weights kept here (prepare drops them)
    rowmajor = {n: m.weight.detach() for n, m in f32.named_modules() if isinstance(m, torch.nn.Linear)}
    prepare(f32)
    rowmajor = {id(m): rowmajor[n] for n, m in f32.named_modules() if n in rowmajor}  # module -> weight
    mats = fastpath.projections(f32) + [f32.output]
    fbytes = sum(rowmajor[id(q)].numel() * 4 for q in mats)
    t_fp32 = {}
    for M in (1, 5, 8, 9, 12, 16):
        xs = {q.in_features: torch.randn(M, q.in_features) for q in mats}
        calls = [("gemv_tiles", lambda q: ext.gemv_tiles(xs[q.in_features], q._tiles, q.out_features, None))]
        if M <= 8:
            calls.append(("row-major gemv", lambda q: ext.gemv(xs[q.in_features], rowmajor[id(q)], None, None)))
        else:  # the same rows in calls of 8: one whole pass over the weights per call
            calls.append(("gemv_tiles, calls of 8 rows", lambda q: [
                ext.gemv_tiles(xs[q.in_features][m:m + 8].contiguous(), q._tiles, q.out_features, None)
                for m in range(0, M, 8)]))
        if M in (1, 8):  # gemv_tiles without its software prefetch (what it issues is per CPU vendor)
            calls.append(("gemv_tiles, prefetch 0", calls[0][1]))
        for name, call in calls:
            pf = tuple(ext.tiles_prefetch())  # the defaults (into L1, into L2; it returns the pair in force)
            ext.tiles_prefetch(*((0, 0) if name.endswith("prefetch 0") else pf))
            try:
                t_fp32[name, M] = best(lambda: [call(q) for q in mats], 7)
            finally:
                ext.tiles_prefetch(*pf)
    for name in ("gemv_tiles", "row-major gemv"):
        one = t_fp32[name, 1]
        more = (f"; 9 / 12 / 16 rows {t_fp32[name, 9] / one:.2f}x / {t_fp32[name, 12] / one:.2f}x / "
                f"{t_fp32[name, 16] / one:.2f}x (in calls of 8 rows: " + " / ".join(
                    f"{t_fp32['gemv_tiles, calls of 8 rows', m] / one:.2f}x" for m in (9, 12, 16)) + ")"
                if name == "gemv_tiles" else "")
        rows.append({"kernel": f"fp32 projections + head, {name}", "ms": one * 1e3,
                     "rate": f"{fbytes / one / 1e9:.1f} GB/s of {fbytes / 1e6:.0f} MB (1 row)",
                     "beside": f"5 rows {t_fp32[name, 5] / one:.2f}x, 8 rows {t_fp32[name, 8] / one:.2f}x one row"
                               + more})
        if name == "gemv_tiles":
            no_pf = [t_fp32["gemv_tiles, prefetch 0", m] for m in (1, 8)]
            rows.append({"kernel": "the same, no software prefetch", "ms": no_pf[0] * 1e3,
                         "rate": f"{fbytes / no_pf[0] / 1e9:.1f} GB/s (1 row)",
                         "beside": f"8 rows {no_pf[1] * 1e3:.1f} ms; with "
                                   f"{'+'.join(map(str, ext.tiles_prefetch()))} B (L1+L2): "
                                   f"{one * 1e3:.1f} / {t_fp32[name, 8] * 1e3:.1f} ms"})
    # bf16 tiles (in pairs: one load and a shift / a mask per two vectors; one row takes four groups a pass)
    b16 = [ext.pack_tiles(rowmajor[id(q)].to(torch.bfloat16)) for q in mats]
    t_b16 = {}
    for M in (1, 8):
        xs = {q.in_features: torch.randn(M, q.in_features) for q in mats}
        t_b16[M] = best(lambda: [ext.gemv_tiles(xs[q.in_features], t, q.out_features, None) for q, t in zip(mats, b16)],
                        7)
    w_l2 = rowmajor[id(mats[2])][:512].contiguous()  # 512 x 576 of the gate/up: 0.6 MB bf16, 1.2 MB fp32, in L2
    x1 = torch.randn(1, w_l2.shape[1])
    t_l2 = {dt: best(partial(ext.gemv_tiles, x1, ext.pack_tiles(w_l2.to(dt)), 512, None), 300, False)
            for dt in (torch.bfloat16, torch.float32)}
    rows.append({"kernel": "bf16 projections + head, gemv_tiles", "ms": t_b16[1] * 1e3,
                 "rate": f"{fbytes / 2 / t_b16[1] / 1e9:.1f} GB/s of {fbytes / 2e6:.0f} MB (1 row)",
                 "beside": f"8 rows {t_b16[8] / t_b16[1]:.2f}x one row; a 512 x 576 layer in L2, 1 row: bf16 "
                           f"{w_l2.numel() * 2 / t_l2[torch.bfloat16] / 1e9:.1f} GB/s, fp32 "
                           f"{w_l2.numel() * 4 / t_l2[torch.float32] / 1e9:.1f} GB/s (the kernel's own rate)"})
    b16.clear()
    rows += fp32_prefill_rows(f32, rowmajor)
    # the compute roofs, measured on this thread (native fma_rate / vnni_rate: 12 independent chains, 0.2 s each,
    # best of 3): what the prefill rows above are held against
    fma = max(ext.fma_rate(0.2) for _ in range(3))
    vnni = max(ext.vnni_rate(0.2) for _ in range(3))
    rows.append({"kernel": f"the FMA units ({ext.tiles_isa()} fp32 FMA, 12 chains)", "ms": None,
                 "rate": f"{fma / 1e9:.1f} GMAC/s", "beside": "the fp32 prefill rows' compute roof"})
    rows.append({"kernel": "vpdpbusd (int8 x uint8, 12 chains)", "ms": None,
                 "rate": f"{vnni / 1e9:.1f} GMAC/s" if vnni else "n/a (no AVX-512 VNNI)",
                 "beside": "the int4 prefill row's integer roof" if vnni else ""})
    print_table(f"effml kernels, SmolLM2-135M shapes, 1 thread, CPU {torch.backends.cpu.get_cpu_capability()} "
                f"({ext.a8_isa()}), load {os.getloadavg()[0]:.1f}", rows)
    path = write_results(opts.out, {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                     "a8_isa": ext.a8_isa(), "loadavg": os.getloadavg(), "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
