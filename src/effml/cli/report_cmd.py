"""`effml report`: rebuild a study's HTML report from its SQLite store."""

from __future__ import annotations

from effml.cli.common import add_json_flag, console, print_json


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="rebuild report.html from a study store")
    r.add_argument("--store", default="runs.db", help="the study's SQLite store (default runs.db)")
    r.add_argument("--study", default="default", help="study name inside the store")
    r.add_argument("--out", default="report.html", help="report file (default report.html)")
    add_json_flag(r)
    r.set_defaults(run=run)


def run(args) -> int:
    from effml.cli.study_cmd import check_paths
    from effml.study.build import build
    from effml.study.report import write
    from effml.study.store import Store

    check_paths(args.out, args.store)
    with Store(args.store, create=False) as store:
        html, lines = build(store, args.study)
    path = write(args.out, html)
    if args.json:
        print_json({"report": str(path), "headline": lines})
    else:
        for line in lines:
            console().print(f"• {line}")
        console().print(f"report: {path}")
    return 0
