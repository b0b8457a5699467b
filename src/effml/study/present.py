"""Rich table of a study's variants for the terminal (the report has the interactive version)."""

from __future__ import annotations

from rich.table import Table

from effml.study.store import Run
from effml.units import fmt_bytes, si


def runs_table(runs: list[Run]) -> Table:
    base = next((r for r in runs if not r.chain), None)
    t = Table(title="study variants (latency measured on this machine)")
    for col in ("variant", "accuracy", "Δ pt", "size", "×smaller", "FLOPs", "p50 ms", "×faster*"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in runs:
        m = r.metrics
        b = base.metrics if base else m
        t.add_row(r.name, f"{100 * m['accuracy']:.2f}%", f"{100 * (m['accuracy'] - b['accuracy']):+.2f}",
                  fmt_bytes(m["model_bytes"]), f"{b['model_bytes'] / m['model_bytes']:.1f}", si(m["flops"]),
                  f"{1e3 * m['latency_p50_s']:.2f}", f"{m.get('speedup_measured') or 1.0:.2f}")
    t.caption = "* speedup measured beside the baseline, in alternating rounds on the same batch"
    return t


def prediction_check(runs: list[Run], max_ratio: float = 3.0) -> str | None:
    """A sentence when the `local` roofline prediction of the baseline is more than `max_ratio` times off its
    latency measured here (a stale or busy calibration, or a model the cost model does not fit), else None."""
    base = next((r for r in runs if not r.chain), None)
    if base is None:
        return None
    pred, meas = base.metrics.get("local_pred_s"), base.metrics.get("latency_p50_s")
    if not pred or not meas:
        return None
    ratio = pred / meas
    if 1 / max_ratio <= ratio <= max_ratio:
        return None
    return (f"the local prediction of the baseline is {ratio:.1f}x its measured latency ({1e3 * pred:.1f} vs "
            f"{1e3 * meas:.1f} ms): the predicted columns for this machine are not to be trusted; recalibrate "
            "with `effml calibrate` on a quiet machine")
