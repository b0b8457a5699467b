"""Decode speed of SmolLM2-135M-Instruct per weight format, beside its bandwidth bound and HF `generate` (issue 15).

Formats: fp32, bf16, int8 weight-only (per-channel), int4 weight-only (min-max groups of 32; LM head int8), each
run in effml's engine (`engine.to_format` + `engine.prepare`: fused projections; decode rows through effml's own
GEMV and fused decode ops, effml.native, where they build) and in transformers' `generate` on the same weights in
the same format (HF's nn.Linear layers swapped for the same WeightOnlyLinear codes and kernels). int8/int4 run
effml's gemv_a8 where the CPU has AVX-512 VNNI (activations rounded to int8 per block of 32, as llama.cpp; its
perplexity cost: benchmarks/bench_llm_quant.py); "int8-exact"/"int4-exact": fp32 activations (effml's own int8
GEMV, torch's int4 kernel; `FormatConfig(kernel="exact")`); "int8-torch"/"int4-torch": torch's weight-only kernels
only (`FormatConfig(kernel="torch")`). The -exact and -torch rows are references, not claims.
`EFFML_NATIVE_MARCH=haswell ATEN_CPU_CAPABILITY=avx2` gives the AVX2 figures on an AVX-512 machine. Greedy, a fixed chat prompt, NEW_TOKENS tokens, 1 torch thread.
Decode tokens/s excludes the prefill: effml from its per-token timestamps, HF as (N - 1) / (t(N) - t(1)). Rounds
interleave every configuration, so load from other processes hits them alike; medians over rounds. Beside the
median, "p10-step tok/s" = 1 / the 10th-percentile decode-step time: on a shared CPU, the rate of the steps that
other processes disturbed least (the bandwidth measurement is the best of 3 for the same reason).
Bound: read bandwidth (measured at the start and the end: sums in 4 KiB and 2 MiB pages and effml's prefetching
read, effml.llm.roofline.read_bandwidth, on the run's threads) / bytes read per token
(weights as stored + K/V at the mean context). "of bound, paired": each round against the bandwidth measured just
before it, median over rounds (a shared host's other tenants take memory bandwidth for seconds at a time). `--compile`: torch.compile (fullgraph, static shapes) of a
gpt-fast style static-cache decode step vs the same step eager, interleaved, with the compile time (minutes here).
Run: `flock /tmp/effml_bench.lock python benchmarks/bench_decode.py [--rounds 3] [--tokens 64]`.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import claims_exit_code, print_table, write_results

FORMATS = ("fp32", "bf16", "int8", "int4", "int8-exact", "int4-exact", "int8-torch", "int4-torch")
PROMPT = "Explain in a few sentences why the sky is blue."
TARGETS = {"int8_vs_fp32": 2.0, "int4_vs_fp32": 2.5, "int4_vs_hf_fp32": 3.0, "fp32_fraction": 0.70,
           "other_fraction": 0.60}


def hf_in_format(hf, fmt: str, kernel: str = "a8"):
    """transformers' model in the format: bf16, or its nn.Linear layers as the same weight-only codes on `kernel`
    (WeightOnlyLinear's name; effml's FormatConfig(kernel="packed") runs "a8")."""
    import torch

    from effml.compress.weight_only import weight_only

    if fmt == "bf16":
        return hf.to(torch.bfloat16)
    if fmt in ("int8", "int4"):
        bits = 8 if fmt == "int8" else 4
        weight_only(hf, bits, 32, kernel, ("lm_head",))
        weight_only(hf, 8, 32, kernel)  # the head: int8, as in effml's int4 format
    return hf


def hf_decode(hf, ids: list[int], n: int) -> tuple[float, list[int]]:
    import torch

    x = torch.tensor([ids])
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        t0 = time.perf_counter()
        hf.generate(x, max_new_tokens=1, min_new_tokens=1, **kw)
        t1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = hf.generate(x, max_new_tokens=n, min_new_tokens=n, **kw)
        tn = time.perf_counter() - t0
    return (n - 1) / max(tn - t1, 1e-9), out[0, len(ids):].tolist()


def _huge_pages_kb() -> int | None:
    """This process's memory in transparent huge pages (Linux), the part of the packed weights the kernel granted
    2 MiB pages to: a run where it is small had its weights' stream over 4 KiB pages."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("AnonHugePages:")), None)
    except OSError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' generate")
    ap.add_argument("--hf-formats", default=None, help="formats transformers' generate runs in (default: every "
                    "shipped format; a model of ~1 B parameters: fp32 alone, each HF copy costs its weights in memory)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of a static-cache decode "
                                                                "step (minutes per format)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("EFFML_BENCH_THREADS", "1")),
                    help="torch threads (default 1, or EFFML_BENCH_THREADS): effml's kernels split their output "
                         "groups over them, the bound is read on as many")
    ap.add_argument("--out", default="llm_decode")
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m (default), a local Hugging Face checkpoint "
                    "directory (Llama / Qwen2 / Qwen3 / Mistral / Phi-3; its chat template, else the prompt as plain "
                    "text), or a bundled config name (effml.configs: qwen3-0.6b, llama-3.2-1b, ...): random weights "
                    "at the published shape, SmolLM2's tokenizer for the prompt; HF generate runs on the same weights")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from effml.llm.engine import FormatConfig, native_bf16, prepare, to_format
    from effml.llm.generate import GenerateConfig, generate
    from effml.llm.registry import load_model
    from effml.llm.roofline import decode_roofline, read_bandwidth
    from effml.llm.weights import load_hf_reference

    formats = a.formats.split(",")
    load = [os.getloadavg()[0]]
    bw = [read_bandwidth()]
    from effml import configs

    if a.model == "smollm2-135m":
        lm, reference = load_model(a.model), load_hf_reference
    elif a.model in configs.available():  # the speed of a published shape: what a step reads does not depend on values
        from effml.llm.checkpoint import from_transformers
        from effml.llm.registry import LoadedModel

        def reference():  # transformers' own init at the published shape, seeded: the same weights every call
            torch.manual_seed(0)
            return configs.build(configs.load(a.model), device="cpu")

        lm = LoadedModel(f"{a.model} (random weights)", from_transformers(reference()),
                         load_model("smollm2-135m").tokenizer)
    else:
        from transformers import AutoModelForCausalLM

        from effml.llm.checkpoint import load_checkpoint_llm

        lm = load_checkpoint_llm(a.model)
        reference = lambda: AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()  # noqa: E731
    ids = lm.tokenizer.chat(PROMPT) if getattr(lm.tokenizer.hf, "chat_template", None) else \
        lm.tokenizer.encode(PROMPT)
    source, n_params, name = lm.model, lm.model.args.params(), lm.name
    hf_formats = formats if a.hf_formats is None else a.hf_formats.split(",")
    del lm  # the formats below are copies: the source goes after the last one
    models, plans, notes, hfs = {}, {}, {}, {}
    for i, f in enumerate(formats):
        m = copy.deepcopy(source) if i < len(formats) - 1 else source
        fmt, _, kernel = f.partition("-")  # "int8-torch": int8 on torch's kernels only (the A/B reference)
        notes[f] = to_format(m, FormatConfig(fmt, kernel=kernel or "packed"))
        plans[f] = prepare(m)
        models[f] = m
        del m
        if not a.no_hf and not kernel and f in hf_formats:  # HF beside the shipped formats (not -torch references)
            hfs[f] = hf_in_format(reference(), fmt)
    cfg = GenerateConfig(max_new_tokens=a.tokens)
    for m in models.values():
        generate(m, ids, GenerateConfig(max_new_tokens=4))  # warm-up (first-call packing, allocator)
    tps = {(f, e): [] for f in formats for e in ("effml", "hf")}
    toks: dict = {}
    steps: dict = {f: [] for f in formats}
    paired: dict = {f: [] for f in formats}  # the read bandwidth measured just before each round of each format
    for r in range(a.rounds):
        order = formats[r % len(formats):] + formats[:r % len(formats)]
        for f in order:
            print(f"round {r + 1}/{a.rounds}: {f}", flush=True)
            paired[f].append(read_bandwidth(fresh=True))
            res = generate(models[f], ids, cfg)
            tps[(f, "effml")].append((len(res.tokens) - 1) / (res.time_s - res.ttft_s))
            st = res.step_times_s
            steps[f] += [b - x for x, b in zip(st, st[1:])]  # one decode step each
            toks[(f, "effml")] = res.tokens
            if f in hfs:
                t, out = hf_decode(hfs[f], ids, a.tokens)
                tps[(f, "hf")].append(t)
                toks[(f, "hf")] = out
    load.append(os.getloadavg()[0])
    bw.append(read_bandwidth(fresh=True))
    bandwidth = statistics.mean(bw)
    ref = toks[("fp32" if "fp32" in formats else formats[0], "effml")]
    rows, out = [], {}
    med = {k: statistics.median(v) for k, v in tps.items() if v}
    base = med.get(("fp32", "effml"))
    for f in formats:
        e = med[(f, "effml")]
        rl = decode_roofline(models[f], e, len(ids) + a.tokens / 2, bandwidth)
        hf = med.get((f, "hf"))
        same = next((i for i, (x, y) in enumerate(zip(toks[(f, "effml")], ref)) if x != y), len(ref))
        fast = 1 / sorted(steps[f])[len(steps[f]) // 10]  # the 10th-percentile step: the least-disturbed steps
        # each round against the bandwidth read just before it: other tenants of a shared host take memory
        # bandwidth for seconds at a time, and a round run while they do is held to that round's own bound
        per_round = statistics.median(decode_roofline(models[f], t, len(ids) + a.tokens / 2, b).fraction
                                      for t, b in zip(tps[(f, "effml")], paired[f]))
        row = {"format": f, "effml tok/s": e, "p10-step tok/s": fast, "bound tok/s": rl.bound_tokens_per_s,
               "of bound": rl.fraction, "of bound, paired": per_round,
               "HF generate tok/s": hf, "effml / HF": e / hf if hf else None,
               "× effml fp32": e / base if base else None,
               "same greedy tokens as fp32": f"{same}/{len(ref)}",
               "HF = effml tokens": toks.get((f, "hf")) == toks[(f, "effml")] if (f, "hf") in toks else None}
        rows.append(row)
        out[f] = {**row, "paired_bandwidth_Bps": paired[f], "p10_step_fraction_of_bound": fast / rl.bound_tokens_per_s, "roofline": rl.to_dict(), "plan": plans[f].to_dict(), "notes": notes[f],
                  "effml_rounds": tps[(f, "effml")], "hf_rounds": tps[(f, "hf")]}
    print_table(f"{name} decode, {a.threads} thread{'s' * (a.threads > 1)}, {a.tokens} tokens, "
                f"CPU {torch.backends.cpu.get_cpu_capability()}"
                f", {bandwidth / 1e9:.1f} GB/s read, load {load[0]:.1f}-{load[1]:.1f}", rows)
    claims = {}
    if base:
        for f, key in (("int8", "int8_vs_fp32"), ("int4", "int4_vs_fp32")):
            if f in out:
                v = out[f]["× effml fp32"]
                claims[key] = {"value": v, "target": TARGETS[key], "holds": v >= TARGETS[key]}
        fr = out["fp32"]["of bound"]
        claims["fp32_fraction"] = {"value": fr, "target": 0.7, "holds": fr >= 0.7}
    if "int4" in out and med.get(("fp32", "hf")):
        v = out["int4"]["effml tok/s"] / med[("fp32", "hf")]
        claims["int4_vs_hf_fp32"] = {"value": v, "target": 3.0, "holds": v >= 3.0}
    for f in formats:
        if f != "fp32" and "-" not in f:  # the -exact and -torch rows are references, not claims
            fr = out[f]["of bound"]
            claims[f"{f}_fraction"] = {"value": fr, "target": 0.6, "holds": fr >= 0.6}
    compiled = _compile_run(models, ids, a.tokens) if a.compile else None
    from effml import native

    native.load()
    path = write_results(a.out, {"model": name, "params": n_params, "tokens": a.tokens, "rounds": a.rounds,
                                 "prompt": PROMPT, "native_bf16": native_bf16(),
                                 "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                 "native_kernels": native.status(), "native_march": native.march(),
                                 "loadavg_start_end": load, "bandwidth_Bps_start_end": bw, "formats": out,
                                 "anon_huge_pages_kb": _huge_pages_kb(), "compile": compiled, "claims": claims})
    print(f"wrote {path}")
    for k, c in claims.items():
        print(f"{k}: {c['value']:.2f} (target {c['target']}) {'holds' if c['holds'] else 'NOT MET'}")
    return claims_exit_code(claims)


def _static_step(m, max_len: int):
    """gpt-fast style decode step for torch.compile: static K/V buffers of max_len, position as a tensor, a mask
    over the whole buffer; uses the prepared model's fused wqkv / w13 and its RoPE table. -> (step, reset)."""
    import torch
    import torch.nn.functional as F

    from effml.llm.model import compute_dtype

    a = m.args
    dt = compute_dtype(m)
    L, Hkv, hd, H = a.n_layers, a.n_kv_heads, a.head_dim, a.n_heads
    kc = torch.zeros(L, 1, Hkv, max_len, hd, dtype=dt)  # (L, 1, H_kv, S, hd)
    vc = torch.zeros_like(kc)
    cos_t, sin_t = (t.to(dt) for t in m.rope._table)  # (max_seq, hd)

    def rot(x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin

    def step(tok, pos):  # tok (1, 1) int64, pos (1,) int64 -> logits (1, 1, V)
        x = m.tok_embeddings(tok).to(dt)  # (1, 1, C)
        cos, sin = cos_t[pos][None, None], sin_t[pos][None, None]  # (1, 1, 1, hd)
        mask = (torch.arange(max_len) <= pos)[None, None, None]  # (1, 1, 1, S)
        for i, blk in enumerate(m.layers):
            at, ff = blk.attention, blk.feed_forward
            qkv = at.wqkv(blk.attention_norm(x)).view(1, 1, H + 2 * Hkv, hd).transpose(1, 2)  # (1, heads, 1, hd)
            q, k, v = qkv.split([H, Hkv, Hkv], 1)
            q, k = rot(q, cos, sin), rot(k, cos, sin)
            kc[i].index_copy_(2, pos, k)
            vc[i].index_copy_(2, pos, v)
            y = F.scaled_dot_product_attention(q.reshape(1, Hkv, H // Hkv, hd), kc[i], vc[i], attn_mask=mask)
            x = x + at.wo(y.reshape(1, 1, H * hd))
            g, u = ff.w13(blk.ffn_norm(x)).chunk(2, -1)
            x = x + ff.w2(F.silu(g) * u)
        return m.output(m.norm(x)).float()

    return step


def _compile_run(models, ids, n) -> dict:
    """Eager vs torch.compile (fullgraph, static shapes) of the static-cache decode step: compile time and decode
    tokens/s, interleaved (greedy from a fixed token; prefill is not part of this measurement)."""
    import torch

    def rate(step, rounds=2):
        out = []
        for _ in range(rounds):
            tok = torch.tensor([[ids[-1]]])
            t0 = time.perf_counter()
            with torch.no_grad():
                for i in range(n):
                    tok = step(tok, torch.tensor([len(ids) + i]))[:, -1].argmax(-1, keepdim=True)
            out.append(n / (time.perf_counter() - t0))
        return statistics.median(out)

    res = {}
    for f, m in models.items():
        step = _static_step(m, len(ids) + n + 1)
        t0 = time.perf_counter()
        cstep = torch.compile(step, dynamic=False, fullgraph=True)
        try:
            with torch.no_grad():
                cstep(torch.tensor([[ids[-1]]]), torch.tensor([len(ids)]))
        except Exception as e:  # e.g. inductor cannot lower MKL-prepacked weights it did not pack itself
            res[f] = {"compile_s": time.perf_counter() - t0, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"compile {f} failed: {res[f]['error']}", flush=True)
            continue
        ct = time.perf_counter() - t0
        e1, c1, e2, c2 = rate(step), rate(cstep), rate(step), rate(cstep)
        res[f] = {"compile_s": ct, "eager_tok_s": [e1, e2], "compiled_tok_s": [c1, c2]}
        print(f"compile {f}: {res[f]}", flush=True)
    return res


if __name__ == "__main__":
    sys.exit(main())
