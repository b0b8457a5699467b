"""Per-variant CSV/JSON beside the report, and `effml report --compare a.db b.db` side by side."""

import csv
import json

import pytest

from effml.cli import main
from effml.errors import ConfigError
from effml.study.export import compare_rows, compare_stores, export_paths, variant_rows, write_rows
from effml.study.store import Store
from tests.study.conftest import make_runs


def _store(path, slower: float = 1.0, drop: tuple[str, ...] = (), machine: str = "A"):
    with Store(path) as store:
        for run in make_runs("s"):
            if run.name in drop:
                continue
            run.key = f"{run.name}@fp-{machine}"  # each machine's settings fingerprint differs; names do not
            run.metrics["latency_p50_s"] *= slower
            run.machine = {"cpu": machine}
            store.put(run)
    return path


def test_rows_beside_the_html(tmp_path):
    with Store(_store(tmp_path / "a.db")) as store:
        rows = variant_rows(store, "s")
    csv_path, json_path = write_rows(rows, tmp_path / "report.html", "s")
    assert (csv_path.name, json_path.name) == ("report.csv", "report.json")
    with open(csv_path, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == ["baseline", "prune-80%", "int8", "bad", "student"]
    base = next(r for r in table if r["name"] == "baseline")
    # conftest: baseline accuracy 0.90, 246,824 bytes, 2.0 ms p50 (latency_ms = 2.0e-3 s x 1e3)
    assert float(base["accuracy"]) == 0.90 and int(base["size_bytes"]) == 246_824
    assert float(base["latency_ms"]) == pytest.approx(2.0)
    assert float(base["pred_ms@h100"]) == pytest.approx(0.02)  # predictions: latency_s = lat / 100
    data = json.loads(json_path.read_text())
    assert data["study"] == "s" and data["rows"] == rows


def test_compare_two_stores(tmp_path):
    a = _store(tmp_path / "a.db", machine="A")
    b = _store(tmp_path / "b.db", slower=2.0, drop=("bad",), machine="B")
    cmp = compare_stores(a, b, "s")
    rows = {r["name"]: r for r in cmp.rows}
    assert cmp.machines == ("cpu A", "cpu B")
    assert rows["int8"]["latency_ms b/a"] == pytest.approx(2.0)  # B timed every variant 2x slower
    assert rows["int8"]["accuracy b/a"] == pytest.approx(1.0)
    assert rows["bad"]["in"] == "a" and rows["bad"]["latency_ms b"] is None and rows["bad"]["latency_ms b/a"] is None
    with pytest.raises(ConfigError, match="two different stores"):
        compare_stores(a, a, "s")


def test_compare_rows_keeps_variants_of_either_side():
    out = compare_rows([{"name": "x", "accuracy": 0.5}], [{"name": "y", "accuracy": 0.6}])
    assert [(r["name"], r["in"]) for r in out] == [("x", "a"), ("y", "b")]
    assert export_paths("out/r.html")[0].as_posix() == "out/r.csv"


def test_cli_export_and_compare(tmp_path, capsys):
    a = _store(tmp_path / "a.db", machine="A")
    b = _store(tmp_path / "b.db", slower=0.5, machine="B")
    out = tmp_path / "r.html"
    assert main(["report", "--store", str(a), "--study", "s", "--out", str(out), "--export", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["exported"] == [str(tmp_path / "r.csv"), str(tmp_path / "r.json")] and out.exists()
    assert main(["report", "--study", "s", "--compare", str(a), str(b), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["baseline"]["latency_ms b/a"] == pytest.approx(0.5)
    assert main(["report", "--study", "s", "--compare", str(a), str(b)]) == 0
    assert "baseline" in capsys.readouterr().out
