"""Rich renderables for the LLM commands: `effml kv`'s cache sizes and `effml serve-bench`'s engines side by side.

Display only: every number comes from a KVReport or the serving results (their to_dict is the JSON).
"""

from __future__ import annotations

from rich.table import Table

from effml.units import fmt_bytes

SERVE_COLUMNS = ("batching", "throughput tok/s", "latency p50 s", "latency p99 s", "TTFT p50 s", "TTFT p99 s",
                 "KV reserved vs used (waste)", "prompt tokens cached")


def kv_table(r) -> Table:
    """One KVReport: the formula, the cache, per token, the GQA saving, the weights and (with a device) the fit."""
    t = Table(title=f"KV cache: {r.model}, {r.seq} tokens x {r.batch} sequences, {r.dtype}", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("formula", r.formula)
    t.add_row("KV cache", f"{fmt_bytes(r.bytes, binary=True)} ({fmt_bytes(r.bytes)}; {r.bytes:,.0f} B)")
    t.add_row("per token (one sequence)", f"{fmt_bytes(r.bytes_per_token, binary=True)} ({r.bytes_per_token:,.0f} B)")
    if r.kv_heads < r.heads:
        t.add_row("GQA saving", f"{r.heads} heads share {r.kv_heads} KV heads: {r.gqa_saving:g}x smaller than MHA's "
                  f"{fmt_bytes(r.mha_bytes, binary=True)}")
    else:
        t.add_row("GQA saving", f"none: {r.heads} heads, {r.kv_heads} KV heads (multi-head attention)")
    t.add_row("weights", f"{fmt_bytes(r.weights_bytes)} ({r.params:,} params " +
              (f"{r.weights_note})" if r.weights_note else f"x {r.dtype_bytes:g} B)"))
    if r.device:
        t.add_row("device", f"{r.device}: {fmt_bytes(r.device_memory_bytes)}")
        verdict = "fits" if r.fits else "does NOT fit"
        t.add_row("max batch beside the weights", f"{r.max_batch} sequences of {r.seq} tokens "
                  f"(batch {r.batch} {verdict}; activations and runtime overhead not included)")
    return t


def serve_table(model: str, n_requests: int, rate: float, max_batch: int, results: dict) -> Table:
    """Each engine's throughput, latency and TTFT percentiles, and its own KV cache's reserved vs used tokens."""
    t = Table(title=f"{model}: {n_requests} requests, Poisson {rate}/s, max batch {max_batch}")
    for col in SERVE_COLUMNS:
        t.add_column(col, justify="right")
    for name, r in results.items():
        own = r.kv["contiguous" if name == "static" else "paged"]
        t.add_row(name, f"{r.throughput:.1f}", f"{r.latency_p(50):.2f}", f"{r.latency_p(99):.2f}",
                  f"{r.ttft_p(50):.2f}", f"{r.ttft_p(99):.2f}",
                  f"{own['reserved_tokens_avg']:.0f} vs {own['used_tokens_avg']:.0f} tok ({own['waste']:.1%})",
                  f"{r.cached_prompt_tokens}/{r.prompt_tokens}")
    return t


def generation_line(res, kv: str) -> str:
    """`effml generate`'s closing line from a GenerateResult or SpecResult (typed attributes, no dict keys)."""
    line = f"{len(res.tokens)} tokens in {res.time_s:.2f} s ({res.tokens_per_s:.1f} tok/s), kv={kv}"
    if hasattr(res, "gamma"):  # speculative
        return line + (f", γ={res.gamma}, α={res.alpha:.2f}, {res.tokens_per_target_call:.2f} tokens/target call, "
                       f"c={res.c:.3f}, v={res.v:.2f}, formula speedup {res.formula_speedup:.2f}x"
                       + (", the draft on the target's KV cache" if res.shared_kv else ""))
    return line + f", time to first token {res.ttft_s:.2f} s"
