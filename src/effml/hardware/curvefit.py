"""Fit the per-op-type correction of the `local` roofline from calibration micro-benchmarks.

For a group of cases (one op category, or one aten op when it has >= 2 cases of its own), find the
per-call overhead o, compute efficiency eta and memory efficiency mu minimising the squared log error of

    t_case = known + sum over its calls of [o + max(F / (peak x eta(I)), B / (bw(B) x mu))]

(`known` = the view calls inside the case, whose overhead was measured first). Log error: a 2x miss on a
5 us op weighs as much as one on a 50 ms op. Parameters the data cannot identify stay at 1.
"""

from __future__ import annotations

import math
from typing import Callable

BOUNDS = {"overhead_s": (1e-8, 1e-3), "compute": (0.02, 2.0), "memory": (0.02, 5.0), "i_half": (0.01, 1e4),
          "p": (0.2, 3.0), "r": (1e-3, 1.0)}


def fit_group(rows: list[dict], peak: float, bw: Callable[[float], float]) -> dict:
    """Overhead o, compute efficiency eta(I), memory efficiency mu minimising sum (log pred - log t)^2.

    eta is fitted only if some case is compute-bound at eta = mu = 1, mu only if some case is memory-bound
    (otherwise the data says nothing about it and it stays 1). With >= 4 compute-bound cases the compute
    efficiency may fall with intensity I = FLOPs/bytes, eta(I) = eta_max I^p / (I^p + knee^p) with
    knee = I_half (bytes / 1 MB)^r: a CPU GEMM with 16 rows reaches a fraction of the 1024-row rate, less
    so when its weights are small (roofline.compute_efficiency). All parameters are clamped to BOUNDS.
    """
    import numpy as np
    from scipy.optimize import minimize

    def clamp(logx, key):  # clamp in log space: Nelder-Mead may wander far out
        lo, hi = BOUNDS[key]
        return min(max(math.exp(min(max(logx, -60.0), 60.0)), lo), hi)

    n_c = sum(1 for r in rows if any(f and f / peak >= b / bw(b) for f, b in r["ops"]))
    any_m = any(b / bw(b) > f / peak for r in rows for f, b in r["ops"] if b)
    curve = n_c >= 4
    sizes = [b for r in rows for f, b in r["ops"] if f and b]
    byte_range = [min(sizes), max(sizes)] if sizes else [1.0, 1.0]

    def unpack(params) -> tuple[float, dict]:
        eff = {"compute": clamp(params[1], "compute") if n_c else 1.0,
               "memory": clamp(params[2], "memory") if any_m else 1.0}
        if curve:
            eff.update(i_half=clamp(params[3], "i_half"), p=clamp(params[4], "p"), r=clamp(params[5], "r"),
                       bytes_range=byte_range)
        return clamp(params[0], "overhead_s"), eff

    # vectorised: one entry per op call; `row` says which case it belongs to
    f = np.array([op[0] for r in rows for op in r["ops"]], dtype=float)
    b = np.array([op[1] for r in rows for op in r["ops"]], dtype=float)
    row = np.array([i for i, r in enumerate(rows) for _ in r["ops"]])
    bwb = np.array([bw(x) if x else 1.0 for x in b])
    inten = np.where(b > 0, f / np.where(b > 0, b, 1.0), np.inf)
    known = np.array([r["known_s"] for r in rows])
    log_t = np.log([r["time_s"] for r in rows])

    def pred_all(params) -> np.ndarray:
        o, eff = unpack(params)
        if curve:  # roofline.compute_efficiency, vectorised
            knee = eff["i_half"] * (np.clip(b, *byte_range) / 1e6) ** eff["r"]
            x = np.maximum(inten, 1e-6) ** eff["p"]
            eta = np.where(np.isfinite(inten), eff["compute"] * x / (x + knee ** eff["p"]), eff["compute"])
        else:
            eta = eff["compute"]
        per_op = o + np.maximum(np.where(f > 0, f / (peak * eta), 0.0),
                                np.where(b > 0, b / (bwb * eff["memory"]), 0.0))
        return known + np.bincount(row, weights=per_op, minlength=len(rows))

    def loss(params):
        return float(np.sum((np.log(np.maximum(pred_all(params), 1e-9)) - log_t) ** 2))

    smallest = min(rows, key=lambda r: r["time_s"])
    o0 = max((smallest["time_s"] - smallest["known_s"]) / max(1, len(smallest["ops"])) * 0.8, 1e-7)
    starts = [(0.5, 0.5, 10.0, 1.0, 0.01), (1.0, 2.0, 1.0, 0.5, 0.3), (0.8, 1.0, 10.0, 1.0, 0.5)]
    best = min((minimize(loss, np.log([o0, e0, m0, ih, pp, rr]), method="Nelder-Mead",
                         options={"xatol": 1e-3, "fatol": 1e-7, "maxiter": 3000})
                for e0, m0, ih, pp, rr in starts), key=lambda res: res.fun)
    o, eff = unpack(best.x)
    return {"overhead_s": o, **eff, "rms_log_error": math.sqrt(best.fun / len(rows))}


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
