"""`effml bench`: measured latency percentiles and throughput vs batch, beside the `local` prediction."""

from __future__ import annotations

from effml.cli.common import (
    add_hw_flag,
    add_json_flag,
    add_model_flags,
    console,
    duration,
    one_hw,
    parse_sets,
    parse_shape,
    positive_int,
    print_json,
    unit_fraction,
)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure latency/throughput vs batch on this machine, beside the prediction",
                       description="Warm up, time until the median's 95%% CI is within --ci or the budget ends; "
                                   "p50/p90/p99, throughput, peak RSS, threads; each row beside the `local` "
                                   "prediction (run `effml calibrate` once) and its error.")
    src = p.add_mutually_exclusive_group(required=True)
    add_model_flags(p, group=src)
    src.add_argument("--config", help="a bundled model config, built with random weights on the CPU (e.g. gpt2)")
    p.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1), e.g. 1,8,32")
    p.add_argument("--seq", type=positive_int, help="sequence length for --config")
    p.add_argument("--input-shape", help="input shape for --model without a zoo entry (batch from --batch)")
    p.add_argument("--dtype", default="fp32", help="fp32 (default), bf16 or fp16")
    p.add_argument("--budget", type=duration, default=5.0, metavar="SECONDS",
                   help="time budget per batch size, in seconds or with a unit (30s, 2m; default 5)")
    p.add_argument("--ci", type=unit_fraction, default=0.02,
                   help="stop when the 95%% CI half-width <= this x median")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    add_hw_flag(p, default=["local"], help="the device to predict on (default local)")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from effml.hardware.sweep import bench, parse_batches
    from effml.measure import MeasureConfig
    from effml.models import resolve

    batches = parse_batches(args.batch)
    hw = one_hw(args.hw, why=" (the measured rows are compared with one prediction)")
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    cfg = MeasureConfig(budget_s=args.budget, ci_rel=args.ci)

    def make(b: int):
        s = (b, *shape[1:]) if shape else None
        return resolve(config=args.config, model=args.model, input_shape=s, batch=b, seq=args.seq,
                       dtype=args.dtype, device="cpu", model_args=parse_sets(args.set))

    if args.json:
        print_json(bench(make, batches, config=cfg, hw=hw).to_dict())
        return 0
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("bench", total=1.0)
        res = bench(make, batches, config=cfg, hw=hw,
                    progress=lambda what, frac: bar.update(task, completed=frac, description=what))
    from effml.hardware.present import bench_table

    con = console()
    con.print(bench_table(res))
    r0 = res.rows[0]
    con.print(f"{r0.threads} threads, CPU capability {r0.cpu_capability}; p50 is compared with the prediction")
    if res.note:
        con.print(f"no prediction: {res.note}")
    return 0
