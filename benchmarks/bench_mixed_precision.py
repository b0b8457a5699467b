"""Claim: bf16 autocast vs fp32 training on this CPU, side by side: step time and loss curves (which must
match within a stated tolerance). CPUs without bf16 arithmetic (no AVX512-BF16, no AMX) emulate bf16 through
fp32 conversions and run it slower: the script detects that, says so, and shows the gain bf16 is predicted to
bring on the catalog GPUs instead (roofline of a GPT-2 124M training step, effml.hardware.predict).

Runs: the zoo GPT (4 blocks, d=128) on KJV text, batch 16 x 64 tokens, AdamW lr 1e-3, the same seed and the
same batches for every precision, trained in lockstep (one step of each per round), so other tenants' load
hits them alike. Time = the process's CPU time per step (one thread; see bench_checkpointing.py for why).

    python benchmarks/bench_mixed_precision.py [--steps 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results

from effml.train import TrainConfig
from effml.train.loop import RunConfig, build_model
from effml.train.recipes import Batch, TrainStep, cpu_bf16_support
from effml.zoo.text import BatchSampler, kjv_corpus

B, T = 16, 64
PRECISIONS = ("fp32", "bf16-mixed", "bf16-true")
# loss-curve tolerance for bf16 autocast (fp32 master weights): bf16 keeps 8 mantissa bits (relative rounding
# 2^-9 = 0.2%) and the curves drift apart slowly, so we require |bf16-mixed - fp32| <= 0.05 nats per step on
# average over the last 10 steps and <= 0.15 nats at any step (the loss falls from ln 65 = 4.17 to ~2.5).
# bf16-true (no fp32 master copy) is shown for contrast and not held to it: updates below half a bf16 ulp of
# the weight are rounded away, which is why mixed precision keeps fp32 master weights.
MEAN_TOL, MAX_TOL = 0.05, 0.15


def predicted_gpu_gains() -> list[dict]:
    """Roofline time of one GPT-2 (124M) training step, B=8 x T=1024, fp32 vs bf16 (fp16 where no bf16)."""
    from effml.cost.counter import profile
    from effml.hardware import list_devices, predict
    from effml.models import resolve

    spec = resolve(config="gpt2", batch=8, seq=1024)
    prof = profile(spec.model, *spec.args, forward_kwargs=spec.kwargs, backward=True, name=spec.name)
    rows = []
    for dev in list_devices():
        if dev.kind != "gpu":
            continue
        low = "bf16" if dev.has_dtype("bf16") else "fp16"
        t32 = predict(prof, dev, dtype="fp32").time_s
        tlow = predict(prof, dev, dtype=low).time_s
        row = {"device": dev.name, "low dtype": low, "fp32 ms": round(t32 * 1e3, 2), "low ms": round(tlow * 1e3, 2),
               "gain vs fp32": round(t32 / tlow, 2)}
        if dev.has_dtype("tf32"):
            row["gain vs tf32"] = round(predict(prof, dev, dtype="tf32").time_s / tlow, 2)
        else:
            row["gain vs tf32"] = "-"
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hw = cpu_bf16_support()
    sampler = BatchSampler(kjv_corpus().train, B, T, seed=0)
    batches = [sampler() for _ in range(args.steps)]  # the same batches for every precision
    steps = {}
    for p in PRECISIONS:
        model, _ = build_model(RunConfig("tiny_gpt", seq=T, seed=0))  # same init for all
        steps[p] = TrainStep(model.train(), TrainConfig(precision=p, micro_batch=B), "lm")
    losses = {p: [] for p in PRECISIONS}
    cpu = {p: [] for p in PRECISIONS}
    for i, (x, y) in enumerate(batches):
        for p, st in steps.items():
            c0 = time.process_time()
            losses[p].append(st.run([Batch((x,), y)]))
            cpu[p].append(time.process_time() - c0)
        if i % 10 == 9:
            print(f"step {i + 1}: " + ", ".join(f"{p} loss {losses[p][-1]:.3f} ({cpu[p][-1]:.2f} s)" for p in PRECISIONS),
                  flush=True)
    warm = 3
    rows = []
    for p in PRECISIONS:
        diff = [abs(a - b) for a, b in zip(losses[p], losses["fp32"])]
        t = statistics.median(cpu[p][warm:])
        paired = statistics.median(a / b for a, b in zip(cpu[p][warm:], cpu["fp32"][warm:]))
        rows.append({"precision": p, "step CPU s": round(t, 3), "vs fp32": round(paired, 2),
                     "tokens/s": round(B * T / t), "loss first": round(losses[p][0], 3),
                     "loss last": round(losses[p][-1], 3), "max |dloss|": round(max(diff), 4),
                     "last-10 |dloss|": round(statistics.mean(diff[-10:]), 4)})
    print_table(f"bf16 vs fp32 training on this CPU ({hw['capability']}, {args.threads} thread, CPU time)", rows)
    has_hw = hw["bf16_hardware"]
    verdict = ("this CPU has bf16 arithmetic (AVX512-BF16 or AMX)" if has_hw else
               f"this CPU ({hw['capability']}) has NO bf16 arithmetic (no AVX512-BF16, no AMX): bf16 is emulated "
               f"through fp32 conversions, so bf16-mixed runs {rows[1]['vs fp32']:.2f}x the fp32 step time here")
    print(verdict)
    gpu = predicted_gpu_gains()
    print_table("Predicted gain of bf16 (fp16 where no bf16) over fp32 on catalog GPUs: GPT-2 124M training step, "
                "B=8 x T=1024 (roofline)", gpu)
    mixed = next(r for r in rows if r["precision"] == "bf16-mixed")
    curves_ok = mixed["last-10 |dloss|"] <= MEAN_TOL and mixed["max |dloss|"] <= MAX_TOL
    path = write_results("mixed_precision", {
        "claim": "bf16 autocast vs fp32: step time on this CPU, loss curves within tolerance; without bf16 "
                 "hardware, predicted gains on catalog GPUs",
        "cpu": hw, "bf16_hardware": has_hw, "verdict": verdict, "threads": args.threads, "batch": B, "seq": T,
        "tolerance_nats": {"applies_to": "bf16-mixed", "last10_mean": MEAN_TOL, "max": MAX_TOL}, "rows": rows, "losses": losses,
        "cpu_s": cpu, "predicted_gpu": gpu, "passed": curves_ok})
    print(f"bf16-mixed loss curve {'matches' if curves_ok else 'does NOT match'} fp32 within {MEAN_TOL} nats (last "
          f"10 steps) and {MAX_TOL} (any step) -> {'PASS' if curves_ok else 'FAIL'}; wrote {path}")
    return 0 if curves_ok else 1


if __name__ == "__main__":
    sys.exit(main())
