"""`effml train-mem`: training memory per device (weights, gradients, optimizer states, activations,
temporary peak), whether it fits on a device, and the smallest change that makes it fit."""

from __future__ import annotations

import argparse

from effml.cli.common import add_json_flag, console, parse_shape, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("train-mem", help="training memory: breakdown, fit on a device, smallest change to fit",
                       description="Estimate the per-device memory of a training step by simulating it on fake "
                                   "tensors (no weights allocated), check it against a device, and suggest the "
                                   "smallest change that makes it fit.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a bundled model config (e.g. llama-2-7b) or a path to an HF config.json")
    src.add_argument("--model", help="package.module:callable returning an nn.Module (e.g. effml.zoo:tiny_gpt)")
    p.add_argument("--input-shape", help="input shape for --model (its batch dim is replaced by --batch)")
    p.add_argument("--batch", type=int, default=1, help="micro-batch per device (default 1)")
    p.add_argument("--seq", type=int, help="sequence length for --config (default: the config's)")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    p.add_argument("--optimizer", default="adamw", help="adamw, adam, sgd-momentum, sgd (default adamw)")
    p.add_argument("--precision", default="bf16-mixed",
                   help="fp32, bf16-mixed, fp16-mixed (GPU), bf16-true (default bf16-mixed)")
    p.add_argument("--checkpointing", nargs="?", const="per-block", default="none",
                   help="activation checkpointing: per-block (the flag alone), every-K, sqrt, budget:SIZE, "
                        "modules:NAME,NAME; optionally @CONTAINER")
    p.add_argument("--world-size", type=int, default=1, help="data-parallel devices (default 1)")
    p.add_argument("--zero", type=int, default=0, choices=(0, 1, 2, 3), help="ZeRO stage (default 0)")
    p.add_argument("--hw", help="device to fit on (effml hw list); default: this machine's RAM")
    p.add_argument("--no-suggest", action="store_true", help="do not search for a change that fits")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from effml.models import resolve
    from effml.train.config import TrainConfig
    from effml.train.capacity import (
        check_target_precision,
        estimator_for,
        fit_report,
        target,
    )

    cfg = TrainConfig(optimizer=args.optimizer, precision=args.precision, checkpointing=args.checkpointing,
                      micro_batch=args.batch, grad_accum=args.grad_accum, world_size=args.world_size,
                      zero_stage=args.zero)
    tgt = target(args.hw)
    check_target_precision(tgt, cfg.precision)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    con = console()
    with con.status("building the model on meta…", spinner="dots") as status:
        spec = resolve(config=args.config, model=args.model, input_shape=shape, batch=args.batch, seq=args.seq,
                       device="meta")
        est = estimator_for(spec, tgt)
        if args.no_suggest:
            status.update(f"simulating {cfg.precision}, micro-batch {cfg.micro_batch}…")
            from effml.train.capacity import FitReport

            report = FitReport(est(cfg), tgt, None, ())
        else:
            report = fit_report(est, cfg, tgt, progress=lambda msg: status.update(msg + "…"))
    if args.json:
        print_json({"model": spec.to_dict(), "estimate": report.estimate.to_dict(), "fit": report.to_dict()})
        return 0
    con.print(render(report))
    return 0


def render(report):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from effml.units import fmt_bytes, si

    est = report.estimate
    c = est.config
    title = (f"{est.model} ({si(est.params)} params): {c.optimizer}, {c.precision}, micro-batch {c.micro_batch} x "
             f"accum {c.grad_accum}, checkpointing {c.checkpointing.label()}, "
             f"{c.world_size} device(s), ZeRO {c.zero_stage}")
    t = Table()
    for col in ("part", "B/param", "size per device", "alive at peak"):
        t.add_column(col, justify="left" if col == "part" else "right")
    at = est.at_peak
    per_param = {k: f"{v / est.params:.3g}" for k, v in est.unsharded.items()}
    for part in ("weights", "gradients", "optimizer_states", "activations", "temporary"):
        t.add_row(part.replace("_", " "), per_param.get(part, ""), fmt_bytes(est.full[part]), fmt_bytes(at[part]))
    t.add_row("[bold]peak[/bold]", "", "", f"[bold]{fmt_bytes(est.peak)}[/bold]")
    lines = [Text(title, style="bold"), t, Text(f"peak during the {est.peak_phase} phase; model states (weights+grads+states) "
                     f"{fmt_bytes(est.model_states)} per device")]
    if est.cast_weight_bytes:
        lines.append(Text(f"activations include {fmt_bytes(est.cast_weight_bytes)} of autocast bf16/fp16 weight copies"))
    lines += [Text("note: " + n, style="dim") for n in est.notes]
    lines.append(Text(report.message, style="green" if report.fits else "bold red"))
    if report.tried:
        tried = Table(title="changes tried (in order of cost)", title_justify="left")
        for col in ("change", "flags", "peak per device", "fits"):
            tried.add_column(col)
        for o in report.tried:
            tried.add_row(o.change, o.flags, fmt_bytes(o.peak_bytes), "yes" if o.fits else "no")
        lines.append(tried)
    return Group(*lines)
