"""Claim: the hardware-aware search beats random sampling of the same space at the same trial count.

MobileNetV2 space on an STM32F746 (320 KiB SRAM, 1 MiB flash, int8), objectives: proxy accuracy on
Fashion-MNIST (short training from scratch on a seeded subset) up, predicted int8 latency down. For each
seed, TPE (multi-objective, budgets as constraints) and random sampling each evaluate N budget-feasible
trials (rejected candidates are free for both: counted on the meta device, never trained). Reported per
seed: best proxy accuracy, hypervolume of (accuracy, latency) against a common reference (accuracy 0,
the largest latency either method evaluated for that seed), trials rejected before training. Also checks
the winners: every architecture on either front fits SRAM and flash by the counter's numbers.

    python benchmarks/bench_nas.py [--trials 15] [--seeds 0 1 2] [--train-images 1000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-images", type=int, default=1000)
    ap.add_argument("--test-images", type=int, default=500)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--hw", default="stm32f746")
    args = ap.parse_args()

    import torch

    from effml.nas.budgets import budget_for
    from effml.nas.proxy import ProxyConfig
    from effml.nas.result import hypervolume
    from effml.nas.search import NasConfig, search

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="nas_bench_"))
    budget = budget_for(args.hw)
    rows, runs = [], []
    try:
        for seed in args.seeds:
            res = {}
            for sampler in ("tpe", "random"):
                cfg = NasConfig(space="mobilenetv2", hw=args.hw, trials=args.trials, sampler=sampler, seed=seed,
                                store=None, storage=f"sqlite:///{tmp}/s{seed}_{sampler}.db",
                                proxy_config=ProxyConfig(train_images=args.train_images, test_images=args.test_images,
                                                         epochs=args.epochs, seed=seed))
                t0 = time.perf_counter()
                res[sampler] = (search(cfg), time.perf_counter() - t0)
            ref = max(t.objective for r, _ in res.values() for t in r.evaluated) * 1.0001
            for sampler, (r, secs) in res.items():
                fits = all(not budget.violations(t.cost) for t in r.front)
                row = {"seed": seed, "sampler": sampler, "evaluated": len(r.evaluated), "rejected": len(r.rejected),
                       "best_acc_%": 100 * r.best.accuracy,
                       "hypervolume": hypervolume([(t.accuracy, t.objective) for t in r.evaluated], ref) / ref,
                       "front": len(r.front), "front_fits": fits, "minutes": secs / 60}
                rows.append(row)
                runs.append({**row, "front_trials": [t.to_dict() for t in r.front], "note": r.note})
        summary = []
        for sampler in ("tpe", "random"):
            mine = [r for r in rows if r["sampler"] == sampler]
            summary.append({"sampler": sampler, "seeds": len(mine),
                            "mean_best_acc_%": statistics.mean(r["best_acc_%"] for r in mine),
                            "mean_hypervolume": statistics.mean(r["hypervolume"] for r in mine),
                            "mean_rejected": statistics.mean(r["rejected"] for r in mine)})
        by_seed = {(r["seed"], r["sampler"]): r for r in rows}
        wins_hv = sum(by_seed[(s, "tpe")]["hypervolume"] > by_seed[(s, "random")]["hypervolume"] for s in args.seeds)
        wins_acc = sum(by_seed[(s, "tpe")]["best_acc_%"] > by_seed[(s, "random")]["best_acc_%"] for s in args.seeds)
        print_table(f"NAS on {args.hw}: TPE vs random, {args.trials} evaluated trials each "
                    f"(hypervolume normalised by the reference latency)", rows)
        print_table("mean over seeds", summary)
        print(f"TPE beats random on hypervolume in {wins_hv}/{len(args.seeds)} seeds, on best accuracy in "
              f"{wins_acc}/{len(args.seeds)}")
        path = write_results("nas", {
            "claim": "hardware-aware search beats random sampling at the same number of evaluated trials",
            "settings": {**vars(args), "space": "mobilenetv2", "budget": budget.to_dict(),
                         "objectives": ["proxy accuracy (max)", "predicted int8 latency (min)"]},
            "rows": rows, "summary": summary, "wins_hypervolume": wins_hv, "wins_best_accuracy": wins_acc,
            "runs": runs})
        print(f"wrote {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
