"""`effml kv`: KV-cache size of a decoder config, the GQA saving, and the max batch beside the weights on a device."""

from __future__ import annotations

from effml.cli.common import add_hw_flag, add_json_flag, console, parse_hw, positive_int, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("kv", help="KV-cache calculator: bytes, GQA saving, max batch on a device",
                       description="KV cache = 2 · layers · kv_heads · head_dim · tokens · batch · bytes(dtype).")
    p.add_argument("--config", required=True, help="a bundled decoder config (e.g. llama-2-7b) or a config.json path")
    p.add_argument("--seq", type=positive_int, required=True, help="tokens per sequence (prompt + output)")
    p.add_argument("--batch", type=positive_int, default=1, help="sequences (default 1)")
    p.add_argument("--dtype", default="fp16", help="cache and weight dtype: fp32, bf16, fp16, fp8, int8 (default fp16)")
    add_hw_flag(p, help="catalog device(s) (effml hw list): adds the max batch that fits beside the weights, "
                        "one table each")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from effml.llm.kvcalc import kv_report

    devices = parse_hw(args.hw) or [None]
    reports = {hw: kv_report(args.config, args.seq, args.batch, args.dtype, hw) for hw in devices}
    if args.json:
        body = next(iter(reports.values())).to_dict() if len(reports) == 1 else \
            {"devices": {hw: r.to_dict() for hw, r in reports.items()}}
        print_json(body)
        return 0
    from effml.llm.present import kv_table

    for r in reports.values():
        console().print(kv_table(r))
    return 0
