"""The study report: one self-contained HTML file (plotly.js inlined, opens offline).

Sections: headline, Pareto scatter of the study's objective (accuracy, or a user study's metric with its
direction) against a cost-axis switch (latency measured beside the baseline, size, FLOPs, and predicted latency /
energy / $ per catalog device), a table sortable by every column, the failed and skipped variants with their
reasons, per-layer cost of the best variant, its roofline on a device, and predicted-vs-measured latency per
device that measured it. Built from the store alone, so `effml report --store runs.db` rebuilds it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from effml.study.figures import layer_figure, pareto_data, pareto_figure, predicted_vs_measured
from effml.study.rows import Objective, baseline_row, cost_axes, frontier_keys, headline, objective_of, report_rows
from effml.study.store import Run

# (row key, header); "metric" is the study's objective, headed by its name and direction
TABLE_COLUMNS = [
    ("name", "variant"), ("chain", "techniques"), ("metric", None), ("params", "params"),
    ("size_bytes", "size (B)"), ("flops", "FLOPs"), ("latency_ms", "latency p50 (ms)"),
    ("latency_p90_ms", "p90 (ms)"), ("speedup", "× baseline speed (beside it; < 1: slower)"),
    ("local_pred_ms", "predicted here (ms)"), ("throughput", "samples/s"),
    ("peak_mem_bytes", "peak mem (B)"),
]
# ONNX Runtime columns (effml.study.backends), shown when any row has the metric
ORT_COLUMNS = [("ort_latency_ms", "ORT p50 (ms)"), ("ort_speedup", "ORT × PyTorch baseline speed (one window)"),
               ("ort_cosine", "ORT cosine vs PyTorch"), ("ort_error", "ORT error"), ("ort_note", "ORT timing note")]

_CELL_CLASS = {"ort_error": ' class="text"', "ort_note": ' class="text"'}  # text columns, left-aligned


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


# In a <script> block the HTML parser ends the script at the first "</script", and "<!--" changes how it parses;
# U+2028/2029 end a line in older JavaScript. Escaped as \uXXXX they are the same JSON strings, inert to the parser.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                              "\u2029": "\\u2029"})


def script_json(obj) -> str:
    """JSON for inside a <script> element: no store string (a device or variant name) can close the element or
    open a comment in it (json.dumps escapes neither)."""
    return json.dumps(obj, allow_nan=False).translate(_SCRIPT_SAFE)


def _table(rows: list[dict], objective: Objective, front: set[str]) -> tuple[str, str]:
    cols = [(c, label or objective.label) for c, label in TABLE_COLUMNS]
    cols += [(c, label) for c, label in ORT_COLUMNS if any(c in r for r in rows)]
    head = "".join(f'<th data-col="{i}">{html.escape(label)}</th>' for i, (_, label) in enumerate(cols))
    body = "".join(
        "<tr" + (' class="front"' if r["key"] in front else "") + ">"
        + "".join(f'<td{_CELL_CLASS.get(c, "")} data-v="{html.escape(json.dumps(r.get(c)))}">'
                  + (html.escape(objective.text(r[c])) if c == "metric" and r.get(c) is not None else _fmt(r.get(c)))
                  + "</td>" for c, _ in cols) + "</tr>" for r in rows)
    return head, body


def _not_measured(rows: list[dict], skipped) -> str:
    """The failed variants (status and error as stored) and the skipped plans (reason), as a table; '' if none."""
    items = [(r["name"], r["status"], r.get("error") or "") for r in rows if r["status"] != "ok"]
    items += [(name, "skipped", why) for name, why in skipped]
    if not items:
        return ""
    body = "".join(f"<tr><td>{html.escape(str(n))}</td><td>{html.escape(str(s))}</td><td>{html.escape(str(w))}"
                   "</td></tr>" for n, s, w in items)
    return ('<h2>Failed and skipped variants</h2>\n<table id="not-measured"><thead><tr><th>variant</th>'
            f"<th>status</th><th>reason</th></tr></thead><tbody>{body}</tbody></table>")


def render(runs: list[Run], devices: list[str], best_profile=None, roofline=None, meta: dict | None = None,
           objective: Objective | None = None, skipped=()) -> str:
    """The report's HTML. `best_profile`: the Profile of the variant to break down per layer;
    `roofline`: a plotly figure of its ops on a device (effml.hardware.plot.roofline_figure); `objective`: the
    metric drawn (default: as the runs stored it, effml.study.rows.objective_of); `skipped`: (plan, reason)
    of plans the study did not run."""
    meta = meta or {}
    objective = objective or objective_of(runs)
    rows = report_rows(runs, devices, objective)
    ok = [r for r in rows if r["status"] == "ok"]
    axes = [a for a in cost_axes(devices) if any(r.get(a.name) for r in ok)]
    frontier = {a.name: frontier_keys(ok, a.name, objective) for a in axes}
    if not any(r["metric"] is not None for r in ok):
        axes = []  # nothing to draw (every variant failed): the table and the failures section still say so
    data = pareto_data(ok, axes, frontier, objective) if axes else {"axes": {}}
    figs = [("pareto", pareto_figure(data, objective, axes[0].name))] if axes else []
    if best_profile is not None:
        figs.append(("layers", layer_figure(best_profile, f"per-layer cost of {meta.get('best', 'the best variant')}")))
    if roofline is not None:
        figs.append(("roofline", roofline))
    figs += predicted_vs_measured(ok, devices)
    parts = []
    for i, (div, fig) in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=div,
                                 config={"displaylogo": False}))
    options = "".join(f'<option value="{html.escape(a.name)}">{html.escape(a.label)}</option>' for a in axes)
    head, body = _table(ok, objective, set(frontier[axes[0].name]) if axes else set())
    lines = "".join(f"<li>{html.escape(s)}</li>" for s in headline(ok, objective)) or "<li>{}</li>".format(
        "no baseline run yet" if baseline_row(ok) is None else
        f"no variant is within {'1 pt' if objective.percent else '1%'} of the baseline's {html.escape(objective.name)}")
    info = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in meta.items())
    return _TEMPLATE.format(title=html.escape(meta.get("title", "effml study")), headline=lines, info=info,
                            options=options, figures="\n".join(parts), head=head, body=body,
                            not_measured=_not_measured(rows, skipped), switch=script_json(data["axes"]))


def write(path: str | Path, html_text: str) -> Path:
    """Write the report whole (a temporary file renamed onto `path`): never half a report."""
    from effml.guards import write_atomic

    return write_atomic(path, html_text)


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
 body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
 table {{ border-collapse: collapse; width: 100%; font-size: 13px; }}
 th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; }}
 th {{ cursor: pointer; background: #f4f4f4; position: sticky; top: 0; }}
 td:first-child, td:nth-child(2), th:first-child, th:nth-child(2) {{ text-align: left; }}
 tr.front td {{ font-weight: 600; }}
 td.text, #not-measured td, #not-measured th {{ text-align: left; max-width: 28em; font-size: 12px; }}
 dl {{ display: grid; grid-template-columns: max-content auto; gap: 2px 12px; font-size: 13px; }}
 dt {{ color: #666; }}
</style></head><body>
<h1>{title}</h1>
<ul id="headline">{headline}</ul>
<dl>{info}</dl>
<label for="cost-axis">cost axis: </label><select id="cost-axis">{options}</select>
{figures}
<h2>All variants <small>(click a header to sort; bold = on the frontier of the first cost axis)</small></h2>
<table id="runs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{not_measured}
<script>
const SWITCH = {switch};
document.getElementById("cost-axis").addEventListener("change", (e) => {{
  const s = SWITCH[e.target.value];
  Plotly.restyle("pareto", {{x: [s.x, s.fx, s.ox, s.tx]}}, [0, 1, 2, 3])
    .then(() => Plotly.restyle("pareto", {{y: [s.fy], text: [s.ft]}}, [1]))
    .then(() => Plotly.relayout("pareto", {{"xaxis.title.text": s.label}}));
}});
document.querySelectorAll("#runs th").forEach((th) => th.addEventListener("click", () => {{
  const tbody = document.querySelector("#runs tbody"), col = +th.dataset.col;
  const asc = th.dataset.asc !== "1"; th.dataset.asc = asc ? "1" : "0";
  const val = (tr) => JSON.parse(tr.children[col].dataset.v);
  [...tbody.rows].sort((a, b) => {{
    const x = val(a), y = val(b);
    if (x === y) return 0; if (x === null) return 1; if (y === null) return -1;
    return (x < y ? -1 : 1) * (asc ? 1 : -1);
  }}).forEach((tr) => tbody.appendChild(tr));
}}));
</script>
</body></html>
"""
