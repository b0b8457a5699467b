"""IsoFLOP and frontier figures: as data (`Figure.to_dict()`, for the HTML report / plotly) and as SVG files.

No plotting library is needed: a small log-log SVG renderer draws the same `Figure` the report gets as data.
`write_figures(path, figures)` writes one .svg (figures stacked) or one self-contained .html page.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from effml.errors import ConfigError
from effml.scaling.laws import (CHINCHILLA_TOKENS_PER_PARAM, FLOPS_PER_PARAM_TOKEN, ScalingLaw, get_law, isoflop)

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


@dataclass(frozen=True)
class Series:
    name: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    mode: str = "lines"  # "lines" or "markers"
    dash: bool = False
    color: int | None = None  # palette index; None = the series' position

    def to_dict(self) -> dict:
        return {"name": self.name, "x": list(self.x), "y": list(self.y), "mode": self.mode, "dash": self.dash,
                "color": PALETTE[self.color % len(PALETTE)] if self.color is not None else None}


@dataclass(frozen=True)
class Figure:
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...] = field(default_factory=tuple)
    log_x: bool = True
    log_y: bool = True

    def to_dict(self) -> dict:
        return {"title": self.title, "x_label": self.x_label, "y_label": self.y_label, "log_x": self.log_x,
                "log_y": self.log_y, "series": [s.to_dict() for s in self.series]}


def isoflop_figure(computes=(1e19, 1e20, 1e21, 1e22, 1e23, 1e24), law: str | ScalingLaw = "chinchilla") -> Figure:
    """Loss vs N along 6ND = C for each C, plus the closed-form optima (markers)."""
    law = get_law(law)
    curves = [isoflop(C, law) for C in computes]
    series = [Series(f"C = {C:.0e} FLOPs", c.params, c.losses) for C, c in zip(computes, curves)]
    series.append(Series("compute-optimal", tuple(c.optimum.params for c in curves),
                         tuple(c.optimum.loss for c in curves), mode="markers"))
    return Figure(f"IsoFLOP curves ({law.name})", "parameters N", "predicted loss (nats/token)", tuple(series),
                  log_y=False)


def frontier_figure(laws=("chinchilla", "besiroglu"), c_min: float = 1e18, c_max: float = 1e26,
                    ratio: float = CHINCHILLA_TOKENS_PER_PARAM) -> Figure:
    """Compute-optimal N and D vs C for each law, and the D = 20·N rule (dashed)."""
    C = np.geomspace(c_min, c_max, 33)  # (33,)
    series = []
    for name in laws:
        law = get_law(name)
        series.append(Series(f"N_opt {law.name}", tuple(C), tuple(law.optimal_params(C))))
        series.append(Series(f"D_opt {law.name}", tuple(C), tuple(law.optimal_tokens(C))))
    n_rule = np.sqrt(C / (FLOPS_PER_PARAM_TOKEN * ratio))  # (33,)
    series.append(Series(f"N, {ratio:g} tokens/param", tuple(C), tuple(n_rule), dash=True))
    series.append(Series(f"D, {ratio:g} tokens/param", tuple(C), tuple(ratio * n_rule), dash=True))
    return Figure("Compute-optimal frontier", "training compute C (FLOPs)", "parameters / tokens", tuple(series))


def fit_figure(runs, law: ScalingLaw) -> Figure:
    """Observed final loss vs D, one colour per N (markers), with the fitted law's curve for each N."""
    series = []
    for i, N in enumerate(sorted(set(runs.params.tolist()))):
        mask = runs.params == N
        D = runs.tokens[mask]
        order = np.argsort(D)
        series.append(Series(f"N = {N:.3g} runs", tuple(D[order]), tuple(runs.loss[mask][order]), mode="markers",
                             color=i))
        grid = np.geomspace(D.min() / 1.5, D.max() * 1.5, 25)  # (25,)
        series.append(Series(f"N = {N:.3g} fit", tuple(grid), tuple(law.loss(N, grid)), dash=True, color=i))
    return Figure(f"Runs and fitted law (α={law.alpha:.3f}, β={law.beta:.3f})", "training tokens D",
                  "final loss (nats/token)", tuple(series), log_y=False)


# ---- SVG rendering ---------------------------------------------------------------------------------
W, H, ML, MR, MT, MB = 720, 440, 70, 190, 40, 50  # size and margins (the legend sits in the right margin)


def _scale(values, log: bool):
    v = np.asarray(values, dtype=float)
    return np.log10(v) if log else v


def _ticks(lo: float, hi: float, log: bool) -> list[tuple[float, str]]:
    if log:
        if hi - lo < 2:  # under two decades: 1, 2, 5 × 10^e
            ticks = [(math.log10(m) + e, f"{m}e{e}") for e in range(math.floor(lo), math.ceil(hi) + 1)
                     for m in (1, 2, 5)]
            return [(t, label) for t, label in ticks if lo <= t <= hi]
        step = max(1, math.ceil((hi - lo) / 8))
        return [(e, f"1e{e}") for e in range(math.ceil(lo), math.floor(hi) + 1, step)]
    span = hi - lo or 1.0
    raw = span / 6
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [(t, f"{t:.4g}") for t in np.arange(start, hi + step / 2, step)]


def render_svg(fig: Figure, y_offset: int = 0) -> str:
    """One figure as an <svg> element (log axes as the figure says)."""
    if not fig.series:
        raise ConfigError(f"figure {fig.title!r} has no series to draw")
    xs = np.concatenate([_scale(s.x, fig.log_x) for s in fig.series])
    ys = np.concatenate([_scale(s.y, fig.log_y) for s in fig.series])
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    pad_y = 0.05 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad_y, y1 + pad_y
    pw, ph = W - ML - MR, H - MT - MB

    def px(x):
        return ML + (x - x0) / ((x1 - x0) or 1.0) * pw

    def py(y):
        return MT + ph - (y - y0) / ((y1 - y0) or 1.0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" y="{y_offset}" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2 - MR / 2:.0f}" y="22" text-anchor="middle" font-size="14">{html.escape(fig.title)}</text>',
           f'<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>']
    for t, label in _ticks(x0, x1, fig.log_x):
        out.append(f'<line x1="{px(t):.1f}" y1="{MT}" x2="{px(t):.1f}" y2="{MT + ph}" stroke="#eee"/>'
                   f'<text x="{px(t):.1f}" y="{MT + ph + 15}" text-anchor="middle">{label}</text>')
    for t, label in _ticks(y0, y1, fig.log_y):
        out.append(f'<line x1="{ML}" y1="{py(t):.1f}" x2="{ML + pw}" y2="{py(t):.1f}" stroke="#eee"/>'
                   f'<text x="{ML - 5}" y="{py(t) + 4:.1f}" text-anchor="end">{label}</text>')
    out.append(f'<text x="{ML + pw / 2:.0f}" y="{H - 12}" text-anchor="middle">{html.escape(fig.x_label)}</text>')
    out.append(f'<text transform="translate(16,{MT + ph / 2:.0f}) rotate(-90)" text-anchor="middle">'
               f'{html.escape(fig.y_label)}</text>')
    for i, s in enumerate(fig.series):
        color = PALETTE[(i if s.color is None else s.color) % len(PALETTE)]
        pts = list(zip(px(_scale(s.x, fig.log_x)), py(_scale(s.y, fig.log_y))))
        if s.mode == "markers":
            out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>' for x, y in pts)
        else:
            dash = ' stroke-dasharray="6,4"' if s.dash else ""
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>')
        ly = MT + 8 + 16 * i
        out.append(f'<rect x="{W - MR + 12}" y="{ly - 8}" width="12" height="4" fill="{color}"/>'
                   f'<text x="{W - MR + 30}" y="{ly - 2}">{html.escape(s.name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def figures_svg(figures: list[Figure]) -> str:
    """Several figures stacked vertically in one SVG document."""
    inner = "\n".join(render_svg(f, y_offset=i * H) for i, f in enumerate(figures))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H * len(figures)}" '
            f'viewBox="0 0 {W} {H * len(figures)}">\n{inner}\n</svg>\n')


def figures_html(figures: list[Figure], title: str = "effml scale") -> str:
    body = "\n".join(f"<figure>{render_svg(f)}</figure>" for f in figures)
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def write_figures(path: str | Path, figures: list[Figure]) -> Path:
    """.svg -> one SVG with the figures stacked; .html -> a page with each figure inline."""
    path = Path(path)
    writers = {".svg": figures_svg, ".html": figures_html, ".htm": figures_html}
    if path.suffix.lower() not in writers:
        raise ConfigError(f"plot file {path} must end in .svg or .html")
    path.write_text(writers[path.suffix.lower()](figures))
    return path
