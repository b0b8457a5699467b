"""Rich tables for compression reports (display only: every number comes from the report dict)."""

from __future__ import annotations

from effml.units import fmt_bytes, si


def _bytes(n) -> str:
    return "-" if n is None else fmt_bytes(n)


def _num(n) -> str:
    return "-" if n is None else si(n)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _ms(s) -> str:
    return "-" if s is None else f"{s * 1e3:.3g} ms"


def report_table(report: dict):
    """Before | after | ratio for size, parameters, MACs, FLOPs, accuracy, predicted and measured latency."""
    from rich.table import Table

    b, a = report["before"], report["after"]
    t = Table(title=f"{report['model']['name']}: {report['technique']}")
    for col in ("", "before", "after", "before/after"):
        t.add_column(col, justify="right" if col else "left")

    def ratio(x, y):
        return f"{x / y:.2f}x" if x and y else "-"

    t.add_row("stored size", _bytes(b["stored_bytes"]), _bytes(a["stored_bytes"]),
              ratio(b["stored_bytes"], a["stored_bytes"]))
    t.add_row("parameters", f"{b['params']:,}", f"{a['params']:,}", ratio(b["params"], a["params"]))
    t.add_row("non-zero parameters", f"{b['nonzero']:,}", f"{a['nonzero']:,}", ratio(b["nonzero"], a["nonzero"]))
    t.add_row("MACs", _num(b["macs"]), _num(a["macs"]), ratio(b["macs"], a["macs"]))
    t.add_row("FLOPs", _num(b["flops"]), _num(a["flops"]), ratio(b["flops"], a["flops"]))
    if b.get("accuracy") is not None or a.get("accuracy") is not None:
        drop = (b["accuracy"] - a["accuracy"]) * 100 if b.get("accuracy") is not None and a.get("accuracy") \
            is not None else None
        t.add_row("accuracy", _pct(b.get("accuracy")), _pct(a.get("accuracy")),
                  "-" if drop is None else f"{drop:+.2f} pt drop")
    sp = report.get("speed") or {}
    pred, meas = sp.get("predicted"), sp.get("measured")
    if pred:
        t.add_row(f"predicted latency ({pred['hw']})", _ms(pred["before_s"]), _ms(pred["after_s"]),
                  f"{pred['speedup']:.2f}x")
    if meas:
        t.add_row(f"measured latency (p50, {meas['threads']} threads)", _ms(meas["before_s"]), _ms(meas["after_s"]),
                  f"{meas['speedup']:.2f}x")
    return t


def notes_lines(report: dict) -> list[str]:
    out = list(report.get("notes") or [])
    for side in ("before", "after"):
        if report[side].get("note"):
            out.append(f"{side}: {report[side]['note']}")
    sp = report.get("speed") or {}
    if sp.get("note"):
        out.append(sp["note"])
    if (sp.get("predicted") or {}).get("note"):
        out.append(f"prediction: {sp['predicted']['note']}")
    for name, why in report.get("skipped") or []:
        out.append(f"skipped {name}: {why}")
    if report.get("out"):
        out.append(f"written to {report['out']}")
    return out
