"""Rich renderables for `effml scale`: a compute-optimal plan beside the rule of thumb, and a fitted law.

Display only: every number comes from a Plan, a ScalingLaw or a CurveFitResult (their to_dict is the JSON).
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from effml.units import si

PLAN_COLUMNS = ("allocation", "params N", "tokens D", "tokens/param", "compute C", "GPU-hours", "cost",
                "predicted loss")


def _fmt_cost(conv) -> tuple[str, str]:
    hours = "n/a" if conv.gpu_hours is None else f"{si(conv.gpu_hours)} h on {conv.device}"
    usd = "n/a" if conv.usd is None else f"${si(conv.usd)}"
    return hours, usd


def law_line(law) -> str:
    return (f"law {law.name}: L = {law.E:.4g} + {law.A:.4g}/N^{law.alpha:.4g} + {law.B:.4g}/D^{law.beta:.4g}; "
            f"N_opt ∝ C^{law.a:.3f}, D_opt ∝ C^{law.b:.3f}")


def plan_table(plan, law, mode: str) -> Table:
    b = plan.budget
    title = (f"Compute-optimal plan for C = {b.flops:.3g} FLOPs" if mode == "budget"
             else f"Training {si(plan.optimal.params)} parameters compute-optimally")
    t = Table(title=f"{title} — law {law.name} (C ≈ 6ND)")
    for col in PLAN_COLUMNS:
        t.add_column(col, justify="right")
    rows = [("law closed form", plan.optimal, plan.budget),
            (plan.rule_of_thumb.rule, plan.rule_of_thumb, plan.rule_of_thumb_cost)]
    for label, a, conv in rows:
        t.add_row(label, si(a.params), si(a.tokens), f"{a.tokens_per_param:.1f}", f"{a.compute:.3g}",
                  *_fmt_cost(conv), f"{a.loss:.4f}")
    return t


def render_plan(plan, law, mode: str) -> Group:
    """The plan table, the device conversion, the law, and a note when the law strays from Table 3's ratio."""
    b = plan.budget
    parts: list = [plan_table(plan, law, mode)]
    if b.device:
        parts.append(Text(f"{b.device}: {b.peak_flops:.4g} FLOP/s dense {b.dtype} × MFU {b.mfu:g} = "
                          f"{b.flops_per_gpu_hour:.3g} FLOPs per GPU-hour"
                          + (f", ${b.price_per_hour:g}/GPU-hour" if b.price_per_hour
                             else ", no price in the catalog")))
    parts.append(Text(law_line(law)))
    ratio = plan.optimal.tokens_per_param / plan.rule_of_thumb.tokens_per_param
    if not 2 / 3 < ratio < 1.5:
        parts.append(Text(
            f"note: the law's optimum uses {plan.optimal.tokens_per_param:.0f} tokens/param, {ratio:.1f}× the "
            f"{plan.rule_of_thumb.tokens_per_param:g} of Chinchilla's Table 3 (approach 1). The paper's eq.-10 fit "
            "disagrees with its own Table 3; --law besiroglu is the corrected refit."))
    return Group(*parts)


def fit_table(result, ref, runs_label: str) -> Table:
    """The fitted law's parameters with their bootstrap intervals, beside the reference law `ref`."""
    t = Table(title=f"Fitted law from {result.n_runs} runs ({runs_label}) — Huber δ=1e-3 on log-loss, L-BFGS")
    t.add_column("parameter")
    t.add_column("estimate", justify="right")
    t.add_column(f"{result.ci:.0%} bootstrap interval ({result.n_bootstrap} resamples)", justify="right")
    t.add_column(ref.name.capitalize(), justify="right")
    law = result.law
    for key in ("alpha", "beta", "a", "E", "A", "B"):
        iv = result.intervals.get(key)
        t.add_row(key if key != "a" else "a = β/(α+β)", f"{getattr(law, key):.4g}",
                  f"[{iv.low:.4g}, {iv.high:.4g}]" if iv else "—", f"{getattr(ref, key):.4g}")
    return t


def render_fit(result, ref, runs_label: str) -> Group:
    parts: list = [fit_table(result, ref, runs_label),
                   Text(f"objective {result.objective:.3g}, rms log-residual {result.rms_log_residual:.4f}, "
                        f"{result.starts_at_best}/{result.n_starts} L-BFGS starts reached the best optimum")]
    if result.undetermined:
        parts.append(Text(f"warning: the runs do not determine {', '.join(result.undetermined)} (a term ≈ 0 at "
                          "every run or an exponent at the edge of the search box); add runs spread further in "
                          "N and D", style="yellow"))
    return Group(*parts)
