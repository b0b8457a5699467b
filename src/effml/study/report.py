"""The study report: one self-contained HTML file (plotly.js inlined, opens offline).

Sections: headline, Pareto scatter with a cost-axis switch (measured latency, size, FLOPs, and predicted
latency / energy / $ per catalog device), a table sortable by every column, per-layer cost of the best
variant, its roofline on a device, and predicted-vs-measured latency. Built from the store alone, so
`effml report --store runs.db` rebuilds it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from effml.extras import require
from effml.study.rows import cost_axes, flatten, frontier_keys, headline
from effml.study.store import Run

TABLE_COLUMNS = [
    ("name", "variant"), ("chain", "techniques"), ("accuracy", "accuracy"), ("params", "params"),
    ("size_bytes", "size (B)"), ("flops", "FLOPs"), ("latency_ms", "latency p50 (ms)"),
    ("latency_p90_ms", "p90 (ms)"), ("speedup", "× faster (beside baseline)"),
    ("local_pred_ms", "predicted here (ms)"), ("throughput", "samples/s"),
    ("peak_mem_bytes", "peak mem (B)"),
]


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


def pareto_figure(rows: list[dict], axes, frontier: dict[str, list[str]]):
    go = require("plotly.graph_objects", extra="report")

    first = axes[0].name
    by_key = {r["key"]: r for r in rows}
    front = [by_key[k] for k in frontier[first]]
    fig = go.Figure([
        go.Scatter(x=[r[first] for r in rows], y=[100 * r["accuracy"] for r in rows], mode="markers",
                   name="variants", text=[r["name"] for r in rows],
                   marker={"size": 10, "symbol": ["triangle-up" if r["chain"] == "nas" else "circle" for r in rows]},
                   hovertemplate="%{text}<br>%{x:.4g}<br>%{y:.2f}%<extra></extra>"),
        go.Scatter(x=[r[first] for r in front], y=[100 * r["accuracy"] for r in front], mode="lines+markers",
                   name="Pareto frontier", line={"shape": "hv"}, marker={"symbol": "diamond", "size": 12}),
    ])
    fig.update_layout(title="accuracy vs cost: every variant, and the frontier", template="plotly_white",
                      xaxis={"type": "log", "title": {"text": axes[0].label}},
                      yaxis={"title": {"text": "accuracy (%)"}},
                      height=480)
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


def predicted_vs_measured_figure(rows: list[dict]):
    go = require("plotly.graph_objects", extra="report")

    pts = [r for r in rows if r.get("latency_ms") and r.get("local_pred_ms")]
    lim = [min([r["latency_ms"] for r in pts] + [r["local_pred_ms"] for r in pts] or [0.01]) / 1.5,
           max([r["latency_ms"] for r in pts] + [r["local_pred_ms"] for r in pts] or [1.0]) * 1.5]
    fig = go.Figure([
        go.Scatter(x=[r["local_pred_ms"] for r in pts], y=[r["latency_ms"] for r in pts], mode="markers",
                   text=[r["name"] for r in pts], name="variants",
                   hovertemplate="%{text}<br>predicted %{x:.3g} ms<br>measured %{y:.3g} ms<extra></extra>"),
        go.Scatter(x=lim, y=lim, mode="lines", name="measured = predicted", line={"dash": "dot"}),
    ])
    fig.update_layout(title="roofline prediction for this machine ('local') vs measured latency",
                      template="plotly_white", height=420,
                      xaxis={"type": "log", "title": {"text": "predicted (ms)"}},
                      yaxis={"type": "log", "title": {"text": "measured p50 (ms)"}})
    return fig


def render(runs: list[Run], devices: list[str], best_profile=None, roofline=None, meta: dict | None = None) -> str:
    """The report's HTML. `best_profile`: the Profile of the variant to break down per layer;
    `roofline`: a plotly figure of its ops on a device (effml.hardware.plot.roofline_figure)."""
    meta = meta or {}
    rows = [flatten(r, devices) for r in runs]
    axes = [a for a in cost_axes(devices) if any(r.get(a.name) for r in rows)]
    frontier = {a.name: frontier_keys(rows, a.name) for a in axes}
    figs = [("pareto", pareto_figure(rows, axes, frontier))]
    if best_profile is not None:
        figs.append(("layers", layer_figure(best_profile, f"per-layer cost of {meta.get('best', 'the best variant')}")))
    if roofline is not None:
        figs.append(("roofline", roofline))
    figs.append(("predicted", predicted_vs_measured_figure(rows)))
    parts = []
    for i, (div, fig) in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=div,
                                 config={"displaylogo": False}))
    by_key = {r["key"]: r for r in rows}
    switch = {a.name: {"label": a.label, "x": [r.get(a.name) for r in rows],
                       "fx": [by_key[k][a.name] for k in frontier[a.name]],
                       "fy": [100 * by_key[k]["accuracy"] for k in frontier[a.name]]} for a in axes}
    options = "".join(f'<option value="{html.escape(a.name)}">{html.escape(a.label)}</option>' for a in axes)
    head = "".join(f'<th data-col="{i}">{html.escape(label)}</th>' for i, (_, label) in enumerate(TABLE_COLUMNS))
    body = "".join(
        "<tr" + (' class="front"' if r["key"] in frontier[axes[0].name] else "") + ">"
        + "".join(f'<td data-v="{html.escape(json.dumps(r.get(c)))}">'
                  + (_fmt(100 * r[c]) + "%" if c == "accuracy" and r.get(c) is not None else _fmt(r.get(c)))
                  + "</td>" for c, _ in TABLE_COLUMNS) + "</tr>" for r in rows)
    lines = "".join(f"<li>{html.escape(s)}</li>" for s in headline(rows)) or "<li>no baseline run yet</li>"
    info = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in meta.items())
    return _TEMPLATE.format(title=html.escape(meta.get("title", "effml study")), headline=lines, info=info,
                            options=options, figures="\n".join(parts), head=head, body=body,
                            switch=script_json(switch))


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
<script>
const SWITCH = {switch};
document.getElementById("cost-axis").addEventListener("change", (e) => {{
  const s = SWITCH[e.target.value];
  Plotly.restyle("pareto", {{x: [s.x, s.fx]}}, [0, 1])
    .then(() => Plotly.restyle("pareto", {{y: [s.fy]}}, [1]))
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
