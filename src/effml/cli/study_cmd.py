"""`effml study`: the main job. Writes report.html; `effml report` rebuilds it from the store."""

from __future__ import annotations

from effml.cli.common import (
    add_hw_flag,
    add_json_flag,
    add_model_flags,
    console,
    duration,
    parse_hw,
    parse_sets,
    positive_float,
    positive_int,
    print_json,
)


def add_parser(sub) -> None:
    p = sub.add_parser("study", help="train, compress, measure and compare every variant; write report.html",
                       description="Baseline + pruning, quantization, distillation variants of a model, each "
                                   "measured here and predicted on catalog devices, on one Pareto frontier.")
    add_model_flags(p, default="effml.zoo:lenet5")  # --set default for LeNet-5: width=2
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist (default) or digits")
    add_hw_flag(p, help="catalog devices (name or name:dtype), space- or comma-separated, to predict on")
    p.add_argument("--study", default="default", help="study name inside the store")
    p.add_argument("--store", default="runs.db",
                   help="SQLite file (default runs.db) or postgresql://USER@HOST/DB: reruns resume; workers on "
                        "several machines given the same PostgreSQL store share the study (each variant once)")
    p.add_argument("--out", default="report.html", help="report file (default report.html)")
    p.add_argument("--epochs", type=positive_float, default=3.0, help="baseline training epochs (default 3)")
    p.add_argument("--finetune-epochs", type=positive_float, default=0.5,
                   help="fine-tuning epochs per variant (default 0.5)")
    p.add_argument("--train-limit", type=positive_int, help="train on a random subset of this size")
    p.add_argument("--test-limit", type=positive_int, help="evaluate on a random subset of this size")
    p.add_argument("--measure-batch", type=positive_int, default=256, help="batch size latency is measured at")
    p.add_argument("--variants", help="comma-separated plan names (default: all)")
    p.add_argument("--budget", type=duration, metavar="SECONDS",
                   help="start no new variant after this time, in seconds or with a unit (8m, 1h); rerun resumes")
    p.add_argument("--no-calibrate", action="store_true",
                   help="do not calibrate this machine first (local predictions stay empty until `effml calibrate`)")
    p.add_argument("--device", default="cpu",
                   help="where latency and peak memory are measured: cpu (default), cuda or cuda:N (CUDA events, "
                        "torch.cuda.max_memory_allocated; int8 formats with CPU-only kernels are listed as skipped)")
    p.add_argument("--backend", action="append", default=[], metavar="NAME",
                   help="also measure each variant in this backend: onnxruntime (export with torch.onnx.export, "
                        "time beside the PyTorch baseline, compare outputs; needs effml[onnx]); repeatable or "
                        "comma-separated")
    p.add_argument("--spec", metavar="TOML",
                   help="study your own trained model: a TOML file naming model, evaluate, example_inputs "
                        "(module:callable), optional train, calibration, plans, devices, budget")
    add_json_flag(p)
    p.set_defaults(run=run_study)



REPORT_SUFFIXES = (".html", ".htm")


def _open(path: str):
    from effml.study.store import Store

    return Store(path)


def store_files(store: str) -> list[str]:
    """The files an SQLite store is kept in; none for a postgresql:// store (its tables live on the server)."""
    from effml.study.store import is_url

    if is_url(store):
        if not store.startswith("sqlite:///"):
            return []
        store = store.removeprefix("sqlite:///")
    return [store, f"{store}-wal", f"{store}-shm"]


def check_paths(out: str, store: str) -> None:
    """Before any work: the report can be written, and writing it destroys nothing (not the store itself, not
    an existing file that is not a report)."""
    from effml.guards import check_output_path

    check_output_path(out, "--out", suffixes=REPORT_SUFFIXES, not_same_as=store_files(store))


def check_setup(args, report: bool = True) -> tuple[str, tuple[str, ...]]:
    """Before any work: the report's plotly (when a report will be drawn), the --device and --backend flags."""
    from effml.extras import require
    from effml.measure.device import resolve_device
    from effml.study.backends import check_backends

    if report:
        require("plotly", extra="report", what="the study's HTML report")
    device = resolve_device(args.device)
    return device, check_backends(args.backend, device, flag="--backend")


def run_study(args) -> int:
    if getattr(args, "spec", None):  # the user's own model (effml/cli/study_spec.py); the default study below
        from effml.cli.study_spec import run as run_spec

        return run_spec(args)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.markup import escape

    from effml.study.build import build
    from effml.study.pipeline import DEFAULT_DEVICES, StudyConfig, run_study as run
    from effml.study.report import write

    device, backends = check_setup(args)
    cfg = StudyConfig(model=args.model, model_args=parse_sets(args.set) if args.set else None, data=args.data,
                      devices=tuple(parse_hw(args.hw, dtypes=True) or DEFAULT_DEVICES), study=args.study,
                      epochs=args.epochs, finetune_epochs=args.finetune_epochs, train_limit=args.train_limit,
                      test_limit=args.test_limit, measure_batch=args.measure_batch,
                      plans=tuple(v.strip() for v in args.variants.split(",")) if args.variants else None,
                      budget_min=args.budget / 60 if args.budget else None, calibrate=not args.no_calibrate,
                      device=device, backends=backends)
    check_paths(args.out, args.store)
    import torch

    from effml.models import model_builder

    with torch.device("meta"):  # shapes only: a bad --set or a raising builder is refused before the store opens
        model_builder(cfg.model)(**cfg.constructor_args)
    con = console()
    with _open(args.store) as store:
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), console=con, disable=args.json, transient=True) as bar:
            task = bar.add_task("starting", total=1.0)
            res = run(cfg, store, progress=lambda what, frac: bar.update(
                task, description=escape(what), completed=min(frac, 1.0)))
        html, lines = build(store, cfg.study, devices=[d.partition(":")[0] for d in cfg.devices])
    path = write(args.out, html)
    if args.json:
        print_json({"report": str(path), "headline": lines, **res.to_dict()})
        return 0
    from effml.study.present import runs_table

    con.print(runs_table(res.runs))
    if res.data.get("note"):
        con.print(f"[yellow]data: {res.data['note']}[/]")
    for line in lines:
        con.print(f"• {line}", markup=False)
    for name, why in res.refused:
        con.print(f"[dim]skipped {escape(name)}: {escape(why)}[/]")
    if res.remaining:
        con.print(f"[yellow]out of budget: {len(res.remaining)} variants left; rerun to resume[/]")
    from effml.study.store_pg import mask_url

    con.print(f"report: {path} ({len(res.runs)} variants; {len(res.skipped)} resumed from {mask_url(args.store)})",
              markup=False)
    from effml.hardware.calibrate import saved_busy_warning

    from effml.study.present import prediction_check

    for warning in (saved_busy_warning(), prediction_check(res.runs)):
        if warning:
            con.print(f"[yellow]local predictions: {warning}[/]")
    return 0
