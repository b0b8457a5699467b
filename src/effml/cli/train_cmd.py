"""`effml train`: a short training run of a zoo model with mixed precision, checkpointing, gradient
accumulation and (--nproc N) DDP over torchrun; step time, throughput, peak memory, loss."""

from __future__ import annotations

import argparse

from effml.cli.common import add_json_flag, console, parse_sets, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="short training run: step time, tokens/s, peak memory, loss",
                       description="Train a zoo model for a few steps (tiny_gpt on the KJV text; vision models on "
                                   "synthetic batches) and report step time, throughput, measured vs estimated "
                                   "peak memory and the loss curve.")
    p.add_argument("--model", default="tiny_gpt", help="zoo model: tiny_gpt, mlp, lenet5, vgg, resnet")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model constructor argument, e.g. --set n_layer=12 --set n_embd=256 (repeatable)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    p.add_argument("--batch", type=int, default=8, help="micro-batch per process (default 8)")
    p.add_argument("--seq", type=int, default=128, help="sequence length for tiny_gpt (default 128)")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    p.add_argument("--optimizer", default="adamw", help="adamw, adam, sgd-momentum, sgd (default adamw)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--precision", default="fp32", help="fp32, bf16-mixed, bf16-true, fp16-mixed (GPU)")
    p.add_argument("--checkpointing", nargs="?", const="per-block", default="none",
                   help="per-block (the flag alone), every-K, sqrt, budget:SIZE, modules:NAME,NAME")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes via torchrun (default 1)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: cores / nproc)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement and estimate")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from effml.errors import ConfigError
    from effml.train.config import TrainConfig
    from effml.train.loop import RunConfig, train

    if args.nproc < 1:
        raise ConfigError(f"--nproc (world size) must be >= 1, got {args.nproc}")
    run_cfg = RunConfig(model=args.model, steps=args.steps, warmup=args.warmup, seq=args.seq, seed=args.seed,
                        model_kwargs=parse_sets(args.set), measure_memory=not args.no_memory,
                        threads=args.threads)
    cfg = TrainConfig(optimizer=args.optimizer, precision=args.precision, checkpointing=args.checkpointing,
                      micro_batch=args.batch, grad_accum=args.grad_accum, world_size=args.nproc, lr=args.lr)
    con = console()
    if args.nproc > 1:
        from effml.train.ddp import launch

        with con.status(f"torchrun: {args.nproc} DDP processes, {args.steps} steps…", spinner="dots"):
            result = launch(run_cfg, cfg, args.nproc)
    else:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(), console=con,
                      transient=True, disable=args.json) as bar:
            task = bar.add_task(f"training {args.model}", total=args.steps)
            result = train(run_cfg, cfg, on_step=lambda i, loss: bar.update(
                task, advance=1, description=f"training {args.model} (loss {loss:.3f})"))
    if args.json:
        print_json(result.to_dict())
        return 0
    con.print(render(result))
    return 0


def render(r):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from effml.units import fmt_bytes, si

    c = r.config
    title = (f"{r.model} ({si(r.params)} params), {c.precision}, {c.optimizer}, micro-batch {c.micro_batch} x accum "
             f"{c.grad_accum} x {c.world_size} process(es) = {c.global_batch}, checkpointing {c.checkpointing.label()}")
    t = Table(show_header=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("step time (median of timed steps)", f"{r.step_time_s * 1e3:.1f} ms")
    if r.tokens_per_s is not None:
        t.add_row("tokens/s", f"{r.tokens_per_s:,.0f}")
    t.add_row("samples/s", f"{r.samples_per_s:,.1f}")
    if r.measured is not None:
        t.add_row("peak memory, measured (CPU allocator)", fmt_bytes(r.measured.peak_bytes))
    if r.estimated_peak_bytes is not None:
        t.add_row("peak memory, estimated (train-mem)", f"{fmt_bytes(r.estimated_peak_bytes)} ({r.estimate_error:+.1%})")
    t.add_row("loss first -> last", f"{r.losses[0]:.4f} -> {r.losses[-1]:.4f}")
    lines = [Text(title, style="bold"), t, Text(f"data: {r.data}", style="dim")]
    if r.precision_note:
        lines.append(Text(r.precision_note, style="yellow"))
    lines += [Text("note: " + n, style="dim") for n in r.notes]
    return Group(*lines)
