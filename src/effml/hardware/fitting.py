"""Fit the per-op-type correction of the `local` roofline from calibration micro-benchmarks.

For a group of cases (one op category, or one aten op when it has >= 2 cases of its own), find the
per-call overhead o, compute efficiency eta and memory efficiency mu minimising the squared log error of

    t_case = known + sum over its calls of [o + max(F / (peak x eta), B / (bw(B) x mu))]

(`known` = the view calls inside the case, whose overhead was measured first). Log error: a 2x miss on a
5 us op weighs as much as one on a 50 ms op. Parameters the data cannot identify stay at 1.
"""

from __future__ import annotations

import math
from typing import Callable

BOUNDS = {"overhead_s": (1e-8, 1e-3), "compute": (0.02, 2.0), "memory": (0.02, 5.0)}


def fit_group(rows: list[dict], peak: float, bw: Callable[[float], float]) -> dict:
    """Overhead o, compute efficiency eta, memory efficiency mu minimising sum (log pred - log t)^2.

    eta is fitted only if some case is compute-bound at eta = mu = 1, mu only if some case is memory-bound
    (otherwise the data says nothing about it and it stays 1); all three are clamped to BOUNDS.
    """
    import numpy as np
    from scipy.optimize import minimize

    def clamp(logx, key):  # clamp in log space: Nelder-Mead may wander far out
        lo, hi = BOUNDS[key]
        return min(max(math.exp(min(max(logx, -60.0), 60.0)), lo), hi)

    any_c = any(f / peak >= b / bw(b) for r in rows for f, b in r["ops"] if f)
    any_m = any(b / bw(b) > f / peak for r in rows for f, b in r["ops"] if b)

    def unpack(params):
        o = clamp(params[0], "overhead_s")
        eta = clamp(params[1], "compute") if any_c else 1.0
        mu = clamp(params[2], "memory") if any_m else 1.0
        return o, eta, mu

    def pred(params, r):
        o, eta, mu = unpack(params)
        t = r["known_s"]
        for f, b in r["ops"]:
            t += o + max(f / (peak * eta) if f else 0.0, b / (bw(b) * mu) if b else 0.0)
        return t

    def loss(params):
        return sum((math.log(max(pred(params, r), 1e-9)) - math.log(r["time_s"])) ** 2 for r in rows)

    smallest = min(rows, key=lambda r: r["time_s"])
    o0 = max((smallest["time_s"] - smallest["known_s"]) / max(1, len(smallest["ops"])) * 0.8, 1e-7)
    best = min((minimize(loss, np.log([o0, e0, m0]), method="Nelder-Mead",
                         options={"xatol": 1e-3, "fatol": 1e-6, "maxiter": 2000})
                for e0, m0 in ((0.5, 0.5), (1.0, 2.0))), key=lambda res: res.fun)
    o, eta, mu = unpack(best.x)
    return {"overhead_s": o, "compute": eta, "memory": mu, "rms_log_error": math.sqrt(best.fun / len(rows))}




def dominant_op(events, category: str, peak: float, bw: Callable[[float], float]) -> str | None:
    """The aten op of the case's slowest call (at eta = mu = 1) in `category`."""
    best, op = -1.0, None
    for e in events:
        if e.category == category:
            b = float(e.bytes_read + e.bytes_written)
            t = max(float(e.flops or 0) / peak, b / bw(b) if b else 0.0)
            if t > best:
                best, op = t, e.op
    return op


def fit_op_model(rows_by_cat: dict[str, list[dict]], view_overhead: float, peak: float,
                 bw: Callable[[float], float]) -> dict[str, dict]:
    """{category or aten op: {overhead_s, compute, memory, rms_log_error, n}} from timed, counted cases.

    Each row: {"label", "time_s", "events"}; adds "ops" [(FLOPs, bytes)] and "known_s" to it.
    """
    out: dict[str, dict] = {}
    for cat, rows in rows_by_cat.items():
        for r in rows:
            r["ops"] = [(float(e.flops or 0), float(e.bytes_read + e.bytes_written))
                        for e in r["events"] if e.category == cat]
            r["known_s"] = view_overhead * sum(e.category != cat for e in r["events"])
            r["op"] = dominant_op(r["events"], cat, peak, bw)
        rows = [r for r in rows if r["ops"]]
        if not rows:
            continue
        out[cat] = {**fit_group(rows, peak, bw), "n": len(rows)}
        by_op: dict[str, list[dict]] = {}
        for r in rows:
            by_op.setdefault(r["op"], []).append(r)
        if len(by_op) > 1:  # one op alone would just repeat the category fit
            for op, group in by_op.items():
                if len(group) >= 2:
                    out[op] = {**fit_group(group, peak, bw), "n": len(group)}
    return out
