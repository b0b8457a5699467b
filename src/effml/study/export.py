"""A study for teams: every variant's row as CSV and JSON (beside the HTML report), and two studies side by side.

    rows = variant_rows(store, "default")              # the report's rows: accuracy, size, FLOPs, latency, ...
    write_rows(rows, "report.html")                    # -> report.csv, report.json beside it
    cmp = compare_stores("a.db", "b.db", "default")    # variants joined by name: B's latency / A's, both accuracies

Rows are the report's own (study.rows.flatten over the study's latest runs), so the spreadsheet and the HTML
never disagree. Two studies are joined by variant name ("baseline", "prune-fine-80%+kmeans-4b", ...): keys carry a
fingerprint of each machine's settings, names do not. A variant in only one study is kept with the other side empty.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from effml.errors import ConfigError

# the columns of the side-by-side comparison: (row key, label); A's and B's value of each, then B / A
COMPARED = (("accuracy", "accuracy"), ("latency_ms", "latency ms (p50, measured)"), ("size_bytes", "size bytes"),
            ("flops", "FLOPs"), ("peak_mem_bytes", "peak memory bytes"))


def variant_rows(store, study: str, devices: list[str] | None = None) -> list[dict]:
    """One flat dict per variant of the study's latest runs (the rows of the HTML report)."""
    from effml.study.build import latest_runs
    from effml.study.rows import flatten

    runs = latest_runs(store, study)
    devices = devices or sorted({d for r in runs for d in r.predictions})
    return [flatten(r, devices) | {"machine": _machine(r.machine)} for r in runs]


def _machine(m: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in m.items())


def export_paths(html_path: str | Path) -> tuple[Path, Path]:
    """report.html -> (report.csv, report.json)."""
    p = Path(html_path)
    return p.with_suffix(".csv"), p.with_suffix(".json")


def write_rows(rows: list[dict], html_path: str | Path, study: str = "") -> tuple[Path, Path]:
    """Write the rows as CSV (one column per key, union of all rows' keys in first-seen order) and as JSON
    ({"study", "rows"}) beside the HTML report; return both paths."""
    csv_path, json_path = export_paths(html_path)
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
    json_path.write_text(json.dumps({"study": study, "rows": rows}, indent=2, allow_nan=False) + "\n",
                         encoding="utf-8")
    return csv_path, json_path


@dataclass
class StudyComparison:
    """Two studies' variants joined by name (A = first store, B = second)."""

    study: str
    a: str  # store paths
    b: str
    machines: tuple[str, str]
    rows: list[dict] = field(default_factory=list)  # name, <key> a, <key> b, <key> b/a for each compared key

    def to_dict(self) -> dict:
        return {"study": self.study, "a": self.a, "b": self.b, "machine_a": self.machines[0],
                "machine_b": self.machines[1], "rows": self.rows}


def compare_rows(rows_a: list[dict], rows_b: list[dict]) -> list[dict]:
    """Join by variant name, A's order first then B's extra variants; b/a ratios where both sides are > 0."""
    by_a, by_b = {r["name"]: r for r in rows_a}, {r["name"]: r for r in rows_b}
    names = list(by_a) + [n for n in by_b if n not in by_a]
    out = []
    for n in names:
        ra, rb = by_a.get(n, {}), by_b.get(n, {})
        row = {"name": n, "in": "both" if ra and rb else ("a" if ra else "b")}
        for key, _ in COMPARED:
            va, vb = ra.get(key), rb.get(key)
            row[f"{key} a"], row[f"{key} b"] = va, vb
            row[f"{key} b/a"] = vb / va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) \
                and va > 0 else None
        out.append(row)
    return out


def compare_stores(path_a: str | Path, path_b: str | Path, study: str = "default") -> StudyComparison:
    """Open both stores read-only-ish (no creation) and compare their latest runs of `study`."""
    from effml.study.store import Store

    if Path(path_a).resolve() == Path(path_b).resolve():
        raise ConfigError(f"--compare needs two different stores, got {str(path_a)!r} twice")
    sides = []
    for p in (path_a, path_b):
        with Store(p, create=False) as store:
            rows = variant_rows(store, study)
        sides.append(rows)
    machine = tuple(next((r["machine"] for r in rows if r.get("machine")), "") for rows in sides)
    return StudyComparison(study, str(path_a), str(path_b), machine, compare_rows(*sides))


__all__ = ["COMPARED", "StudyComparison", "compare_rows", "compare_stores", "export_paths", "variant_rows",
           "write_rows"]


def compare_table(cmp: StudyComparison):
    """A rich Table of the comparison (the CLI prints it): accuracy, latency and size of A and B; --json has
    every compared column."""
    from rich.markup import escape  # store strings and paths are text, not rich markup ("[/]" would raise)
    from rich.table import Table

    t = Table(title=escape(f"study {cmp.study!r}: A = {cmp.a} ({cmp.machines[0] or '?'}), "
                           f"B = {cmp.b} ({cmp.machines[1] or '?'})"))
    cols = (("accuracy", "acc", False), ("latency_ms", "ms p50", True), ("size_bytes", "bytes", True))
    t.add_column("variant")
    for _, label, ratio in cols:
        for side in ("A", "B") + (("B/A",) if ratio else ()):
            t.add_column(f"{label} {side}", justify="right")
    for r in cmp.rows:
        cells = [_fmt(r[f"{key} {s}"]) for key, _, ratio in cols for s in ("a", "b") + (("b/a",) if ratio else ())]
        t.add_row(escape(r["name"] + ("" if r["in"] == "both" else f" (only {r['in'].upper()})")), *cells)
    return t


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
