"""`effml study --spec study.toml`: the study of the user's own model, presented (effml.study.spec runs it)."""

from __future__ import annotations

from effml.errors import ConfigError

# flags of the built-in study that a spec file replaces: given beside --spec they are refused, not ignored
_DEFAULT_ONLY = (("set", [], "--set"), ("hw", None, "--hw"), ("variants", None, "--variants"),
                 ("budget", None, "--budget"), ("data", "fashion-mnist", "--data"),
                 ("model", "effml.zoo:lenet5", "--model"))


def check_flags(args) -> None:
    given = [flag for attr, default, flag in _DEFAULT_ONLY if getattr(args, attr, default) != default]
    if given:
        raise ConfigError(f"{', '.join(given)} do(es) not apply with --spec: set model, plans and budget in the "
                          "spec file")


def table(res):
    from rich.table import Table

    from effml.units import fmt_bytes

    arrow = "↑" if res.higher_is_better else "↓"
    base = next(r for r in res.rows if r["name"] == "baseline")
    front = set(res.frontier.get("latency", [])) | set(res.frontier.get("size", []))
    t = Table(title=f"study {res.study}: {res.objective} {arrow} vs latency and size (★ on a frontier)")
    for col in ("variant", f"{res.objective} {arrow}", "Δ", "speedup (beside baseline)", "size", "peak memory"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in res.rows:
        v = r["metrics"][res.objective]
        t.add_row(("★ " if r["name"] in front else "  ") + r["name"], f"{v:.4g}",
                  f"{v - base['metrics'][res.objective]:+.3g}", f"{r['speedup_measured']:.2f}×",
                  fmt_bytes(r["model_bytes"]), fmt_bytes(r["peak_mem_bytes"]))
    return t


def run(args) -> int:
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from effml.cli.common import console, print_json
    from effml.study.spec import load_spec, run_spec

    check_flags(args)
    spec = load_spec(args.spec)
    from effml.cli.study_cmd import check_setup

    # the HTML report draws accuracy: plotly is needed unless the spec names another objective
    device, backends = check_setup(args, report=spec.objective in (None, "accuracy"))
    store = spec.store or args.store
    from effml.cli.study_cmd import check_paths

    check_paths(args.out, store)
    con = console()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=con, disable=args.json, transient=True) as bar:
        task = bar.add_task("starting", total=1.0)
        res = run_spec(spec, store, progress=lambda what, frac: bar.update(
            task, description=escape(what), completed=min(frac, 1.0)), device=device, backends=backends)
    from effml.study.build import build
    from effml.study.report import write
    from effml.study.store import Store

    with Store(store) as st:  # the report draws the study's objective, with its direction
        html, _ = build(st, spec.name, objective=res.objective)
    report = str(write(args.out, html))
    if args.json:
        print_json({"report": report, **res.to_dict()})
        return 0
    con.print(table(res))
    for name, why in res.skipped:
        con.print(f"[dim]skipped {escape(name)}: {escape(why)}[/]")
    for name, err in res.failed:
        con.print(f"[red]failed {escape(name)}: {escape(err)}[/]")
    if res.remaining:
        con.print(f"[yellow]out of budget: {len(res.remaining)} variants left; rerun to resume[/]")
    from effml.study.store_pg import mask_url

    con.print(f"{len(res.rows)} variants in {mask_url(str(store))} ({len(res.done)} computed now); report: {report}",
              markup=False)
    return 0
