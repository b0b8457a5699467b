"""Rich tables for compression reports (display only: every number comes from the CompressionReport)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from effml.units import fmt_bytes, si

if TYPE_CHECKING:
    from effml.compress.workflow import CompressionReport


def _bytes(n) -> str:
    return "-" if n is None else fmt_bytes(n)


def _num(n) -> str:
    return "-" if n is None else si(n)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _ms(s) -> str:
    return "-" if s is None else f"{s * 1e3:.3g} ms"


def report_table(report: CompressionReport, model_name: str):
    """Before | after | ratio for size, parameters, MACs, FLOPs, accuracy, predicted and measured latency."""
    from rich.table import Table

    t = Table(title=f"{model_name}: {report.technique}")
    for col in ("", "before", "after", "before/after"):
        t.add_column(col, justify="right" if col else "left")

    def ratio(x, y):
        return f"{x / y:.2f}x" if x and y else "-"

    b, a = report.before, report.after
    if b is not None and a is not None:
        t.add_row("stored size", _bytes(b.stored_bytes), _bytes(a.stored_bytes), ratio(b.stored_bytes, a.stored_bytes))
        t.add_row("parameters", f"{b.params:,}", f"{a.params:,}", ratio(b.params, a.params))
        t.add_row("non-zero parameters", f"{b.nonzero:,}", f"{a.nonzero:,}", ratio(b.nonzero, a.nonzero))
        t.add_row("MACs", _num(b.macs), _num(a.macs), ratio(b.macs, a.macs))
        t.add_row("FLOPs", _num(b.flops), _num(a.flops), ratio(b.flops, a.flops))
        if b.accuracy is not None or a.accuracy is not None:
            drop = (b.accuracy - a.accuracy) * 100 if b.accuracy is not None and a.accuracy is not None else None
            t.add_row("accuracy", _pct(b.accuracy), _pct(a.accuracy), "-" if drop is None else f"{drop:+.2f} pt drop")
    sp = report.speed
    pred, meas = (sp.predicted, sp.measured) if sp is not None else (None, None)
    if pred:
        t.add_row(f"predicted latency ({pred.hw})", _ms(pred.before_s), _ms(pred.after_s), f"{pred.speedup:.2f}x")
    if meas:
        where = f"{meas.device_name}, CUDA events" if meas.device_name else f"{meas.threads} threads"
        t.add_row(f"measured latency (p50, {where})", _ms(meas.before_s), _ms(meas.after_s),
                  f"{meas.speedup:.2f}x")
    return t


def notes_lines(report: CompressionReport, notes: Sequence[str] = (), out: str | None = None) -> list[str]:
    """The report's notes, the caller's `notes`, why a side was not counted or predicted, skipped layers, where
    the model was written."""
    lines = list(report.notes) + list(notes)
    for side, facts in (("before", report.before), ("after", report.after)):
        if facts is not None and facts.note:
            lines.append(f"{side}: {facts.note}")
    sp = report.speed
    if sp is not None and sp.note:
        lines.append(sp.note)
    if sp is not None and sp.predicted is not None and sp.predicted.note:
        lines.append(f"prediction: {sp.predicted.note}")
    for name, why in report.skipped:
        lines.append(f"skipped {name}: {why}")
    if out:
        lines.append(f"written to {out}")
    return lines
