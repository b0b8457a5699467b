"""Claim: the training-memory estimate (effml.train.train_memory, a step simulated on fake tensors) is within
±10% of the measured peak on this CPU for every zoo model and a tiny GPT, with and without checkpointing.

"Measured" = the CPU allocator's own count: while the profiler records memory, PyTorch's CPU allocator reports
every allocation and free with its running total; the peak of that total during one steady-state training step
(forward, loss, backward, AdamW step; optimizer state already created), minus its level before the step, plus
the bytes of the tensors alive before it (weights, buffers, optimizer states). RSS is shown beside it: glibc
keeps freed memory and returns large blocks to the OS, so its delta is not a peak of tensor memory.

    python benchmarks/bench_train_memory.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results

from effml.train import TrainConfig, train_memory
from effml.train import checkpoint as ckpt
from effml.train.measured import measure_step
from effml.train.recipes import Batch, TrainStep
from effml.zoo import ZOO

TOLERANCE = 0.10
# (label, zoo name, builder kwargs, micro-batch, checkpointing strategies, precisions)
CASES = [
    ("mlp", "mlp", {}, 64, ("none", "sqrt"), ("fp32", "bf16-mixed")),
    ("lenet5", "lenet5", {}, 64, ("none", "sqrt"), ("fp32", "bf16-mixed")),
    ("vgg", "vgg", {}, 32, ("none", "sqrt"), ("fp32",)),
    ("resnet", "resnet", {}, 32, ("none", "per-block", "sqrt"), ("fp32",)),
    ("tiny_gpt", "tiny_gpt", {}, 8, ("none", "per-block", "sqrt"), ("fp32", "bf16-mixed", "bf16-true")),
    ("gpt 12 blocks", "tiny_gpt", {"n_layer": 12, "n_embd": 128}, 8, ("none", "per-block"), ("fp32",)),
]
SEQ = 128


def batch_for(name: str, b: int):
    entry = ZOO[name]
    g = torch.Generator().manual_seed(0)
    if entry.vocab:
        return torch.randint(0, entry.vocab, (b, SEQ), generator=g), torch.randint(0, entry.vocab, (b, SEQ), generator=g)
    return torch.randn((b, *entry.input_shape[1:]), generator=g), torch.randint(0, 10, (b,), generator=g)


def measure(model, x, y, cfg):
    model.train()
    step = TrainStep(model, cfg, "auto")
    with ckpt.applied(model, ckpt.plan(model, cfg.checkpointing)):
        step.run([Batch((x,), y)])  # creates AdamW's state: the measured step is a steady-state one
        return measure_step(lambda: step.run([Batch((x,), y)]), model, step.optimizer)


def main() -> int:
    torch.set_num_threads(2)
    rows = []
    for label, name, kwargs, b, strategies, precisions in CASES:
        for precision in precisions:
            for strategy in strategies:
                torch.manual_seed(0)
                model = ZOO[name].build(**kwargs)
                x, y = batch_for(name, b)
                cfg = TrainConfig(precision=precision, checkpointing=strategy, micro_batch=b)
                t0 = time.perf_counter()
                est = train_memory(model, (x,), cfg, target=y)
                t_est = time.perf_counter() - t0
                m = measure(model, x, y, cfg)
                err = est.peak / m.peak_bytes - 1
                rows.append({"model": label, "precision": precision, "ckpt": strategy, "batch": b,
                             "est MB": round(est.peak / 1e6, 3), "meas MB": round(m.peak_bytes / 1e6, 3),
                             "err %": round(100 * err, 2), "rss MB": round((m.rss_delta_bytes or 0) / 1e6, 1),
                             "ok": abs(err) <= TOLERANCE, "params": est.params, "estimate_s": round(t_est, 2),
                             "extrapolated": any("extrapolated" in n for n in est.notes)})
                print(f"{label:14s} {precision:10s} {strategy:9s} est {est.peak / 1e6:8.2f} MB  "
                      f"measured {m.peak_bytes / 1e6:8.2f} MB  {100 * err:+.2f}%", flush=True)
    shown = ("model", "precision", "ckpt", "batch", "est MB", "meas MB", "err %", "rss MB", "ok")
    print_table("Training memory per AdamW step: estimate vs measured (CPU allocator)",
                [{k: r[k] for k in shown} for r in rows])
    worst = max(abs(r["err %"]) for r in rows)
    ok = all(r["ok"] for r in rows)
    path = write_results("train_memory", {
        "claim": "estimate within ±10% of the measured peak for every zoo model and a tiny GPT, with and without "
                 "checkpointing",
        "measured_means": "peak of the PyTorch CPU allocator's running total (profiler memory events) during one "
                          "steady-state step + bytes of weights, buffers and optimizer states alive before it",
        "tolerance": TOLERANCE, "worst_abs_error_%": worst, "passed": ok, "rows": rows})
    print(f"worst |error| {worst:.2f}% over {len(rows)} cases -> {'PASS' if ok else 'FAIL'}; wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
