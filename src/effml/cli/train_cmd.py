"""`effml train`: a short training run of a zoo model with mixed precision, checkpointing, gradient
accumulation and (--nproc N) DDP over torchrun; step time, throughput, peak memory, loss."""

from __future__ import annotations

import argparse

from effml.cli.common import (
    add_json_flag,
    add_model_flags,
    console,
    nonneg_int,
    parse_sets,
    positive_float,
    positive_int,
    print_json,
)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="short training run: step time, tokens/s, peak memory, loss",
                       description="Train a zoo model for a few steps (tiny_gpt on the KJV text; vision models on "
                                   "synthetic batches) and report step time, throughput, measured vs estimated "
                                   "peak memory and the loss curve.")
    add_model_flags(p, default="tiny_gpt")
    p.add_argument("--steps", type=positive_int, default=20, help="optimizer steps (default 20)")
    p.add_argument("--warmup", type=nonneg_int, default=2, help="untimed first steps (default 2)")
    p.add_argument("--batch", type=positive_int, default=8, help="micro-batch per process (default 8)")
    p.add_argument("--seq", type=positive_int, help="sequence length of a token model (default 128)")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="gradient accumulation steps (default 1)")
    p.add_argument("--optimizer", default="adamw", help="adamw, adam, sgd-momentum, sgd (default adamw)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--precision", default="fp32", help="fp32, bf16-mixed, bf16-true, fp16-mixed (GPU)")
    p.add_argument("--checkpointing", nargs="?", const="per-block", default="none",
                   help="per-block (the flag alone), every-K, sqrt, budget:SIZE, modules:NAME,NAME")
    p.add_argument("--nproc", type=positive_int, default=1, help="data-parallel processes via torchrun (default 1)")
    p.add_argument("--threads", type=positive_int, help="torch threads per process (default: cores / nproc)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement and estimate")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from effml.errors import ConfigError
    from effml.train.config import TrainConfig
    from effml.train.loop import RunConfig, train

    run_cfg = RunConfig(model=args.model, steps=args.steps, warmup=args.warmup, seq=args.seq or 128, seed=args.seed,
                        model_kwargs=parse_sets(args.set), measure_memory=not args.no_memory,
                        threads=args.threads)
    cfg = TrainConfig(optimizer=args.optimizer, precision=args.precision, checkpointing=args.checkpointing,
                      micro_batch=args.batch, grad_accum=args.grad_accum, world_size=args.nproc, lr=args.lr)
    entry = getattr(_builder(args.model), "zoo_entry", None)
    if args.seq is not None and entry is not None and not entry.vocab:
        raise ConfigError(f"--seq does not apply to {args.model} (an image model; it applies to token models)")
    con = console()
    if args.nproc > 1:
        from effml.train.ddp import launch

        with con.status(f"torchrun: {args.nproc} DDP processes, {args.steps} steps…", spinner="dots"):
            result = launch(run_cfg, cfg, args.nproc)
    else:
        from effml.cli.common import progress_hook

        with progress_hook(f"training {args.model}", quiet=args.json) as progress:
            result = train(run_cfg, cfg, progress=lambda what, done: progress(f"training {args.model}: {what}", done))
    if args.json:
        print_json(result.to_dict())
        return 0
    from effml.train.present import run_summary

    con.print(run_summary(result))
    return 0


def _builder(spec: str):
    from effml.models import model_builder

    return model_builder(spec)

