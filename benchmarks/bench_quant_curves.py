"""k-means vs linear weight quantization at 8/4/2 bits, before and after QAT, in one table.

Reference (MIT 6.5940 lab 2, VGG on CIFAR-10): k-means 8/4/2-bit ~ 92.7 / 81.6 / 16.2% before QAT, 4-bit
back to 92.7% with QAT. Here: LeNet-5 (zoo, 61.7K parameters) on Fashion-MNIST, every conv and linear
weight quantized (biases fp32); linear = symmetric per output channel; k-means = one 2^bits codebook per
layer (linear init). QAT: 1 epoch with a straight-through estimator (k-means: centroids re-estimated from
the latent weights every step). Size = codes + scales/codebooks + fp32 biases.

    python benchmarks/bench_quant_curves.py          # EFFML_BENCH_THREADS (default 2) torch threads
"""

from __future__ import annotations

import copy
import os
import sys
import time

import torch

from common import print_table, write_results

os.environ.setdefault("COLUMNS", "200")  # rich wraps tables at 80 columns when stdout is not a terminal

THREADS = int(os.environ.get("EFFML_BENCH_THREADS", "2"))
BITS = (8, 4, 2)


def main() -> int:
    from effml.compress import config_from_dict, freeze, quantize
    from effml.zoo import lenet5
    from effml.zoo.data import load
    from effml.train.classifier import evaluate, train_classifier, train_cached

    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    data = load("fashion-mnist", batch_size=128, seed=0)
    torch.manual_seed(0)
    dense = lenet5()
    train_cached(dense, data, f"LeNet-5-{data.name}-{len(data.train.x)}-e6-s0", epochs=6, lr=2e-3, seed=0)
    base = evaluate(dense, data.test)
    rows = []
    for method in ("kmeans", "linear"):
        for bits in BITS:
            m = copy.deepcopy(dense)
            ptq = quantize(m, config_from_dict({"method": method, "bits": bits}))
            acc_ptq = evaluate(m, data.test)
            q = copy.deepcopy(dense)
            quantize(q, config_from_dict({"method": method, "bits": bits, "qat": True}))
            train_classifier(q, data, epochs=1, lr=5e-4, seed=1)
            freeze(q)
            acc_qat = evaluate(q, data.test)
            rows.append({"method": method, "bits": bits, "fp32 acc %": 100 * base, "PTQ acc %": 100 * acc_ptq,
                         "QAT acc %": 100 * acc_qat, "PTQ drop pt": 100 * (base - acc_ptq),
                         "QAT drop pt": 100 * (base - acc_qat), "stored kB": ptq.stored_bytes / 1e3,
                         "x smaller": ptq.compression})
    print_table(f"LeNet-5 on {data.name}: weight quantization before/after QAT (1 epoch STE), "
                f"{THREADS} threads" + (f" [{data.note}]" if data.note else ""), rows)
    by = {(r["method"], r["bits"]): r for r in rows}
    # what the lab's curve shows, checked here: 8 bits is free, 2 bits is not without QAT, QAT recovers 4 bits
    checks = {"8-bit PTQ within 0.5 pt (both methods)": all(by[(k, 8)]["PTQ drop pt"] <= 0.5 for k in ("kmeans", "linear")),
              "2-bit PTQ loses more than 4-bit PTQ": all(by[(k, 2)]["PTQ drop pt"] > by[(k, 4)]["PTQ drop pt"]
                                                         for k in ("kmeans", "linear")),
              "4-bit QAT within 1 pt (both methods)": all(by[(k, 4)]["QAT drop pt"] <= 1.0 for k in ("kmeans", "linear"))}
    for k, v in checks.items():
        print(f"{'PASS' if v else 'FAIL'}  {k}")
    path = write_results("quant_curves", {"threads": THREADS, "load_avg": os.getloadavg(), "data": data.to_dict(),
                                          "rows": rows, "checks": checks, "passed": all(checks.values()),
                                          "seconds": time.perf_counter() - t0})
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f})")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
