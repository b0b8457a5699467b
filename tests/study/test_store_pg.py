"""The study store on PostgreSQL (a throwaway server, tests/conftest.py's postgres_url): the same rows and checks
as SQLite, atomic claims across processes, clear errors for a server that cannot be reached or a database that
holds someone else's tables, and `effml study` / `effml report` with --store postgresql://... Each test gets a
fresh database (tests/conftest.py's pg_db)."""

import json
import socket

import pytest

from effml.errors import ConfigError
from effml.study.store import Run, Store


def _sql(url: str, statement: str) -> None:
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    conn.cursor().execute(statement)
    conn.close()


def test_rows_artifacts_and_reopen(pg_db):
    from effml.study.store_pg import PgStore

    with Store(pg_db) as s:
        assert isinstance(s, PgStore) and s.path == pg_db  # no password in this URL: shown as given
        run = Run("s", "a", "a", [{"technique": "prune", "config": {"sparsity": 0.5}}], {"accuracy": 0.9},
                  {"h100": {"latency_s": 1e-3, "fits": True}})
        assert s.put(run) is True and s.put(Run("s", "a", "a", [], {"accuracy": 0.1})) is False  # first one stays
        s.put_artifact("s", "weights", b"\x00\x01")
        s.put_artifact("s", "weights", b"\x00\x02")  # replaced
    with Store(pg_db, create=False) as s:  # persisted; a second open checks, creates nothing
        got = s.get("s", "a")
        assert (got.metrics, got.chain, got.predictions["h100"]["fits"]) == ({"accuracy": 0.9}, run.chain, True)
        assert s.get_artifact("s", "weights") == b"\x00\x02" and s.get_artifact("s", "nope") is None
        assert s.studies() == ["s"] and [r.key for r in s.runs()] == ["a"] and s.has("s", "a")


def test_claim_rules(pg_db, claim_worker):
    with Store(pg_db) as s:
        claim_worker.claim_rules(s)


def test_two_processes_racing_claims_win_each_key_once(pg_db, claim_worker):
    Store(pg_db).close()
    (w1, won1), (w2, won2) = claim_worker.race_claims(pg_db)
    assert sorted(won1 + won2) == sorted(f"k{i}" for i in range(40))  # 40 keys, each won by exactly one
    with Store(pg_db) as s:
        assert {k: w for k, (w, _) in s.claims("r").items()} == {**{k: w1 for k in won1}, **{k: w2 for k in won2}}


def test_a_hand_edited_row_is_named(pg_db):
    with Store(pg_db) as s:
        s.put(Run("s", "a", "a", [], {"accuracy": 0.9}))
    _sql(pg_db, """UPDATE runs SET metrics = '{"accuracy": 5}' WHERE key = 'a'""")
    with Store(pg_db) as s:
        with pytest.raises(ConfigError, match=rf"store '{pg_db}', table runs, row id 1 \(variant 'a'\): field "
                                              r"'metrics.accuracy' is 5, expected a number in \[0, 1\]"):
            s.runs("s")


def test_bad_schema_version_and_missing_column_are_named(pg_db):
    Store(pg_db).close()
    _sql(pg_db, "UPDATE meta SET value = '2'")
    with pytest.raises(ConfigError, match="row 'schema_version' is '2'; this effml reads schema version 1"):
        Store(pg_db)
    _sql(pg_db, "UPDATE meta SET value = '1'; ALTER TABLE runs DROP COLUMN machine")
    with pytest.raises(ConfigError, match=r"table runs has no column\(s\) machine \(hand-edited\?\)"):
        Store(pg_db)


def test_a_database_with_someone_elses_runs_table_is_refused_untouched(pg_db):
    _sql(pg_db, "CREATE TABLE runs (id INT, email TEXT)")
    with pytest.raises(ConfigError, match=r"is not an effml store: its database holds table\(s\) runs but no meta"):
        Store(pg_db)
    import psycopg2

    conn = psycopg2.connect(pg_db)
    cur = conn.cursor()
    cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    assert [r[0] for r in cur.fetchall()] == ["runs"]  # nothing was added
    conn.close()


def test_report_mode_does_not_create_a_store(pg_db):
    with pytest.raises(ConfigError, match=rf"no study store at '{pg_db}'"):
        Store(pg_db, create=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)  # a hang fails here instead of waiting for the suite's 300 s
def test_unreachable_server_is_a_clear_error_with_the_password_masked():
    pytest.importorskip("psycopg2", reason="psycopg2-binary not installed (pip install '.[postgres]')")
    port = _free_port()  # nothing listens there
    with pytest.raises(ConfigError) as err:
        Store(f"postgresql://effml:s3cret@127.0.0.1:{port}/studies")
    msg = str(err.value)
    assert msg.startswith(f"store 'postgresql://effml:***@127.0.0.1:{port}/studies': cannot reach the PostgreSQL "
                          "server (connection to server at \"127.0.0.1\", port")
    assert "Connection refused" in msg and "s3cret" not in msg


@pytest.mark.timeout(60)
def test_a_server_that_never_answers_times_out():
    pytest.importorskip("psycopg2", reason="psycopg2-binary not installed (pip install '.[postgres]')")
    with socket.socket() as silent:  # accepts the connection, never says a word: without a timeout, a hang
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"store 'postgresql://effml:\*\*\*@127.0.0.1:{port}/studies': cannot "
                                              r"reach the PostgreSQL server \(.*timeout expired\)"):
            Store(f"postgresql://effml:s3cret@127.0.0.1:{port}/studies")  # CONNECT_TIMEOUT_S = 5 applies


def test_a_missing_driver_names_the_extra(monkeypatch):
    import sys

    from effml.extras import MissingExtra

    monkeypatch.setitem(sys.modules, "psycopg2", None)  # as if psycopg2-binary were not installed
    with pytest.raises(MissingExtra, match=r"a study store on PostgreSQL \(--store postgresql://...\) needs the "
                                           r"optional package 'psycopg2-binary', which is not installed: pip install "
                                           r"'effml\[postgres\]'"):
        Store("postgresql+psycopg2://effml@127.0.0.1:1/studies")


def test_unsupported_url_scheme():
    with pytest.raises(ConfigError, match="store URL scheme 'mysql' is not supported; use a file path, "
                                          r"sqlite:///PATH or postgresql://"):
        Store("mysql://u@h/db")


def test_sqlite_url_is_the_sqlite_store(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'runs.db'}") as s:
        assert type(s) is Store and s.path == tmp_path / "runs.db"
        s.put(Run("s", "a", "a", [], {"accuracy": 0.9}))
    with Store(tmp_path / "runs.db") as s:  # the same file
        assert s.has("s", "a")


def test_cli_study_and_report_on_postgres(pg_db, tmp_path, capsys):
    from effml.cli import main

    out = tmp_path / "report.html"
    argv = ["study", "--model", "effml.zoo:lenet5", "--set", "width=1", "--data", "digits", "--epochs", "1",
            "--finetune-epochs", "0.3", "--measure-batch", "16", "--variants", "linear-4b", "--store", pg_db,
            "--out", str(out), "--hw", "h100-sxm", "--no-calibrate", "--json"]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in d["runs"]] == ["baseline", "linear-4b"] and out.exists()
    out.unlink()
    assert main(["report", "--store", pg_db, "--out", str(out), "--json"]) == 0
    assert "linear-4b" in out.read_text()
    capsys.readouterr()
    empty = pg_db.rsplit("/", 1)[0] + "/template1"  # a database with no store: refused, nothing created in it
    assert main(["report", "--store", empty, "--out", str(out)]) == 2
    assert f"no study store at '{empty}'" in capsys.readouterr().err


TINY_MODULE = '''
import torch
from torch import nn

X = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
Y = torch.arange(64) % 4


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def evaluate(m):
    with torch.no_grad():
        return {"accuracy": (m(X).argmax(1) == Y).float().mean().item()}


def inputs():
    return X[:8]
'''


def test_cli_spec_study_and_report_on_postgres(pg_db, tmp_path, capsys):
    from effml.cli import main

    (tmp_path / "tiny_pg_model.py").write_text(TINY_MODULE)  # the user's module, beside the spec
    spec = tmp_path / "study.toml"
    spec.write_text('name = "tiny"\nmodel = "tiny_pg_model:model"\nevaluate = "tiny_pg_model:evaluate"\n'
                    'example_inputs = "tiny_pg_model:inputs"\nplans = ["linear-8b"]\ndevices = ["rpi5"]\n'
                    "measure_budget_s = 0.05\n")
    out = tmp_path / "report.html"
    assert main(["study", "--spec", str(spec), "--store", pg_db, "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in res["rows"]] == ["baseline", "linear-8b"] and res["done"] == ["baseline", "linear-8b"]
    again = tmp_path / "again.html"
    assert main(["report", "--store", pg_db, "--study", "tiny", "--out", str(again)]) == 0
    assert "linear-8b" in again.read_text()
