"""`effml scale`: compute-optimal planning with Chinchilla-style scaling laws.

    effml scale --compute 5.76e23 [--law chinchilla] [--json]
    effml scale --budget-usd 1e6 --hw h100 --mfu 0.4        (or --gpu-hours 1e5 --hw h100)
    effml scale --params 7e9 [--hw h100]
    effml scale --fit runs.csv [--bootstrap 200] [--json]
    ... [--plot frontier.svg | plots.html]                  (isoFLOP + frontier figures; + the fit's runs)
"""

from __future__ import annotations

import argparse

from effml.cli.common import add_json_flag, console, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("scale", help="compute-optimal N and D for a budget (Chinchilla laws); fit your own runs",
                       description="Compute-optimal planning: L(N, D) = E + A/N^α + B/D^β, C ≈ 6ND.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--compute", type=float, metavar="FLOPS", help="training compute budget in FLOPs")
    mode.add_argument("--budget-usd", type=float, metavar="USD", help="budget in US dollars (needs --hw)")
    mode.add_argument("--gpu-hours", type=float, metavar="H", help="budget in GPU-hours (needs --hw)")
    mode.add_argument("--params", type=float, metavar="N", help="reverse: optimal tokens and compute for N params")
    mode.add_argument("--fit", metavar="RUNS.CSV", help="fit the law to your runs (columns params, tokens, loss)")
    p.add_argument("--law", default="chinchilla",
                   help="chinchilla (rounded eq. 10) | chinchilla-full | besiroglu | a JSON file with "
                        "E, A, B, alpha, beta (e.g. saved from `--fit --json`)")
    p.add_argument("--hw", help="catalog device for $ / GPU-hours (see `effml hw list`)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation (default 0.4)")
    p.add_argument("--dtype", default="bf16", help="training dtype whose dense peak is used (default bf16)")
    p.add_argument("--price-per-hour", type=float, help="override the catalog's USD per GPU-hour")
    p.add_argument("--tokens-per-param", type=float, default=20.0,
                   help="the rule of thumb shown beside the law (default 20, Chinchilla approach 1)")
    p.add_argument("--bootstrap", type=int, default=200, help="--fit: bootstrap resamples (0 = none)")
    p.add_argument("--starts", type=int, default=64, help="--fit: L-BFGS starts from the best grid points "
                                                          "(0 = all 4500 of the paper's grid)")
    p.add_argument("--seed", type=int, default=0, help="--fit: bootstrap seed")
    p.add_argument("--plot", metavar="FILE", help="write isoFLOP and frontier plots (.svg or .html)")
    add_json_flag(p)
    p.set_defaults(run=run)


def _law(spec: str):
    import json
    from pathlib import Path

    from effml.errors import ConfigError
    from effml.scaling import ScalingLaw, get_law

    if spec.endswith(".json") or Path(spec).is_file():
        try:
            data = json.loads(Path(spec).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"--law {spec}: cannot read a law from it ({exc})") from None
        data = data.get("law", data) if isinstance(data, dict) else {}
        return ScalingLaw.from_dict({**data, "name": Path(spec).stem, "source": str(spec)})
    return get_law(spec)


def run(args: argparse.Namespace) -> int:
    from effml.errors import ConfigError
    from effml.scaling import Budget, allocate, plan_for_params

    law = _law(args.law)
    if args.hw is None and (args.budget_usd is not None or args.gpu_hours is not None):
        raise ConfigError("--budget-usd and --gpu-hours need --hw (a catalog device, e.g. --hw h100)")
    hw = dict(hw=args.hw, mfu=args.mfu, dtype=args.dtype, price_per_hour=args.price_per_hour)
    if args.fit:
        return _run_fit(args)
    if args.params is not None:
        plan, mode = plan_for_params(args.params, law, ratio=args.tokens_per_param, **hw), "params"
    else:
        budget = Budget(flops=args.compute, usd=args.budget_usd, gpu_hours=args.gpu_hours, **hw)
        plan, mode = allocate(budget, law, ratio=args.tokens_per_param), "budget"
    plot = _write_plot(args, law) if args.plot else None
    if args.json:
        print_json({"mode": mode, "law": law.to_dict(), **plan.to_dict(), "plot": plot})
        return 0
    _print_plan(plan, law, mode)
    if plot:
        console().print(f"plots written to {plot}")
    return 0


def _write_plot(args, law, runs=None, fitted=None) -> str:
    from effml.scaling.plots import fit_figure, frontier_figure, isoflop_figure, write_figures

    laws = [law] + [name for name in ("chinchilla", "besiroglu") if name != law.name]
    figures = [isoflop_figure(law=fitted or law), frontier_figure(laws=[fitted] + laws if fitted else laws)]
    if runs is not None:
        figures.insert(0, fit_figure(runs, fitted))
    return str(write_figures(args.plot, figures))


def _fmt_cost(conv) -> tuple[str, str]:
    from effml.units import si

    hours = "n/a" if conv.gpu_hours is None else f"{si(conv.gpu_hours)} h on {conv.device}"
    usd = "n/a" if conv.usd is None else f"${si(conv.usd)}"
    return hours, usd


def _print_plan(plan, law, mode: str) -> None:
    from rich.table import Table

    from effml.units import si

    b = plan.budget
    title = (f"Compute-optimal plan for C = {b.flops:.3g} FLOPs" if mode == "budget"
             else f"Training {si(plan.optimal.params)} parameters compute-optimally")
    t = Table(title=f"{title} — law {law.name} (C ≈ 6ND)")
    for col in ("allocation", "params N", "tokens D", "tokens/param", "compute C", "GPU-hours", "cost",
                "predicted loss"):
        t.add_column(col, justify="right")
    rows = [("law closed form", plan.optimal, plan.budget), (plan.rule_of_thumb.rule, plan.rule_of_thumb,
                                                              plan.rule_of_thumb_cost)]
    for label, a, conv in rows:
        t.add_row(label, si(a.params), si(a.tokens), f"{a.tokens_per_param:.1f}", f"{a.compute:.3g}",
                  *_fmt_cost(conv), f"{a.loss:.4f}")
    c = console()
    c.print(t)
    if b.device:
        c.print(f"{b.device}: {b.peak_flops:.4g} FLOP/s dense {b.dtype} × MFU {b.mfu:g} = "
                f"{b.flops_per_gpu_hour:.3g} FLOPs per GPU-hour"
                + (f", ${b.price_per_hour:g}/GPU-hour" if b.price_per_hour else ", no price in the catalog"))
    c.print(f"law {law.name}: L = {law.E:.4g} + {law.A:.4g}/N^{law.alpha:.4g} + {law.B:.4g}/D^{law.beta:.4g}; "
            f"N_opt ∝ C^{law.a:.3f}, D_opt ∝ C^{law.b:.3f}")
    ratio = plan.optimal.tokens_per_param / plan.rule_of_thumb.tokens_per_param
    if not 2 / 3 < ratio < 1.5:
        c.print(f"note: the law's optimum uses {plan.optimal.tokens_per_param:.0f} tokens/param, "
                f"{ratio:.1f}× the {plan.rule_of_thumb.tokens_per_param:g} of Chinchilla's Table 3 (approach 1). "
                "The paper's eq.-10 fit disagrees with its own Table 3; --law besiroglu is the corrected refit.")


def _run_fit(args) -> int:
    from rich.table import Table

    from effml.scaling import CurveFitConfig, fit_law, get_law, read_runs

    runs = read_runs(args.fit)
    cfg = CurveFitConfig(n_starts=args.starts or None, n_bootstrap=args.bootstrap, seed=args.seed)
    result = fit_law(runs, cfg, name="fitted")
    plot = _write_plot(args, get_law("chinchilla"), runs, result.law) if args.plot else None
    if args.json:
        print_json({"mode": "fit", "runs": args.fit, **result.to_dict(), "plot": plot})
        return 0
    t = Table(title=f"Fitted law from {result.n_runs} runs ({args.fit}) — Huber δ=1e-3 on log-loss, L-BFGS")
    t.add_column("parameter")
    t.add_column("estimate", justify="right")
    t.add_column(f"{result.ci:.0%} bootstrap interval ({result.n_bootstrap} resamples)", justify="right")
    t.add_column("Chinchilla", justify="right")
    ref = get_law("chinchilla")
    ref_values = {"alpha": ref.alpha, "beta": ref.beta, "a": ref.a, "E": ref.E, "A": ref.A, "B": ref.B}
    law = result.law
    point = {"alpha": law.alpha, "beta": law.beta, "a": law.a, "E": law.E, "A": law.A, "B": law.B}
    for key, value in point.items():
        iv = result.intervals.get(key)
        t.add_row(key if key != "a" else "a = β/(α+β)", f"{value:.4g}",
                  f"[{iv.low:.4g}, {iv.high:.4g}]" if iv else "—", f"{ref_values[key]:.4g}")
    c = console()
    c.print(t)
    c.print(f"objective {result.objective:.3g}, rms log-residual {result.rms_log_residual:.4f}, "
            f"{result.starts_at_best}/{result.n_starts} L-BFGS starts reached the best optimum")
    if result.undetermined:
        c.print(f"warning: the runs do not determine {', '.join(result.undetermined)} (a term ≈ 0 at every run or "
                "an exponent at the edge of the search box); add runs spread further in N and D")
    if plot:
        c.print(f"plots written to {plot}")
    return 0
