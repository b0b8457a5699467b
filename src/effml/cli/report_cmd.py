"""`effml report`: rebuild a study's HTML report from its store (an SQLite file or a postgresql:// URL)."""

from __future__ import annotations

from effml.cli.common import add_json_flag, console, print_json


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="rebuild report.html from a study store")
    r.add_argument("--store", default="runs.db",
                   help="the study's store: SQLite file (default runs.db) or postgresql://USER@HOST/DB")
    r.add_argument("--study", default="default", help="study name inside the store")
    r.add_argument("--out", default="report.html", help="report file (default report.html)")
    r.add_argument("--export", action="store_true",
                   help="also write every variant's row as CSV and JSON beside the report (report.csv, report.json)")
    r.add_argument("--compare", nargs=2, metavar=("A.db", "B.db"),
                   help="put two stores' studies side by side (variants joined by name: accuracy, latency, size, "
                        "B/A ratios), e.g. two machines; no HTML is written")
    add_json_flag(r)
    r.set_defaults(run=run)


def run(args) -> int:
    if args.compare:
        from effml.study.export import compare_stores, compare_table

        cmp = compare_stores(*args.compare, study=args.study)
        print_json(cmp.to_dict()) if args.json else console().print(compare_table(cmp))
        return 0
    from effml.cli.study_cmd import check_paths, store_files
    from effml.study.build import build
    from effml.study.report import write
    from effml.study.store import Store

    check_paths(args.out, args.store)
    if args.export:  # the CSV and JSON beside the report: checked before any work too
        from effml.guards import check_output_path
        from effml.study.export import export_paths

        for p, kind in zip(export_paths(args.out), (".csv", ".json")):
            check_output_path(p, "--export", suffixes=(kind,), not_same_as=[*store_files(args.store), args.out])
    with Store(args.store, create=False) as store:
        html, lines = build(store, args.study)
    path = write(args.out, html)
    exported = []
    if args.export:
        from effml.study.export import variant_rows, write_rows

        with Store(args.store, create=False) as store:
            exported = [str(p) for p in write_rows(variant_rows(store, args.study), path, args.study)]
    if args.json:
        print_json({"report": str(path), "headline": lines} | ({"exported": exported} if exported else {}))
    else:
        for line in lines:
            console().print(f"• {line}", markup=False)  # store strings: "[/]" in a name is text, not markup
        console().print(f"report: {path}" + (f" (rows: {', '.join(exported)})" if exported else ""), markup=False)
    return 0
