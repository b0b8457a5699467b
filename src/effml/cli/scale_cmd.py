"""`effml scale`: compute-optimal planning with Chinchilla-style scaling laws.

    effml scale --compute 5.76e23 [--law chinchilla] [--json]
    effml scale --budget-usd 1e6 --hw h100 --mfu 0.4        (or --gpu-hours 1e5 --hw h100)
    effml scale --params 7e9 [--hw h100]
    effml scale --fit runs.csv [--bootstrap 200] [--json]
    ... [--plot frontier.svg | plots.html]                  (isoFLOP + frontier figures; + the fit's runs)
"""

from __future__ import annotations

import argparse

from effml.cli.common import (
    add_hw_flag,
    add_json_flag,
    console,
    nonneg_int,
    parse_hw,
    positive_float,
    print_json,
    refuse_unless,
    unit_fraction,
)

FIT_DEFAULTS = {"bootstrap": 200, "starts": 64, "seed": 0}


def add_parser(sub) -> None:
    p = sub.add_parser("scale", help="compute-optimal N and D for a budget (Chinchilla laws); fit your own runs",
                       description="Compute-optimal planning: L(N, D) = E + A/N^α + B/D^β, C ≈ 6ND.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--compute", type=positive_float, metavar="FLOPS", help="training compute budget in FLOPs")
    mode.add_argument("--budget-usd", type=positive_float, metavar="USD", help="budget in US dollars (needs --hw)")
    mode.add_argument("--gpu-hours", type=positive_float, metavar="H", help="budget in GPU-hours (needs --hw)")
    mode.add_argument("--params", type=positive_float, metavar="N",
                      help="reverse: optimal tokens and compute for N params")
    mode.add_argument("--fit", metavar="RUNS.CSV", help="fit the law to your runs (columns params, tokens, loss)")
    p.add_argument("--law", default="chinchilla",
                   help="chinchilla (rounded eq. 10) | chinchilla-full | besiroglu | a JSON file with "
                        "E, A, B, alpha, beta (e.g. saved from `--fit --json`)")
    add_hw_flag(p, help="catalog device(s) for $ / GPU-hours, space- or comma-separated (one plan each)")
    p.add_argument("--mfu", type=unit_fraction, help="with --hw: model FLOPs utilisation in (0, 1] (default 0.4)")
    p.add_argument("--dtype", help="with --hw: training dtype whose dense peak is used (default bf16)")
    p.add_argument("--price-per-hour", type=positive_float, help="with --hw: override the catalog's USD per GPU-hour")
    p.add_argument("--tokens-per-param", type=positive_float, default=20.0,
                   help="the rule of thumb shown beside the law (default 20, Chinchilla approach 1)")
    p.add_argument("--bootstrap", type=nonneg_int, help="--fit: bootstrap resamples (default 200; 0 = none)")
    p.add_argument("--starts", type=nonneg_int, help="--fit: L-BFGS starts from the best grid points "
                                                     "(default 64; 0 = all 4500 of the paper's grid)")
    p.add_argument("--seed", type=nonneg_int, help="--fit: bootstrap seed (default 0)")
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


def _check(args) -> list[str]:
    """Refuse options that do not apply to the chosen mode; the devices, checked."""
    from effml.errors import ConfigError
    from effml.guards import check_output_path

    devices = parse_hw(args.hw)
    refuse_unless(args, {"--bootstrap": args.bootstrap is not None, "--starts": args.starts is not None,
                         "--seed": args.seed is not None}, bool(args.fit), "without --fit")
    refuse_unless(args, {"--hw": bool(devices), "--tokens-per-param": args.tokens_per_param != 20.0},
                  not args.fit, "to --fit (it fits a law to your runs; plan with the fitted law's JSON via --law)")
    refuse_unless(args, {"--mfu": args.mfu is not None, "--dtype": args.dtype is not None,
                         "--price-per-hour": args.price_per_hour is not None}, bool(devices),
                  "without --hw (they turn a device's hours into FLOPs)")
    if not devices and (args.budget_usd is not None or args.gpu_hours is not None):
        raise ConfigError("--budget-usd and --gpu-hours need --hw (a catalog device, e.g. --hw h100)")
    if args.plot:
        from pathlib import Path

        if Path(args.plot).suffix.lower() not in (".svg", ".html"):
            raise ConfigError(f"--plot {args.plot!r} must end in .svg or .html")
        check_output_path(args.plot, "--plot", suffixes=(".svg", ".html"))
    return devices


def run(args: argparse.Namespace) -> int:
    from effml.scaling import Budget, allocate, plan_for_params
    from effml.scaling.present import render_plan

    devices = _check(args)
    if args.fit:
        return _run_fit(args)
    law = _law(args.law)
    plans = {}
    for hw in devices or [None]:
        dev = dict(hw=hw, mfu=args.mfu if args.mfu is not None else 0.4, dtype=args.dtype or "bf16",
                   price_per_hour=args.price_per_hour)
        if args.params is not None:
            plans[hw], mode = plan_for_params(args.params, law, ratio=args.tokens_per_param, **dev), "params"
        else:
            budget = Budget(flops=args.compute, usd=args.budget_usd, gpu_hours=args.gpu_hours, **dev)
            plans[hw], mode = allocate(budget, law, ratio=args.tokens_per_param), "budget"
    plot = _write_plot(args, law) if args.plot else None
    if args.json:
        body = next(iter(plans.values())).to_dict() if len(plans) == 1 else \
            {"devices": {hw: plan.to_dict() for hw, plan in plans.items()}}
        print_json({"mode": mode, "law": law.to_dict(), **body, "plot": plot})
        return 0
    con = console()
    for plan in plans.values():
        con.print(render_plan(plan, law, mode))
    if plot:
        con.print(f"plots written to {plot}")
    return 0


def _write_plot(args, law, runs=None, fitted=None) -> str:
    from effml.scaling.plots import fit_figure, frontier_figure, isoflop_figure, write_figures

    laws = [law] + [name for name in ("chinchilla", "besiroglu") if name != law.name]
    figures = [isoflop_figure(law=fitted or law), frontier_figure(laws=[fitted] + laws if fitted else laws)]
    if runs is not None:
        figures.insert(0, fit_figure(runs, fitted))
    return str(write_figures(args.plot, figures))


def _run_fit(args) -> int:
    from effml.scaling import CurveFitConfig, fit_law, get_law, read_runs
    from effml.scaling.present import render_fit

    opts = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in FIT_DEFAULTS.items()}
    runs = read_runs(args.fit)
    cfg = CurveFitConfig(n_starts=opts["starts"] or None, n_bootstrap=opts["bootstrap"], seed=opts["seed"])
    result = fit_law(runs, cfg, name="fitted")
    plot = _write_plot(args, get_law("chinchilla"), runs, result.law) if args.plot else None
    if args.json:
        print_json({"mode": "fit", "runs": args.fit, **result.to_dict(), "plot": plot})
        return 0
    c = console()
    c.print(render_fit(result, get_law("chinchilla"), args.fit))
    if plot:
        c.print(f"plots written to {plot}")
    return 0
