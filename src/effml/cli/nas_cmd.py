"""`effml nas`: hardware-aware architecture search under a device's SRAM/flash (or memory) budget."""

from __future__ import annotations

from effml.cli.common import add_json_flag, console, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("nas", help="search architectures that fit a device (SRAM, flash, latency) and train well",
                       description="Optuna multi-objective search over a search space: proxy accuracy up, "
                                   "predicted device cost down; candidates breaking a budget are rejected before "
                                   "training. Every trial goes to the study store (`effml report` shows them).")
    p.add_argument("--space", default="mobilenetv2", help="search space: mobilenetv2, transformer, or a .json file")
    p.add_argument("--hw", default="stm32f746", help="catalog device (budgets and predicted cost)")
    p.add_argument("--trials", type=int, default=40, help="evaluated trials (rejected candidates are extra)")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the search")
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
    p.add_argument("--sram-kb", type=float, help="SRAM budget in KiB (default: the device's)")
    p.add_argument("--flash-kb", type=float, help="flash budget in KiB (default: the device's)")
    p.add_argument("--latency-ms", type=float, help="latency budget on the device")
    p.add_argument("--energy-mj", type=float, help="energy budget per inference on the device")
    p.add_argument("--proxy", default="train", help="accuracy proxy: a registered name or package.module:function")
    p.add_argument("--train-images", type=int, default=2000, help="proxy: training images (Fashion-MNIST subset)")
    p.add_argument("--test-images", type=int, default=1000, help="proxy: test images")
    p.add_argument("--epochs", type=float, default=1.0, help="proxy: training epochs")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--seed", type=int, default=0)
    add_json_flag(p)
    p.set_defaults(run=run)


def config_from(args):
    from effml.nas.proxy import ProxyConfig
    from effml.nas.search import NasConfig

    proxy = ProxyConfig(train_images=args.train_images, test_images=args.test_images, epochs=args.epochs,
                        seed=args.seed, threads=args.threads)
    return NasConfig(space=args.space, hw=args.hw, trials=args.trials, workers=args.workers, sampler=args.sampler,
                     objective=args.objective, dtype=args.dtype, memory=args.memory, sram_kb=args.sram_kb,
                     flash_kb=args.flash_kb, latency_ms=args.latency_ms, energy_mj=args.energy_mj, proxy=args.proxy,
                     proxy_config=proxy, store=args.store, store_study=args.study, storage=args.storage,
                     seed=args.seed)


def run(args) -> int:
    from effml.cli.prune_cmd import progress_bar
    from effml.nas.search import search

    cfg = config_from(args)
    if args.json:
        res = search(cfg)
        print_json(res.to_dict())
        return 0
    with progress_bar() as bar:
        task = bar.add_task(f"NAS {cfg.space} on {cfg.hw}", total=cfg.trials)

        def progress(done, total, trial):
            last = f" · last: {trial.name[:48]} {'rejected' if trial.rejected else f'{trial.accuracy:.1%}'}" if trial \
                else ""
            bar.update(task, completed=done, description=f"NAS {cfg.space} on {cfg.hw}: {done}/{total}{last}")

        res = search(cfg, progress=progress)
    show(res)
    return 0


def show(res) -> None:
    from rich.table import Table

    from effml.units import fmt_bytes

    con = console()
    b = res.budget
    limits = ", ".join(f"{k} {fmt_bytes(b[k + '_bytes'], True)}" for k in ("sram", "flash", "memory")
                       if b.get(k + "_bytes"))
    con.print(f"[bold]{res.study_name}[/]: {len(res.evaluated)} evaluated, {len(res.rejected)} rejected before "
              f"training (budget on {b['device']}: {limits or 'none'}); hypervolume {res.hypervolume():.4f}")
    if res.note:
        con.print(f"note: {res.note}")
    t = Table(title=f"Pareto front: proxy accuracy vs {res.objective} on {b['device']}")
    for col in ("trial", "architecture", "accuracy", "latency (ms)", "energy (mJ)", "SRAM int8", "flash int8",
                "MACs"):
        t.add_column(col, justify="left" if col == "architecture" else "right")
    for tr in res.front:
        c = tr.cost
        t.add_row(str(tr.number), tr.name, f"{tr.accuracy:.1%}", f"{c['latency_s'] * 1e3:.3g}",
                  f"{c['energy_j'] * 1e3:.3g}", fmt_bytes(c["sram_bytes"], True), fmt_bytes(c["flash_bytes"], True),
                  f"{c['macs']:,}")
    con.print(t)
    if res.best is not None:
        con.print(f"best accuracy: trial {res.best.number} ({res.best.name}) {res.best.accuracy:.1%}")
    con.print(f"trials in {res.storage} (study {res.study_name}); study store: {res.config['store']}")
