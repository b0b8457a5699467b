"""`effml train-mem`: training memory per device (weights, gradients, optimizer states, activations,
temporary peak), whether it fits on a device, and the smallest change that makes it fit."""

from __future__ import annotations

import argparse

from effml.cli.common import (
    add_hw_flag,
    add_json_flag,
    add_model_flags,
    console,
    parse_hw,
    parse_sets,
    parse_shape,
    positive_int,
    print_json,
)


def add_parser(sub) -> None:
    p = sub.add_parser("train-mem", help="training memory: breakdown, fit on a device, smallest change to fit",
                       description="Estimate the per-device memory of a training step by simulating it on fake "
                                   "tensors (no weights allocated), check it against a device, and suggest the "
                                   "smallest change that makes it fit.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a bundled model config (e.g. llama-2-7b) or a path to an HF config.json")
    add_model_flags(p, group=src)
    p.add_argument("--input-shape", help="input shape for --model (its batch dim is replaced by --batch)")
    p.add_argument("--batch", type=positive_int, default=1, help="micro-batch per device (default 1)")
    p.add_argument("--seq", type=positive_int, help="sequence length for --config (default: the config's)")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="gradient accumulation steps (default 1)")
    p.add_argument("--optimizer", default="adamw", help="adamw, adam, sgd-momentum, sgd (default adamw)")
    p.add_argument("--precision", default="bf16-mixed",
                   help="fp32, bf16-mixed, fp16-mixed (GPU), bf16-true (default bf16-mixed)")
    p.add_argument("--checkpointing", nargs="?", const="per-block", default="none",
                   help="activation checkpointing: per-block (the flag alone), every-K, sqrt, budget:SIZE, "
                        "modules:NAME,NAME; optionally @CONTAINER")
    p.add_argument("--world-size", type=positive_int, default=1, help="data-parallel devices (default 1)")
    p.add_argument("--zero", type=int, default=0, choices=(0, 1, 2, 3), help="ZeRO stage (default 0)")
    p.add_argument("--layout", default="torch-amp", choices=("torch-amp", "zero-paper"),
                   help="mixed-precision model-state layout: torch-amp (fp32 weights + fp32 grads + moments, "
                        "PyTorch AMP/ZeroRedundancyOptimizer; default) or zero-paper (bf16 weights + grads, fp32 "
                        "master + moments: the ZeRO paper's 2 + 2 + 12 B/param)")
    add_hw_flag(p, help="device(s) to fit on, space- or comma-separated (effml hw list); default: this machine's RAM")
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
                      zero_stage=args.zero, layout=args.layout)
    targets = [target(hw) for hw in parse_hw(args.hw) or [None]]  # None: this machine's RAM
    for tgt in targets:  # a precision a device cannot run is refused before any simulation
        check_target_precision(tgt, cfg.precision)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    con = console()
    reports = []
    with con.status("building the model on meta…", spinner="dots") as status:
        spec = resolve(config=args.config, model=args.model, input_shape=shape, batch=args.batch, seq=args.seq,
                       device="meta", model_args=parse_sets(args.set))
        for tgt in targets:
            est = estimator_for(spec, tgt)  # the target's attention kernel: one estimator per device
            if args.no_suggest:
                status.update(f"simulating {cfg.precision}, micro-batch {cfg.micro_batch} for {tgt.name}…")
                from effml.train.capacity import FitReport

                reports.append(FitReport(est(cfg), tgt, None, ()))
            else:
                reports.append(fit_report(est, cfg, tgt, progress=lambda msg: status.update(msg + "…")))
    if args.json:
        one = [{"estimate": r.estimate.to_dict(), "fit": r.to_dict()} for r in reports]
        body = one[0] if len(one) == 1 else {"devices": dict(zip(parse_hw(args.hw), one))}
        print_json({"model": spec.to_dict(), **body})
        return 0
    from effml.train.present import memory_report

    for report in reports:
        con.print(memory_report(report))
    return 0
