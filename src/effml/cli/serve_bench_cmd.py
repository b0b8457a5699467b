"""`effml serve-bench`: serve a Poisson request trace with static or continuous batching; throughput, latency, TTFT."""

from __future__ import annotations

from effml.cli.common import add_json_flag, console, nonneg_int, positive_float, positive_int, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("serve-bench", help="static vs continuous batching on a Poisson request trace",
                       description="Requests arrive as a Poisson process with mixed prompt and output lengths; "
                                   "report throughput (tokens/s), latency p50/p99, time to first token, KV waste.")
    p.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m (default), tiny, package.module:callable, or a local Hugging Face checkpoint "
                        "directory (config.json + *.safetensors + tokenizer with a chat template; Llama, Qwen2, "
                        "Qwen3, Mistral, Phi-3)")
    p.add_argument("--format", default="fp32", choices=("fp32", "bf16", "int8", "int4"),
                   help="weight format in the engine: fp32 (default), bf16, int8 or int4 weight-only (LM head int8)")
    p.add_argument("--requests", type=positive_int, default=32, help="requests in the trace (default 32)")
    p.add_argument("--rate", type=positive_float, default=8.0, help="arrivals per second (default 8)")
    p.add_argument("--batching", choices=("static", "continuous", "chunked", "both", "all"), default="both",
                   help="engine: static, continuous, chunked (continuous with chunked prefill riding along the "
                        "decode rows), both (static + continuous, default) or all three, side by side")
    p.add_argument("--prefix-cache", action="store_true",
                   help="the paged engines (continuous, chunked) share the K/V of prompt blocks already in the pool "
                        "(e.g. the chat template's system prompt) instead of computing them again")
    p.add_argument("--prefill-chunk", type=positive_int, default=64,
                   help="chunked: prompt tokens per iteration (default 64)")
    p.add_argument("--max-prefill-tokens", type=positive_int, default=2048,
                   help="continuous: prompt tokens in one joint prefill pass of the requests admitted together "
                        "(default 2048; a longer prompt runs alone)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="sequences decoded together at most (default 8)")
    p.add_argument("--mean-output", type=positive_float, default=48,
                   help="mean output length, exponential (default 48)")
    p.add_argument("--max-output", type=positive_int, default=192, help="longest output (default 192)")
    p.add_argument("--block-size", type=positive_int, default=16, help="paged KV block size in tokens (default 16)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="trace seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: serve on that GPU (each "
                                                   "model call synchronised before its clock stops)")
    add_json_flag(p)
    p.set_defaults(run=run)


def trace_for(lm, n: int, rate: float, mean_output: float, max_output: int, seed: int):
    """Held-out chat prompts (SmolLM2) or short ASCII prompts (toy models), Poisson arrivals."""
    from effml.llm.serving import TraceConfig, poisson_trace
    from effml.llm.prompts import prompts

    texts = prompts("eval", 64, seed)
    pool = [lm.tokenizer.chat(t) for t in texts]
    cfg = TraceConfig(n_requests=n, rate=rate, mean_output=mean_output, max_output=max_output, seed=seed)
    return poisson_trace(pool, cfg)


def run(args) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from effml.llm.batching import serve_side_by_side
    from effml.llm.serving import EngineConfig
    from effml.llm.on_device import check_device, device_dict, running_on
    from effml.models import load_llm

    device = check_device(args.device, fmt=args.format)  # before loading the model
    lm = load_llm(args.model)
    from effml.llm.engine import FormatConfig, prepare, to_format

    to_format(lm.model, FormatConfig(args.format))
    trace = trace_for(lm, args.requests, args.rate, args.mean_output, args.max_output, args.seed)
    engines = {"both": ("static", "continuous"), "all": ("static", "continuous", "chunked")}.get(
        args.batching, (args.batching,))
    cfg = EngineConfig(max_batch=args.max_batch, block_size=args.block_size, prefill_chunk=args.prefill_chunk,
                       max_prefill_tokens=args.max_prefill_tokens, prefix_cache=args.prefix_cache)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} requests"),
               TimeElapsedColumn())
    with running_on(lm.model, device), \
            Progress(*columns, console=console() if not args.json else None, transient=True,
                     disable=args.json) as bar:
        plan = prepare(lm.model)  # fused projections, packed weights, effml's kernels: the engine `generate` runs
        tasks = {name: bar.add_task(f"{name} batching", total=len(trace)) for name in engines}
        # both engines side by side, their model calls interleaved: load from other processes hits both alike
        results = serve_side_by_side(lm.model, trace, engines, cfg,
                                     progress=lambda *a: bar.update(tasks[a[0] if len(a) == 3 else engines[0]],
                                                                    completed=a[-2]))
    summary = {name: {k: v for k, v in r.to_dict().items() if k != "per_request"} for name, r in results.items()}
    ratio = (results["continuous"].throughput / results["static"].throughput
             if {"static", "continuous"} <= set(results) else None)
    chunked = (results["chunked"].throughput / results["static"].throughput
               if {"static", "chunked"} <= set(results) else None)
    if args.json:
        print_json({"model": lm.name, "format": args.format, "engine": plan.to_dict(), "requests": len(trace),
                    "rate": args.rate, "max_batch": args.max_batch,
                    "results": summary, "continuous_over_static_throughput": ratio,
                    "chunked_over_static_throughput": chunked, "device": device_dict(device)})
        return 0
    from effml.llm.present import serve_table

    con = console()
    con.print(serve_table(lm.name, len(trace), args.rate, args.max_batch, results))
    if ratio is not None:
        con.print(f"continuous / static throughput: {ratio:.2f}x")
    if chunked is not None:
        con.print(f"chunked / static throughput: {chunked:.2f}x")
    return 0
