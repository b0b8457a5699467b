"""Roofline plot of a model's op calls on one or more devices (plotly): HTML always, PNG with kaleido.

x: arithmetic intensity (FLOP/byte); y: attained FLOP/s = FLOPs / predicted time of the call (overhead
included, so on `local` overhead-bound calls sit below the roof). The roof is min(peak, bandwidth x I)
for the prediction's dtype; its knee is the ridge point. Marker area is the call's share of the time.
"""

from __future__ import annotations

from pathlib import Path

from effml.errors import ConfigError


def roofline_figure(preds: dict, title: str):
    from effml.extras import require

    go = require("plotly.graph_objects", extra="report")

    fig = go.Figure()
    xs_all = [o.intensity for p in preds.values() for o in p.ops if o.flops > 0 and o.bytes > 0]
    lo = min(xs_all) / 4 if xs_all else 0.01
    hi = max(xs_all + [p.ridge_point for p in preds.values()]) * 4 if xs_all else 1e4
    for key, p in preds.items():
        peak, bw = p.peak_flops, p.bandwidth
        grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        fig.add_trace(go.Scatter(x=grid, y=[min(peak, bw * x) for x in grid], mode="lines", legendgroup=key,
                                 name=f"{p.device} roof ({p.dtype}, ridge {p.ridge_point:.3g} FLOP/B)"))
        total = p.time_s or 1.0
        cats: dict[str, list] = {}
        for o in p.ops:
            if o.flops > 0 and o.bytes > 0 and o.cost.time_s > 0:
                cats.setdefault(o.category, []).append(o)
        for cat, ops in cats.items():
            fig.add_trace(go.Scatter(
                x=[o.intensity for o in ops], y=[o.flops / o.cost.time_s for o in ops], mode="markers",
                legendgroup=key, name=f"{p.device}: {cat} ({len(ops)})",
                marker={"size": [max(4.0, min(30.0, 200 * (o.cost.time_s / total) ** 0.5)) for o in ops],
                        "opacity": 0.6},
                text=[f"#{o.index} {o.op} {o.module}<br>{o.cost.bound}-bound, {o.cost.time_s * 1e6:.3g} us"
                      for o in ops], hoverinfo="text+x+y"))
    fig.update_layout(title=title, xaxis={"type": "log", "title": "arithmetic intensity (FLOP / byte)"},
                      yaxis={"type": "log", "title": "attained FLOP/s"}, template="plotly_white")
    return fig


def write_plot(fig, path: str | Path) -> Path:
    """HTML (plotly.js inlined: opens offline) or PNG (needs the optional kaleido package)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".html", ".htm"):
        fig.write_html(str(p), include_plotlyjs=True)
    elif suffix in (".png", ".svg", ".pdf"):
        try:
            fig.write_image(str(p))
        except (ImportError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"--plot {p}: writing {suffix} needs the optional 'kaleido' package ({exc}); "
                              f"write an .html file instead") from None
    else:
        raise ConfigError(f"--plot {p}: use a .html (or, with kaleido installed, .png) file name")
    return p
