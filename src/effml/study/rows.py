"""Flatten study runs into table rows and define the cost axes the frontier and report can use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from effml.study.pareto import pareto
from effml.study.store import Run


@dataclass(frozen=True)
class CostAxis:
    name: str  # row key
    label: str  # axis title
    log: bool = True


BASE_COSTS = (
    CostAxis("latency_ms", "latency, measured on this machine (ms, p50)"),
    CostAxis("size_bytes", "model size (bytes, as stored)"),
    CostAxis("flops", "FLOPs per inference (counted)"),
)
DEVICE_COSTS: tuple[tuple[str, str, Callable[[dict], float | None]], ...] = (
    ("pred_ms", "predicted latency on {dev} (ms)", lambda p: p.get("latency_s") and p["latency_s"] * 1e3),
    ("energy_mj", "predicted energy on {dev} (mJ)", lambda p: p.get("energy_j") and p["energy_j"] * 1e3),
    ("usd_1m", "predicted $ per 1M inferences on {dev}", lambda p: p.get("usd_per_1m")),
)


def cost_axes(devices: list[str]) -> list[CostAxis]:
    axes = list(BASE_COSTS)
    for dev in devices:
        for key, label, _ in DEVICE_COSTS:
            axes.append(CostAxis(f"{key}@{dev}", label.format(dev=dev)))
    return axes


def flatten(run: Run, devices: list[str]) -> dict:
    """One row: identity, accuracy, counted and measured costs, and per-device predictions."""
    m = run.metrics
    row = {
        "key": run.key, "name": run.name, "chain": " → ".join(step["technique"] for step in run.chain) or "baseline",
        "accuracy": m.get("accuracy"), "params": m.get("params"), "size_bytes": m.get("model_bytes"),
        "flops": m.get("flops"), "macs": m.get("macs"),
        "latency_ms": m["latency_p50_s"] * 1e3 if m.get("latency_p50_s") else None,
        "latency_p90_ms": m["latency_p90_s"] * 1e3 if m.get("latency_p90_s") else None,
        "throughput": m.get("throughput"), "peak_mem_bytes": m.get("peak_mem_bytes"),
        "speedup": m.get("speedup_measured"),
        "local_pred_ms": m["local_pred_s"] * 1e3 if m.get("local_pred_s") else None,
    }
    for dev in devices:
        pred = run.predictions.get(dev, {})
        for key, _, get in DEVICE_COSTS:
            row[f"{key}@{dev}"] = get(pred) if pred else None
        row[f"fits@{dev}"] = pred.get("fits")
    return row


def frontier_keys(rows: list[dict], cost: str) -> list[str]:
    pts = [r for r in rows if r.get("accuracy") is not None and r.get(cost) is not None]
    return pareto(pts, ("accuracy", cost)).frontier if len(pts) else []


def headline(rows: list[dict], max_drop_pt: float = 1.0) -> list[str]:
    """Sentences like 'X is 7.9× smaller and 2.1× faster at −0.3 pt' for the best frontier variants."""
    base = next((r for r in rows if r["chain"] == "baseline"), None)
    if base is None or not base.get("latency_ms") or not base.get("size_bytes"):
        return []
    out = []
    for cost, word in (("latency_ms", "fastest"), ("size_bytes", "smallest")):
        best = None
        for r in rows:
            if r is base or r.get(cost) is None or r.get("accuracy") is None:
                continue
            drop = 100 * (base["accuracy"] - r["accuracy"])
            if drop <= max_drop_pt and (best is None or _cost(r, cost, base) < _cost(best, cost, base)):
                best = r
        if best is not None:
            size = base["size_bytes"] / best["size_bytes"]
            # the speedup measured beside the baseline in one window (latency ratio when not recorded)
            speed = best.get("speedup") or base["latency_ms"] / best["latency_ms"]
            delta = 100 * (best["accuracy"] - base["accuracy"])
            out.append(f"{best['name']} is {size:.1f}× smaller and {speed:.2f}× faster (measured) "
                       f"at {delta:+.1f} pt accuracy ({100 * best['accuracy']:.1f}% vs "
                       f"{100 * base['accuracy']:.1f}%): the {word} within {max_drop_pt:g} pt.")
    return list(dict.fromkeys(out))


def _cost(row: dict, cost: str, base: dict) -> float:
    """Latency relative to the baseline as measured beside it; other costs as they are."""
    if cost == "latency_ms" and row.get("speedup"):
        return base["latency_ms"] / row["speedup"]
    return row[cost]
