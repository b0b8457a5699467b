"""`effml nas`: hardware-aware architecture search under a device's SRAM/flash (or memory) budget."""

from __future__ import annotations

from effml.cli.common import (
    add_hw_flag,
    add_json_flag,
    console,
    nonneg_int,
    one_hw,
    positive_float,
    positive_int,
    print_json,
    refuse_unless,
)


def add_parser(sub) -> None:
    p = sub.add_parser("nas", help="search architectures that fit a device (SRAM, flash, latency) and train well",
                       description="Optuna multi-objective search over a search space: proxy accuracy up, "
                                   "predicted device cost down; candidates breaking a budget are rejected before "
                                   "training. Every trial goes to the study store (`effml report` shows them).")
    p.add_argument("--space", default="mobilenetv2", help="search space: mobilenetv2, transformer, or a .json file")
    add_hw_flag(p, default=["stm32f746"], help="the catalog device whose budgets bound the search and whose "
                                                  "predicted cost is minimised (one device)")
    p.add_argument("--trials", type=positive_int, default=40, help="evaluated trials (rejected candidates are extra)")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes sharing the search")
    p.add_argument("--store", default="runs.db", help="effml study store (SQLite) for every trial")
    p.add_argument("--study", default="default", help="study name inside the store")
    p.add_argument("--storage", help="Optuna RDB URL shared by the workers (default sqlite:///<store>.optuna.db; "
                                     "postgresql://user@host:port/db works the same)")
    p.add_argument("--sampler", default="tpe", choices=("tpe", "nsga2", "random"))
    p.add_argument("--objective", default="latency", choices=("latency", "energy", "flash", "sram", "macs"),
                   help="device cost minimised beside accuracy (default predicted latency)")
    p.add_argument("--dtype", default="int8", help="dtype the cost is predicted in (default int8)")
    p.add_argument("--memory", default="auto", choices=("auto", "mcu", "dram", "none"),
                   help="memory budget: SRAM+flash (mcu), main memory (dram); auto: by device kind")
    p.add_argument("--sram-kb", type=positive_float, help="SRAM budget in KiB (default: the device's)")
    p.add_argument("--flash-kb", type=positive_float, help="flash budget in KiB (default: the device's)")
    p.add_argument("--latency-ms", type=positive_float, help="latency budget on the device, in ms")
    p.add_argument("--energy-mj", type=positive_float, help="energy budget per inference on the device, in mJ")
    p.add_argument("--proxy", default="train", help="accuracy proxy: a registered name or package.module:function")
    p.add_argument("--train-images", type=positive_int, default=2000,
                   help="proxy: training images (Fashion-MNIST subset)")
    p.add_argument("--test-images", type=positive_int, default=1000, help="proxy: test images")
    p.add_argument("--epochs", type=positive_float, default=1.0, help="proxy: training epochs")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads per worker")
    p.add_argument("--seed", type=nonneg_int, default=0)
    add_json_flag(p)
    p.set_defaults(run=run)


def config_from(args):
    from effml.nas.proxy import ProxyConfig
    from effml.nas.search import NasConfig

    proxy = ProxyConfig(train_images=args.train_images, test_images=args.test_images, epochs=args.epochs,
                        seed=args.seed, threads=args.threads)
    hw = one_hw(args.hw, why=" (its budgets bound the search; run one search per device)")
    refuse_unless(args, {"--sram-kb": args.sram_kb, "--flash-kb": args.flash_kb},
                  args.memory in ("auto", "mcu"), f"to --memory {args.memory} (they are MCU budgets)")
    return NasConfig(space=args.space, hw=hw, trials=args.trials, workers=args.workers, sampler=args.sampler,
                     objective=args.objective, dtype=args.dtype, memory=args.memory, sram_kb=args.sram_kb,
                     flash_kb=args.flash_kb, latency_ms=args.latency_ms, energy_mj=args.energy_mj, proxy=args.proxy,
                     proxy_config=proxy, store=args.store, store_study=args.study, storage=args.storage,
                     seed=args.seed)


def run(args) -> int:
    from effml.cli.common import progress_hook
    from effml.extras import require
    from effml.nas.present import render
    from effml.nas.search import search

    require("optuna", extra="nas")
    cfg = config_from(args)
    if args.json:
        res = search(cfg)
        print_json(res.to_dict())
        return 0
    with progress_hook(f"NAS {cfg.space} on {cfg.hw}") as progress:
        res = search(cfg, progress=lambda what, frac: progress(f"NAS {cfg.space} on {cfg.hw}: {what}", frac))
    console().print(render(res))
    return 0

