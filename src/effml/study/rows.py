"""Flatten study runs into table rows, name the study's objective, and define the cost axes the frontier uses.

The objective is the metric the study optimises, with its direction: the default study's accuracy (a fraction,
shown in %), or what a user study stored (`metrics.objective`, `metrics.directions`, the value in
`metrics.metrics`). Measured latency on the frontier is the baseline's p50 ÷ the speedup measured beside it in
one window of alternating rounds, not each variant's own p50 timed minutes apart: a variant timed 1.00× the
baseline stays at the baseline's latency even when its own p50 happened to read a little lower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from effml.errors import ConfigError
from effml.study.pareto import pareto
from effml.study.store import Run


@dataclass(frozen=True)
class Objective:
    name: str  # the metric, e.g. "accuracy", "perplexity", "f1"
    higher_is_better: bool
    percent: bool = False  # a fraction shown in %

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def label(self) -> str:  # "accuracy (%, higher is better)", "perplexity (lower is better)"
        return f"{self.name} ({'%, ' if self.percent else ''}{self.direction})"

    def plot(self, v: float) -> float:
        return 100 * v if self.percent else v

    def text(self, v: float) -> str:
        return f"{100 * v:.1f}%" if self.percent else f"{v:.4g}"

    def loss(self, v: float, base: float) -> float:
        """How much worse `v` is than `base` (negative: better), in the metric's own units."""
        return base - v if self.higher_is_better else v - base


ACCURACY = Objective("accuracy", True, percent=True)


@dataclass(frozen=True)
class CostAxis:
    name: str  # row key
    label: str  # axis title
    log: bool = True


BASE_COSTS = (
    CostAxis("latency_beside_ms", "latency, measured beside the baseline (ms: baseline p50 ÷ speedup)"),
    CostAxis("size_bytes", "model size (bytes, as stored)"),
    CostAxis("flops", "FLOPs per inference (counted)"),
)
DEVICE_COSTS: tuple[tuple[str, str, Callable[[dict], float | None]], ...] = (
    ("pred_ms", "predicted latency on {dev} (ms)", lambda p: p.get("latency_s") and p["latency_s"] * 1e3),
    ("energy_mj", "predicted energy on {dev} (mJ)", lambda p: p.get("energy_j") and p["energy_j"] * 1e3),
    ("usd_1m", "predicted $ per 1M inferences on {dev}", lambda p: p.get("usd_per_1m")),
)
# ONNX Runtime measurements (effml.study.backends): row key <- metric, scale; a row gets them only when stored
ORT_FIELDS = (("ort_latency_ms", "ort_latency_p50_s", 1e3), ("ort_speedup", "ort_speedup_measured", 1.0),
              ("ort_cosine", "ort_cosine", 1.0), ("ort_error", "ort_error", None),
              ("ort_int8_speedup", "ort_int8_speedup_measured", 1.0), ("ort_note", "ort_note", None))


def cost_axes(devices: list[str]) -> list[CostAxis]:
    axes = list(BASE_COSTS)
    for dev in devices:
        for key, label, _ in DEVICE_COSTS:
            axes.append(CostAxis(f"{key}@{dev}", label.format(dev=dev)))
    return axes


def flatten(run: Run, devices: list[str]) -> dict:
    """One row: identity, accuracy, counted and measured costs, and per-device predictions."""
    m = run.metrics
    local = m.get("local_pred_s") or run.predictions.get("local", {}).get("latency_s")
    row = {
        "key": run.key, "name": run.name, "chain": " → ".join(step["technique"] for step in run.chain) or "baseline",
        "accuracy": m.get("accuracy"), "params": m.get("params"), "size_bytes": m.get("model_bytes"),
        "flops": m.get("flops"), "macs": m.get("macs"),
        "latency_ms": m["latency_p50_s"] * 1e3 if m.get("latency_p50_s") else None,
        "latency_p90_ms": m["latency_p90_s"] * 1e3 if m.get("latency_p90_s") else None,
        "throughput": m.get("throughput"), "peak_mem_bytes": m.get("peak_mem_bytes"),
        "speedup": m.get("speedup_measured"),
        "local_pred_ms": local * 1e3 if local else None,
    }
    if m.get("device"):  # measured on a GPU (effml.study.on_device.recorded): which one
        row["measured_on"] = m.get("device_name") or m["device"]
    for key, metric, scale in ORT_FIELDS:
        if metric in m:
            row[key] = m[metric] * scale if scale is not None and m[metric] is not None else m[metric]
    for dev in devices:
        pred = run.predictions.get(dev, {})
        for key, _, get in DEVICE_COSTS:
            row[f"{key}@{dev}"] = get(pred) if pred else None
        row[f"fits@{dev}"] = pred.get("fits")
    return row


def metric_value(run: Run, name: str) -> float | None:
    """The run's value of metric `name`: a user study's `metrics.metrics[name]`, else `metrics[name]`."""
    inner = run.metrics.get("metrics")
    v = inner.get(name) if isinstance(inner, dict) and name in inner else run.metrics.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"run {run.name!r} ({run.key!r}): metric {name!r} is {v!r}, not a finite number; fix or "
                          "delete that row")
    return float(v)


def objective_of(runs: list[Run], name: str | None = None) -> Objective:
    """The study's objective: `name` (default: the one the last stored user-study run names) with the direction
    the runs stored for it; the default study's accuracy when no run names an objective."""
    stored = [r for r in runs if isinstance(r.metrics.get("objective"), str)]
    if not stored:
        if name not in (None, "accuracy"):
            raise ConfigError(f"objective {name!r}: these runs are of the default study, which measures accuracy")
        return ACCURACY
    name = name or stored[-1].metrics["objective"]
    dirs = [r.metrics["directions"][name] for r in stored if isinstance(r.metrics.get("directions"), dict)
            and name in r.metrics["directions"]]
    if not dirs or not all(isinstance(d, bool) for d in dirs) or len(set(dirs)) > 1:
        raise ConfigError(f"objective {name!r}: the stored runs give no single direction for it "
                          f"(metrics.directions: {sorted(set(map(repr, dirs))) or 'none'})")
    values = [v for r in runs if (v := metric_value(r, name)) is not None]
    return Objective(name, dirs[0], percent=name.lower() == "accuracy" and all(0 <= v <= 1 for v in values))


def report_rows(runs: list[Run], devices: list[str], objective: Objective = ACCURACY) -> list[dict]:
    """flatten() rows plus what the report computes with: status, error, the objective's value ('metric'),
    and the measured latency on the frontier ('latency_beside_ms', 'ort_beside_ms')."""
    rows = []
    for run in runs:
        row = flatten(run, devices)
        row["status"] = run.metrics.get("status", "ok")
        row["error"] = run.metrics.get("error")
        row["metric"] = metric_value(run, objective.name) if row["status"] == "ok" else None
        rows.append(row)
    base = baseline_row(rows)
    for row in rows:
        row["latency_beside_ms"] = beside_ms(row, base)
        ratio = row.get("ort_speedup")
        row["ort_beside_ms"] = base["latency_ms"] / ratio if ratio and base and base.get("latency_ms") else None
    return rows


def baseline_row(rows: list[dict]) -> dict | None:
    return next((r for r in rows if r["chain"] == "baseline" and r.get("status", "ok") == "ok"), None)


def beside_ms(row: dict, base: dict | None) -> float | None:
    """Baseline p50 ÷ the speedup measured beside it; the row's own p50 where no ratio was measured (the
    baseline itself, or a row without a baseline)."""
    if row.get("latency_ms") is None:
        return None
    if row is base or base is None or not base.get("latency_ms") or not row.get("speedup"):
        return row["latency_ms"]
    return base["latency_ms"] / row["speedup"]


def frontier_keys(rows: list[dict], cost: str, objective: Objective = ACCURACY) -> list[str]:
    """Keys of the rows on the (objective, cost) frontier, by cost. A variant that only ties the baseline (same
    value, same cost) is not on it: at equal numbers the untouched model is the one to keep."""
    pts = [{"key": r["key"], "m": r["metric"], "c": r[cost]} for r in rows
           if r.get("metric") is not None and r.get(cost) is not None]
    if not pts:
        return []
    keys = pareto(pts, ("m", "c"), maximize=frozenset({"m"} if objective.higher_is_better else ())).frontier
    cost_of = {p["key"]: p["c"] for p in pts}
    keys.sort(key=lambda k: (cost_of[k], k))  # by cost (pareto orders by its first minimised objective)
    base = baseline_row(rows)
    if base is None or base["key"] not in keys:
        return keys
    same = {p["key"] for p in pts if (p["m"], p["c"]) == (base["metric"], base[cost]) and p["key"] != base["key"]}
    return [k for k in keys if k not in same]


def best_within(rows: list[dict], cost: str, objective: Objective = ACCURACY, within: float = 1.0) -> dict | None:
    """The cheapest row (by `cost`) no worse than the baseline by `within` pt (a % metric) or `within` % of the
    baseline's value (any other metric); None without a baseline or a candidate."""
    base = baseline_row(rows)
    if base is None or base.get("metric") is None:
        return None
    tol = within / 100 if objective.percent else within / 100 * abs(base["metric"])
    cands = [r for r in rows if r is not base and r.get(cost) is not None and r.get("metric") is not None
             and objective.loss(r["metric"], base["metric"]) <= tol]
    return min(cands, key=lambda r: r[cost]) if cands else None


def _times(ratio: float, better: str, worse: str, invert: bool = True) -> str:
    """A baseline/variant ratio in honest words: `better` at >= 1 (2.00× faster); below 1 `worse`, with the
    inverse ratio when `invert` (0.8 -> 1.2× larger), else the ratio itself (0.96× the baseline's speed)."""
    if ratio >= 1:
        return better.format(ratio)
    return worse.format(1 / ratio if invert else ratio)


def headline(rows: list[dict], objective: Objective = ACCURACY, within: float = 1.0) -> list[str]:
    """Sentences like 'X is 7.9× smaller and 2.1× faster at −0.3 pt' for the fastest and smallest variants within
    `within` pt of the baseline (a % metric) or `within` % of its value (any other metric)."""
    base = baseline_row(rows)
    if base is None or base.get("metric") is None or not base.get("latency_ms") or not base.get("size_bytes"):
        return []
    out = []
    for cost, word in (("latency_beside_ms", "fastest"), ("size_bytes", "smallest")):
        best = best_within(rows, cost, objective, within)
        if best is None or not best.get("size_bytes") or not best.get("latency_beside_ms"):
            continue
        size = _times(base["size_bytes"] / best["size_bytes"], "{:.1f}× smaller", "{:.1f}× larger")
        # = the speedup measured beside the baseline
        speed = _times(base["latency_beside_ms"] / best["latency_beside_ms"], "{:.2f}× faster (measured)",
                       "{:.2f}× the baseline's speed (measured: slower)", invert=False)
        v, b = best["metric"], base["metric"]
        if objective.percent:
            out.append(f"{best['name']} is {size} and {speed} at "
                       f"{100 * (v - b):+.1f} pt {objective.name} ({100 * v:.1f}% vs {100 * b:.1f}%): the {word} "
                       f"within {within:g} pt.")
        else:
            rel = f" ({(v - b) / abs(b):+.1%})" if b else ""
            out.append(f"{best['name']} is {size} and {speed} at "
                       f"{objective.name} {v:.4g} vs {b:.4g}{rel}, {objective.direction}: the {word} within "
                       f"{within:g}% of the baseline.")
    return list(dict.fromkeys(out))
