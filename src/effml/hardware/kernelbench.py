"""Time randomly sampled kernel configurations and fit the per-family kernel models (nn-Meter style).

Samplers draw layer configurations the way CNNs and transformers use them (log-uniform channels, spatial
sizes, rows; 1x1, 3x3, depthwise, grouped, strided convs; Linear with 1 to 4096 rows, LM-head-wide
outputs, batched matmuls; pools, norms, pointwise ops), never the shapes of any particular model.
Each is counted with `effml.profile`, so its features come from the same OpEvent a model's call yields.

Timing: each call on its own (median of `rounds` calls after a warm-up), back to back, as a layer runs on
an input the previous layer has just written. Timing in rotation (each call after a different kernel,
`time_calls(rotate=True)`) was tried: it measured 1.5-2x the in-model time of the zoo CNNs here, so the
models would over-predict. Draws are grouped by scale before timing (a 1x32x24 Linear timed right after a
50 MB LM head took 3-20x its in-model time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from effml.hardware.kernels import (
    FAMILIES,
    OP_FAMILY,
    features,
    fit_ensemble,
    roofline_base,
)
from effml.registries import Registry

SHARES = {"conv": 0.5, "matmul": 0.28, "pool": 0.06, "norm": 0.06, "pointwise": 0.10}
MAX_SAMPLES = 480
GROUP = 16


@dataclass
class Sample:
    family: str
    label: str
    fn: Callable
    inputs: tuple
    module: bool  # an nn.Module call: its Python __call__ cost is predicted separately (module_call)


def _ch(rng, lo: int, hi: int) -> int:
    c = 2 ** rng.uniform(math.log2(lo), math.log2(hi))
    return round(c / 8) * 8 if c > 24 else max(lo, round(c))


def _x(*shape) -> torch.Tensor:
    return torch.empty(*shape).uniform_(-1, 1)


# each sampler: (build() -> Sample, FLOPs, bytes); build only after the size check (some draws are GBs)
SAMPLERS: Registry[Callable] = Registry("kernel-model family")


@SAMPLERS.register("conv")
def _conv(rng):
    kind = rng.choice(["dense", "pw", "dw", "wide", "grouped"], p=[0.34, 0.26, 0.2, 0.1, 0.1])
    n, hw = int(rng.choice([1, 1, 2, 4, 8, 16, 32])), round(2 ** rng.uniform(2, 7))
    s = 2 if rng.random() < 0.25 else 1
    ci = int(rng.choice([1, 3])) if kind == "wide" or (kind == "dense" and rng.random() < 0.1) else _ch(rng, 8, 1024)
    k, g, co = 3, 1, _ch(rng, 8, 2048 if kind == "pw" else 1024)
    if kind == "pw":
        k = 1
    elif kind == "dw":
        g, co, k = ci, ci, (5 if rng.random() < 0.2 else 3)
    elif kind == "wide":
        k, co = int(rng.choice([5, 7])), _ch(rng, 6, 128)
    elif kind == "grouped":
        g = int(rng.choice([2, 4, 8, 32]))
        ci, co = max(g, ci // g * g), max(g, co // g * g)
    bias = bool(rng.random() < 0.3)
    ho = (hw + 2 * (k // 2) - k) // s + 1
    flops = 2 * n * co * (ci // g) * k * k * ho * ho
    nbytes = 4 * (n * ci * hw * hw + co * ci // g * k * k + n * co * ho * ho)
    return (lambda: Sample("conv", f"conv {n}x{ci}x{hw}x{hw}->{co} k{k} s{s} g{g}",
                           torch.nn.Conv2d(ci, co, k, stride=s, padding=k // 2, groups=g, bias=bias),
                           (_x(n, ci, hw, hw),), True)), flops, nbytes


@SAMPLERS.register("matmul")
def _matmul(rng):
    kind = rng.choice(["linear", "linear3d", "nobias", "bmm", "head"], p=[0.4, 0.2, 0.15, 0.15, 0.1])
    m = round(2 ** rng.uniform(0, 12 if rng.random() < 0.6 else 6))
    k, n = _ch(rng, 16, 4096), _ch(rng, 16, 4096)
    if kind == "head":
        n, m = int(2 ** rng.uniform(13, 15.7)), int(2 ** rng.uniform(0, 9))
    if kind == "bmm":
        b, m, k, n = int(2 ** rng.uniform(0, 9)), int(2 ** rng.uniform(0, 9)), _ch(rng, 16, 512), _ch(rng, 16, 512)
        return (lambda: Sample("matmul", f"bmm {b}x{m}x{k}x{n}", torch.bmm, (_x(b, m, k), _x(b, k, n)), False)), \
            2 * b * m * k * n, 4 * b * (m * k + k * n + m * n)
    t = int(2 ** rng.uniform(0, 8)) if kind == "linear3d" else 1
    rows = max(1, m // t)
    m = rows * t

    def build():
        lin = torch.nn.Linear(k, n, bias=kind not in ("nobias", "head"))
        return Sample("matmul", f"{kind} {m}x{k}x{n}", lin, (_x(rows, t, k) if t > 1 else _x(m, k),), True)
    return build, 2 * m * k * n, 4 * (m * k + k * n + m * n)


@SAMPLERS.register("pool")
def _pool(rng):
    n, c, hw = int(rng.choice([1, 2, 8, 32])), _ch(rng, 4, 1024), round(2 ** rng.uniform(2, 7))
    kind = rng.choice(["max", "max3", "avg", "adaptive"], p=[0.4, 0.2, 0.2, 0.2])
    mod = {"max": lambda: torch.nn.MaxPool2d(2), "max3": lambda: torch.nn.MaxPool2d(3, 2, 1),
           "avg": lambda: torch.nn.AvgPool2d(2), "adaptive": lambda: torch.nn.AdaptiveAvgPool2d(1)}[kind]
    nb = 4 * n * c * hw * hw
    return (lambda: Sample("pool", f"{kind}pool {n}x{c}x{hw}", mod(), (_x(n, c, hw, hw),), True)), nb / 4, 1.3 * nb


@SAMPLERS.register("norm")
def _norm(rng):
    if rng.random() < 0.55:
        n, c, hw = int(rng.choice([1, 2, 8, 32])), _ch(rng, 8, 1024), round(2 ** rng.uniform(2, 7))
        nb = 4 * n * c * hw * hw
        return (lambda: Sample("norm", f"batch_norm {n}x{c}x{hw}", torch.nn.BatchNorm2d(c).eval(),
                               (_x(n, c, hw, hw),), True)), nb / 2, 2 * nb
    rows, d = int(2 ** rng.uniform(0, 13)), _ch(rng, 64, 4096)
    return (lambda: Sample("norm", f"layer_norm {rows}x{d}", torch.nn.LayerNorm(d), (_x(rows, d),), True)), \
        5 * rows * d, 8 * rows * d


@SAMPLERS.register("pointwise")
def _pointwise(rng):
    numel = int(2 ** rng.uniform(6, 24))
    kind = rng.choice(["relu", "relu_", "gelu", "relu6", "add", "add_bias", "mul"])
    if kind in ("add", "mul", "add_bias"):
        last = int(rng.choice([64, 256, 768, 1024]))
        rows = max(1, numel // last)
        fn = torch.mul if kind == "mul" else torch.add
        return (lambda: Sample("pointwise", f"{kind} {rows}x{last}", fn,
                               (_x(rows, last), _x(last) if kind == "add_bias" else _x(rows, last)), False)), \
            rows * last, 12 * rows * last
    mod = {"relu": torch.nn.ReLU, "relu_": lambda: torch.nn.ReLU(inplace=True), "gelu": torch.nn.GELU,
           "relu6": torch.nn.ReLU6}[kind]
    return (lambda: Sample("pointwise", f"{kind} {numel}", mod(), (_x(numel),), True)), numel, 8 * numel


LIMITS = {"flops": 2.5e9, "bytes": 1.6e8}  # keeps one call under ~50 ms here; larger ones extrapolate flat


def draw(family: str, rng, peak: float = 5e10, bw: float = 1e10) -> tuple[Callable[[], Sample], float]:
    """One random configuration of `family` within LIMITS: (build, its roofline time at peak / bw)."""
    while True:
        build, flops, nbytes = SAMPLERS[family](rng)
        if flops <= LIMITS["flops"] and nbytes <= LIMITS["bytes"]:
            return build, roofline_base(flops, nbytes, peak, bw)


def groups_by_scale(draws: list, size: int) -> list[list]:
    """Draws sorted by roofline time and cut into groups: a kernel is timed among kernels of its own scale."""
    ranked = sorted(draws, key=lambda d: d[1])
    return [ranked[i:i + size] for i in range(0, len(ranked), size)]


def time_calls(samples: list[Sample], clock: Callable[[], float], rounds: int, rng,
               rotate: bool = False) -> list[float]:
    """Median seconds per call of each sample, each call timed on its own after a warm-up call.

    rotate=False: a sample's calls back to back (its weights and input stay in cache, as a layer's input
    does when the previous layer has just written it). rotate=True: rounds over the group in shuffled
    order, so each call follows a different kernel (cold caches: measured 1.5-2x the in-model time here)."""
    t0 = clock()
    for _ in range(100):
        clock()
    tick = (clock() - t0) / 100  # cost of one clock read, taken off each call's time
    times: list[list[float]] = [[] for _ in samples]
    order = [int(i) for _ in range(rounds) for i in rng.permutation(len(samples))] if rotate else \
        [i for i in range(len(samples)) for _ in range(rounds)]
    with torch.no_grad():
        for s in samples:  # first-call costs (JIT, primitive creation) stay out
            s.fn(*s.inputs)
        for i in order:
            s = samples[i]
            t = clock()
            out = s.fn(*s.inputs)
            times[i].append(clock() - t - tick)
            del out  # freed outside the timed region
    return [float(np.median(ts)) for ts in times]


def training_rows(samples: list[Sample], times: list[float], device, module_call: float) -> dict[str, list]:
    """{family: [(features, log(kernel time / roofline base), label)]}: the other calls of a sample (views)
    and its module call are taken off at their predicted cost first."""
    from effml.cost.counter import profile
    from effml.hardware.microbench import as_module
    from effml.hardware.roofline import op_cost

    rows: dict[str, list] = {}
    for s, t in zip(samples, times):
        with torch.no_grad():
            events = profile(as_module(s.fn), *s.inputs).events
        main = [e for e in events if OP_FAMILY.get(e.op) == s.family]
        if len(main) != 1:
            continue
        e = main[0]
        nb = float(e.bytes_read + e.bytes_written)
        others = sum(op_cost(device, o.category, "fp32", float(o.flops or 0), float(o.bytes_read + o.bytes_written),
                             o.op).time_s for o in events if o is not e)
        kt = t - others - (module_call if s.module else 0.0)
        f = features(e.op, e.args, float(e.flops or 0), nb)
        if f is None:
            continue
        base = max(op_cost(device, e.category, "fp32", float(e.flops or 0), nb, e.op).time_s, 1e-7)
        rows.setdefault(s.family, []).append((f[1], math.log(max(kt, 0.2 * t, 1e-8) / base), s.label))
    return rows


def _scores(y_true, y_pred) -> dict:
    err = np.exp(np.asarray(y_pred) - np.asarray(y_true)) - 1
    return {"n": len(err), "median_abs_error": float(np.median(np.abs(err))),
            "within_20pct": float(np.mean(np.abs(err) <= 0.2)),
            "rms_log_error": float(np.sqrt(np.mean((np.asarray(y_pred) - np.asarray(y_true)) ** 2)))}


def fit_family(rows: list, seed: int = 0, holdout: float = 0.2) -> dict:
    """Fit on a random (1 - holdout) of the rows, score on the rest, then refit on all of them."""
    x = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    perm = np.random.default_rng(seed).permutation(len(rows))
    n_test = int(len(rows) * holdout) if len(rows) >= 20 else 0
    scores = None
    if n_test:
        test, train = perm[:n_test], perm[n_test:]
        scores = _scores(y[test], fit_ensemble(x[train], y[train], seed).predict(x[test]))
    model = fit_ensemble(x, y, seed)
    return {"model": model.to_dict(), "n": len(rows), "heldout": scores, "train": _scores(y, model.predict(x)),
            "samples": {"x": x.round(5).tolist(), "y": y.round(5).tolist(), "label": [r[2] for r in rows]}}


def run(device, module_call: float, clock: Callable[[], float], budget_s: float, rounds: int, seed: int = 0,
        families: tuple[str, ...] | None = None, progress: Callable[[str, float], None] | None = None) -> dict:
    """Sample, time and fit each family within its share of `budget_s` wall seconds (groups of GROUP
    samples until the share is spent): {family: fit_family(...) + "ops", "elapsed_s"}."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    fams = families or tuple(SAMPLERS)
    total = sum(SHARES[f] for f in fams)
    spent, out, peak = 0.0, {}, device.peak_flops("fp32")
    for fam in fams:
        share, t0, rows = budget_s * SHARES[fam] / total, time.perf_counter(), []
        while (time.perf_counter() - t0 < share or len(rows) < 2 * GROUP) and len(rows) < MAX_SAMPLES:
            for drawn in groups_by_scale([draw(fam, rng, peak, device.bandwidth) for _ in range(4 * GROUP)], GROUP):
                group = [build() for build, _ in drawn]
                times = time_calls(group, clock, rounds, rng)
                rows += training_rows(group, times, device, module_call).get(fam, [])
                if progress:
                    progress(f"kernel models: {fam}", min(1.0, (spent + time.perf_counter() - t0) / budget_s))
                if time.perf_counter() - t0 > share and len(rows) >= 2 * GROUP:
                    break
        elapsed = time.perf_counter() - t0
        spent += elapsed
        if rows:
            out[fam] = {**fit_family(rows, seed), "ops": list(FAMILIES[fam]), "elapsed_s": elapsed}
    return out
