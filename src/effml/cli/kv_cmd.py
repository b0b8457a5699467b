"""`effml kv`: KV-cache size of a decoder config, the GQA saving, and the max batch beside the weights on a device."""

from __future__ import annotations

from effml.cli.common import add_json_flag, console, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("kv", help="KV-cache calculator: bytes, GQA saving, max batch on a device",
                       description="KV cache = 2 · layers · kv_heads · head_dim · tokens · batch · bytes(dtype).")
    p.add_argument("--config", required=True, help="a bundled decoder config (e.g. llama-2-7b) or a config.json path")
    p.add_argument("--seq", type=int, required=True, help="tokens per sequence (prompt + output)")
    p.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    p.add_argument("--dtype", default="fp16", help="cache and weight dtype: fp32, bf16, fp16, fp8, int8 (default fp16)")
    p.add_argument("--hw", help="a catalog device (effml hw list): adds the max batch that fits beside the weights")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from effml.llm.kvcalc import kv_report
    from effml.units import fmt_bytes

    r = kv_report(args.config, args.seq, args.batch, args.dtype, args.hw)
    if args.json:
        print_json(r.to_dict())
        return 0
    from rich.table import Table

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
    t.add_row("weights", f"{fmt_bytes(r.weights_bytes)} ({r.params:,} params x {r.dtype_bytes:g} B)")
    if r.device:
        t.add_row("device", f"{r.device}: {fmt_bytes(r.device_memory_bytes)}")
        verdict = "fits" if r.fits else "does NOT fit"
        t.add_row("max batch beside the weights", f"{r.max_batch} sequences of {r.seq} tokens "
                  f"(batch {r.batch} {verdict}; activations and runtime overhead not included)")
    console().print(t)
    return 0
