"""The report's figures: the Pareto chart (labelled points, the frontier as a step line, points off the metric
axis pinned to its edge with their value, ONNX Runtime rows as a series of their own), per-layer cost, and
predicted-vs-measured latency per device that measured latency.

The metric axis is set by `metric_range` from the baseline and the bulk of the variants, so one broken variant
(21% accuracy among 88-91%, a perplexity of 1e4 among 12-20) does not squash the rest into a line.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from effml.extras import require
from effml.study.rows import Objective, baseline_row

LABEL_ALL = 25  # up to this many variants every point is labelled; above, the baseline and the frontier only


@dataclass(frozen=True)
class MetricRange:
    """The variants' values (plot units) within [lo, hi] are drawn where they are; the axis is [lo, hi] padded
    by 2 × pad, and a value outside [lo, hi] is drawn at lo − pad or hi + pad with its value in the label."""

    lo: float
    hi: float
    pad: float

    @property
    def axis(self) -> list[float]:
        return [self.lo - 2 * self.pad, self.hi + 2 * self.pad]

    def off(self, v: float) -> bool:
        return v < self.lo or v > self.hi

    def edge(self, v: float) -> float:
        return self.lo - self.pad if v < self.lo else self.hi + self.pad if v > self.hi else v


def metric_range(values: list[float], base: float, percent: bool) -> MetricRange:
    """The window around the baseline: half width max(4 × the 75th-percentile (nearest rank) distance of the
    values from the baseline, a floor of 5 pt for a % metric or 10% of |baseline| otherwise); [lo, hi] spans the
    baseline and the values inside it; pad is 5% of that span (5% of the half width when it is one point)."""
    d = sorted(abs(v - base) for v in values) or [0.0]
    q75 = d[math.ceil(0.75 * len(d)) - 1]
    floor = 5.0 if percent else (0.1 * abs(base) or d[-1] or 1.0)
    half = max(4 * q75, floor)
    inside = [base] + [v for v in values if abs(v - base) <= half]
    lo, hi = min(inside), max(inside)
    return MetricRange(lo, hi, 0.05 * (hi - lo) if hi > lo else 0.05 * half)


def pareto_data(rows: list[dict], axes, frontier: dict[str, list[str]], objective: Objective) -> dict:
    """Everything the Pareto chart draws, per cost axis (the page's axis switch restyles with the same numbers):
    x of the variants on the axis (in range), of the frontier (with y and labels), of the points off the metric
    axis, and of the ONNX Runtime points (measured latency only)."""
    pts = [r for r in rows if r.get("metric") is not None]
    base = baseline_row(rows)
    ys = [objective.plot(r["metric"]) for r in pts]
    center = objective.plot(base["metric"]) if base and base.get("metric") is not None else statistics.median(ys)
    yr = metric_range(ys, center, objective.percent)
    y = {r["key"]: objective.plot(r["metric"]) for r in pts}
    inside = [r for r in pts if not yr.off(y[r["key"]])]
    off = [r for r in pts if yr.off(y[r["key"]])]
    every = len(pts) <= LABEL_ALL
    ort = [(r, r["ort_beside_ms"], f"{r['name']} (ORT)") for r in pts if r.get("ort_beside_ms")]
    if base and base.get("ort_int8_speedup") and base.get("latency_ms"):  # ORT's own int8 of the baseline
        ort.append((base, base["latency_ms"] / base["ort_int8_speedup"], f"{base['name']} (ORT int8)"))
    by_key = {r["key"]: r for r in pts}
    per_axis = {}
    for a in axes:
        front = [by_key[k] for k in frontier[a.name] if k in by_key]
        latency = a.name == "latency_beside_ms"
        per_axis[a.name] = {
            "label": a.label, "x": [r.get(a.name) for r in inside], "ox": [r.get(a.name) for r in off],
            "fx": [r[a.name] for r in front], "fy": [yr.edge(y[r["key"]]) for r in front],
            "ft": ["" if every else r["name"] for r in front],
            "tx": [x if latency else None for _, x, _ in ort]}
    off_text = [f"{r['name']}: {objective.text(r['metric'])} {'▼' if y[r['key']] < yr.lo else '▲'} (off the axis)"
                for r in off]
    return {
        "range": yr, "axes": per_axis,
        "inside": {"y": [y[r["key"]] for r in inside], "names": [r["name"] for r in inside],
                   "text": [r["name"] if every or r is base else "" for r in inside],
                   "nas": [r["chain"] == "nas" for r in inside]},
        "off": {"y": [yr.edge(y[r["key"]]) for r in off], "names": [r["name"] for r in off], "text": off_text,
                "down": [y[r["key"]] < yr.lo for r in off]},
        "ort": {"y": [yr.edge(y[r["key"]]) for r, _, _ in ort], "names": [n for _, _, n in ort],
                "text": [n if every else "" for _, _, n in ort]},
    }


def pareto_figure(data: dict, objective: Objective, first: str):
    go = require("plotly.graph_objects", extra="report")

    ax, ins, off, ort = data["axes"][first], data["inside"], data["off"], data["ort"]
    hover = "%{customdata}<br>%{x:.4g}<br>%{y:.4g}<extra></extra>"
    fig = go.Figure([
        go.Scatter(x=ax["x"], y=ins["y"], mode="markers+text", name="variants", text=ins["text"],
                   customdata=ins["names"], textposition="top center", textfont={"size": 11},
                   marker={"size": 10, "symbol": ["triangle-up" if n else "circle" for n in ins["nas"]]},
                   hovertemplate=hover),
        go.Scatter(x=ax["fx"], y=ax["fy"], mode="lines+markers+text", name="Pareto frontier", text=ax["ft"],
                   textposition="bottom right", textfont={"size": 11}, line={"shape": "hv"},
                   marker={"symbol": "diamond", "size": 12}, hoverinfo="skip"),
        go.Scatter(x=ax["ox"], y=off["y"], mode="markers+text", name="off the axis (value in label)",
                   text=off["text"], customdata=off["names"], showlegend=bool(off["y"]),
                   textposition="middle right", textfont={"size": 11, "color": "#c0392b"},
                   marker={"size": 12, "color": "#c0392b",
                           "symbol": ["triangle-down" if d else "triangle-up" for d in off["down"]]},
                   hovertemplate="%{text}<extra></extra>"),
        go.Scatter(x=ax["tx"], y=ort["y"], mode="markers+text", name="ONNX Runtime", text=ort["text"],
                   customdata=ort["names"], showlegend=bool(ort["y"]), textposition="bottom center",
                   textfont={"size": 11}, marker={"size": 11, "symbol": "x", "color": "#8e44ad"},
                   hovertemplate=hover),
    ])
    fig.update_layout(title=f"{objective.name} vs cost: every variant, and the frontier", template="plotly_white",
                      xaxis={"type": "log", "title": {"text": ax["label"]}},
                      yaxis={"title": {"text": objective.label}, "range": data["range"].axis, "autorange": False},
                      height=520)
    return fig


def layer_figure(profile, title: str):
    go = require("plotly.graph_objects", extra="report")

    rows = profile.by_module()
    leaves = [n for n in rows if n and not any(o.startswith(n + ".") for o in rows)]
    leaves = [n for n in leaves if rows[n].flops or rows[n].bytes]
    fig = go.Figure([
        go.Bar(x=leaves, y=[rows[n].flops for n in leaves], name="FLOPs"),
        go.Bar(x=leaves, y=[rows[n].bytes for n in leaves], name="bytes moved", yaxis="y2", opacity=0.6),
    ])
    fig.update_layout(title=title, barmode="group", template="plotly_white", height=420,
                      yaxis={"title": {"text": "FLOPs"}},
                      yaxis2={"title": {"text": "bytes"}, "overlaying": "y", "side": "right"})
    return fig


def gpu_device(row: dict, devices: list[str]) -> str | None:
    """The catalog device (of those predicted) that is the GPU a row was measured on: its first name part is a
    word of the GPU's name ('h100-sxm' for 'NVIDIA H100 80GB HBM3')."""
    words = set(re.split(r"[^a-z0-9]+", str(row.get("measured_on", "")).lower()))
    return next((d for d in sorted(devices) if d.split("-")[0].lower() in words), None)


def _local(row, devices):
    return None if "measured_on" in row else row.get("local_pred_ms")


def _gpu(row, devices):
    dev = gpu_device(row, devices) if "measured_on" in row else None
    return row.get(f"pred_ms@{dev}") if dev else None


# div id, what was measured, measured row key, predicted (row, devices) -> ms
MEASURED_SERIES = (
    ("predicted", "PyTorch on this machine's CPU vs the 'local' roofline", "latency_ms", _local),
    ("predicted-cuda", "PyTorch on the GPU vs its catalog roofline ({dev})", "latency_ms", _gpu),
    ("predicted-ort", "ONNX Runtime on this machine's CPU vs the 'local' roofline", "ort_latency_ms", _local),
)


def predicted_vs_measured(rows: list[dict], devices: list[str]) -> list[tuple[str, object]]:
    """(div id, figure) per device that measured latency and has a prediction for it; each title gives the
    median |predicted / measured − 1| over its points."""
    go = require("plotly.graph_objects", extra="report")

    out = []
    for div, what, meas_key, pred_of in MEASURED_SERIES:
        pts = [(r["name"], pred_of(r, devices), r[meas_key]) for r in rows if r.get(meas_key)]
        pts = [p for p in pts if p[1]]
        if not pts:
            continue
        gpus = sorted({gpu_device(r, devices) for r in rows if "measured_on" in r} - {None})
        err = statistics.median(abs(p / m - 1) for _, p, m in pts)
        vals = [v for _, p, m in pts for v in (p, m)]
        lim = [min(vals) / 1.5, max(vals) * 1.5]
        fig = go.Figure([
            go.Scatter(x=[p for _, p, _ in pts], y=[m for _, _, m in pts], mode="markers+text", name="variants",
                       text=[n if len(pts) <= LABEL_ALL else "" for n, _, _ in pts], textposition="top center",
                       customdata=[n for n, _, _ in pts],
                       hovertemplate="%{customdata}<br>predicted %{x:.3g} ms<br>measured %{y:.3g} ms<extra></extra>"),
            go.Scatter(x=lim, y=lim, mode="lines", name="measured = predicted", line={"dash": "dot"}),
        ])
        fig.update_layout(title=f"{what.format(dev=', '.join(gpus))}: median |predicted/measured − 1| = "
                                f"{err:.0%} over {len(pts)} variant{'s' if len(pts) != 1 else ''}", template="plotly_white", height=420,
                          xaxis={"type": "log", "title": {"text": "predicted (ms)"}},
                          yaxis={"type": "log", "title": {"text": "measured p50 (ms)"}})
        out.append((div, fig))
    return out
