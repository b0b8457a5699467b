"""Rich renderables for a NAS search: the summary line, the Pareto front table, where the trials are.

Display only: every number comes from a NasResult (its to_dict is the JSON of `effml nas --json`).
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from effml.nas.result import NasResult
from effml.units import fmt_bytes

COLUMNS = ("trial", "architecture", "accuracy", "latency (ms)", "energy (mJ)", "SRAM int8", "flash int8", "MACs")


def budget_line(res: NasResult) -> str:
    b = res.budget
    limits = ", ".join(f"{k} {fmt_bytes(v, True)}" for k, v in (("sram", b.sram_bytes), ("flash", b.flash_bytes),
                                                                   ("memory", b.memory_bytes)) if v)
    return (f"{res.study_name}: {len(res.evaluated)} evaluated, {len(res.rejected)} rejected before training "
            f"(budget on {b.device}: {limits or 'none'}); hypervolume {res.hypervolume():.4f}")


def front_table(res: NasResult) -> Table:
    t = Table(title=f"Pareto front: proxy accuracy vs {res.objective} on {res.budget.device}")
    for col in COLUMNS:
        t.add_column(col, justify="left" if col == "architecture" else "right")
    for tr in res.front:
        c = tr.cost
        t.add_row(str(tr.number), tr.name, f"{tr.accuracy:.1%}", f"{c.latency_s * 1e3:.3g}",
                  f"{c.energy_j * 1e3:.3g}", fmt_bytes(c.sram_bytes, True), fmt_bytes(c.flash_bytes, True),
                  f"{c.macs:,}")
    return t


def render(res: NasResult) -> Group:
    parts: list = [Text(budget_line(res), style="bold")]
    if res.note:
        parts.append(Text(f"note: {res.note}"))
    parts.append(front_table(res))
    if res.best is not None:
        parts.append(Text(f"best accuracy: trial {res.best.number} ({res.best.name}) {res.best.accuracy:.1%}"))
    parts.append(Text(f"trials in {res.storage} (study {res.study_name}); study store: {res.config.store}"))
    return Group(*parts)
