"""Rich tables for the hardware commands: the catalog, predictions side by side, top ops, bench rows.

Display only: every number comes from a Device, Prediction or BenchResult (their to_dict is the JSON).
"""

from __future__ import annotations

from effml.units import fmt_bytes, si


def fmt_time(s: float | None) -> str:
    if s is None:
        return "n/a"
    for scale, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "us")):
        if abs(s) >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _usd(x: float | None) -> str:
    return "n/a (no $/h)" if x is None else f"${x:,.4g}"


def catalog_table(devices):
    from rich.table import Table

    t = Table(title="effml hardware catalog (dense peaks; `effml hw show NAME` for every source)")
    for col in ("device", "name", "kind", "dense peak FLOP/s", "bandwidth", "memory", "TDP", "price"):
        t.add_column(col, justify="left" if col in ("device", "name", "kind", "dense peak FLOP/s") else "right")
    for d in devices:
        peaks = ", ".join(f"{dt} {si(f.value, '')}" for dt, f in d.peak.items())
        if d.kind == "mcu":
            mem = f"{fmt_bytes(d.sram_bytes.value, binary=True)} SRAM / {fmt_bytes(d.flash_bytes.value, binary=True)} flash"
        else:
            mem = fmt_bytes(d.memory_bytes.value)
        price = f"${d.price_per_hour:g}/h" if d.price_per_hour is not None else (
            f"${d.unit_price_usd:g} unit" if d.unit_price_usd is not None else "n/a")
        t.add_row(d.key, d.name, d.kind, peaks, f"{si(d.bandwidth, 'B/s')}", mem,
                  f"{d.tdp:g} W" if d.tdp is not None else "n/a", price)
    return t


def device_table(d):
    from rich.table import Table

    t = Table(title=f"{d.name} ({d.key}): every figure and its source")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("source")
    for path, fig in d.figures():
        v = fig.value
        shown = f"{v:.4g}" if isinstance(v, (int, float)) else (f"{len(v)} points" if isinstance(v, list) else str(v))
        if isinstance(v, dict) and "model" in v:  # a kernel latency model: its size, not its trees
            shown = f"{v['n']} samples, {len(v['model']['trees'])} trees"
        t.add_row(path, shown, fig.source)
    return t


def prediction_table(preds: dict, title: str):
    """Devices as columns, metrics as rows."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("")
    for p in preds.values():
        t.add_column(p.device, justify="right")
    rows = [
        ("dtype", lambda p: p.dtype),
        ("time per step", lambda p: fmt_time(p.time_s)),
        ("time per inference", lambda p: fmt_time(p.time_s / p.batch)),
        ("throughput", lambda p: f"{si(p.batch / p.time_s, 'inf/s')}" if p.time_s else "n/a"),
        ("bound", lambda p: p.bound),
        ("  compute-bound ops", lambda p: fmt_time(p.compute_s)),
        ("  memory-bound ops", lambda p: fmt_time(p.memory_s)),
        ("  per-op overhead", lambda p: fmt_time(p.overhead_s)),
        ("intensity (ridge)", lambda p: f"{p.intensity:.3g} FLOP/B ({p.ridge_point:.3g})"),
        ("energy compute", lambda p: f"{si(p.energy.compute, 'J')}"),
        ("energy memory", lambda p: f"{si(p.energy.memory, 'J')}"),
        ("energy per inference", lambda p: f"{si(p.energy.total / p.batch, 'J')}"),
        ("avg power", lambda p: f"{p.energy.total / p.time_s:.3g} W" if p.time_s else "n/a"),
        ("energy scale vs 45 nm", lambda p: f"{p.energy_scale.factor:.3g}"),
        ("$ per 1M inferences", lambda p: _usd(p.usd_per_1m)),
        ("fits", lambda p: "yes: " + p.fit.message if p.fits else "[red]NO[/red]: " + p.fit.message),
    ]
    if any(p.fit.weights_note for p in preds.values()):
        rows.append(("weights stored as", lambda p: p.fit.weights_note or "-"))
    for label, fn in rows:
        t.add_row(label, *(fn(p) for p in preds.values()))
    return t


def top_ops_table(pred, n: int = 10):
    from rich.table import Table

    t = Table(title=f"top {n} op calls by predicted time on {pred.device}")
    for col in ("#", "op", "module", "FLOPs", "bytes", "FLOP/B", "time", "bound"):
        t.add_column(col, justify="right" if col not in ("op", "module") else "left")
    for o in sorted(pred.ops, key=lambda o: -o.cost.time_s)[:n]:
        t.add_row(str(o.index), o.op, o.module or "(root)", si(o.flops), fmt_bytes(o.bytes), f"{o.intensity:.3g}",
                  fmt_time(o.cost.time_s), o.cost.bound)
    return t


def bench_table(res):
    from rich.table import Table

    t = Table(title=f"{res.name}: measured on this CPU vs predicted on {res.hw or 'nothing (not calibrated)'}")
    for col in ("batch", "p50", "p90", "p99", "runs", "stop", "throughput", "peak RSS +", "predicted", "error"):
        t.add_column(col, justify="right")
    for m in res.rows:
        pred = m.prediction.time_s if m.prediction else None
        err = m.error_pct
        t.add_row(str(m.batch), fmt_time(m.p50), fmt_time(m.p90), fmt_time(m.p99), str(len(m.times_s)), m.stop,
                  si(m.throughput_per_s, "inf/s"), fmt_bytes(m.memory.rss_delta_bytes) if m.memory else "n/a",
                  fmt_time(pred), f"{err:+.0f}%" if err is not None else "n/a")
    return t
