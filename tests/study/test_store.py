"""The SQLite store: idempotent puts, bad files, SIGKILL mid-study, two writers at once."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from effml.errors import ConfigError
from effml.study.store import Run, Store


def _run(key: str, acc: float = 0.9) -> Run:
    return Run("s", key, key, [{"technique": "prune", "config": {"sparsity": 0.5}}], {"accuracy": acc})


def test_put_get_and_duplicates_ignored(tmp_path):
    with Store(tmp_path / "runs.db") as s:
        assert s.put(_run("a")) is True
        assert s.put(_run("a", acc=0.1)) is False  # same key: the first finished result stays
        assert s.get("s", "a").metrics == {"accuracy": 0.9}
        assert s.get("s", "a").chain[0]["config"]["sparsity"] == 0.5
        s.put_artifact("s", "baseline", b"\x00weights")
        assert s.get_artifact("s", "baseline") == b"\x00weights"
    with Store(tmp_path / "runs.db") as s:  # persisted
        assert [r.key for r in s.runs("s")] == ["a"] and s.studies() == ["s"]


def test_not_sqlite_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a database\n" * 100)
    with pytest.raises(ConfigError, match="notes.txt' is not an effml SQLite store"):
        Store(bad)


WRITER = textwrap.dedent("""
    import sys, time
    from effml.study.store import Run, Store
    path, n, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with Store(path) as s:
        for i in range(n):
            key = f"v{i}"
            if s.has("s", key):
                continue
            time.sleep(0.05)  # the 'work' of one variant
            s.put(Run("s", key, key, [], {"accuracy": i / n, "writer": tag}))
            print(i, flush=True)
""")


def test_sigkill_mid_study_loses_nothing_and_resumes(tmp_path):
    db, n = tmp_path / "runs.db", 30
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(n), "first"], stdout=subprocess.PIPE, text=True)
    for _ in range(5):  # wait until a few variants are done, then kill without warning
        proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Store(db) as s:
        done = len(s.runs("s"))
    assert 5 <= done < n
    subprocess.run([sys.executable, "-c", WRITER, str(db), str(n), "second"], check=True, capture_output=True)
    with Store(db) as s:
        runs = s.runs("s")
    assert sorted(r.key for r in runs) == sorted(f"v{i}" for i in range(n))  # each exactly once
    assert sum(r.metrics["writer"] == "first" for r in runs) == done  # the killed run's rows were kept


def test_two_writers_at_once(tmp_path):
    db, n = tmp_path / "runs.db", 20
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(n), tag], stdout=subprocess.DEVNULL)
             for tag in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=120) == 0
    with Store(db) as s:
        keys = [r.key for r in s.runs("s")]
    assert sorted(keys) == sorted(f"v{i}" for i in range(n))  # no duplicate, none lost


def test_processes_opening_one_new_store_at_once(tmp_path):
    # Switching a fresh file to WAL does not wait on busy_timeout: before the retry, 1 of 160 such opens here
    # failed with "database is locked" (and once in CI, in the test above). 12 rounds of 4 racing opens.
    code = "import sys; from effml.study.store import Store; Store(sys.argv[1]).close()"
    for i in range(12):
        db = tmp_path / f"r{i}.db"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(db)], stderr=subprocess.PIPE) for _ in range(4)]
        for p in procs:
            assert p.wait(timeout=60) == 0, p.stderr.read().decode()[-300:]
        with Store(db) as s:
            assert s.runs("s") == []


# ---- files that are not effml stores: refused before anything is written to them ----------------------------

def _digest(path) -> tuple:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest(), sorted(p.name for p in path.parent.iterdir())


def test_another_programs_sqlite_file_is_refused_untouched(tmp_path):
    import sqlite3

    other = tmp_path / "app.db"
    conn = sqlite3.connect(other)
    conn.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT); INSERT INTO users VALUES (1, 'a@b');")
    conn.close()
    before = _digest(other)
    with pytest.raises(ConfigError, match=r"app.db' is not an effml SQLite store: it is an SQLite database with "
                                          r"tables users \(application id 0x0\)"):
        Store(other)
    assert _digest(other) == before  # same bytes, no -wal/-shm beside it: not switched to WAL, no tables added
    conn = sqlite3.connect(other)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()


def test_an_empty_file_is_not_turned_into_a_store(tmp_path):
    empty = tmp_path / "runs.db"
    empty.touch()
    with pytest.raises(ConfigError, match=r"runs.db' is not an effml SQLite store: it is an empty file \(0 bytes\)"):
        Store(empty)
    assert empty.stat().st_size == 0


def test_an_sqlite_file_with_no_tables_is_refused(tmp_path):
    import sqlite3

    db = tmp_path / "blank.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 7")  # writes the header: a valid database holding nothing
    conn.close()
    before = _digest(db)
    with pytest.raises(ConfigError, match="an SQLite database with no tables"):
        Store(db)
    assert _digest(db) == before


def test_a_new_store_is_marked_and_a_store_without_the_mark_is_adopted(tmp_path):
    import sqlite3

    from effml.study.store import _SCHEMA, APPLICATION_ID

    with Store(tmp_path / "new.db"):
        pass
    conn = sqlite3.connect(tmp_path / "new.db")
    assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.db"]  # no temporary file left beside it
    old = tmp_path / "old.db"  # as effml wrote stores before the mark: the three tables and a schema version
    conn = sqlite3.connect(old)
    conn.executescript(_SCHEMA + "INSERT INTO meta VALUES ('schema_version', '1');")
    conn.close()
    with Store(old) as s:
        s.put(_run("a"))
    conn = sqlite3.connect(old)
    assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
    conn.close()


def test_report_mode_does_not_create_a_store(tmp_path):
    with pytest.raises(ConfigError, match="no study store at"):
        Store(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


# ---- hand-edited rows: an error naming the table, row, variant and field; never a traceback -----------------

BAD_ROWS = [  # (column, SQL value, what the message must say)
    ("metrics", "'{not json'", r"field 'metrics' is not valid JSON"),
    ("metrics", "'[1, 2]'", r"field 'metrics' holds an array, expected a JSON object"),
    ("metrics", """'{"accuracy": "high"}'""", r"field 'metrics.accuracy' is 'high', expected a number in \[0, 1\]"),
    ("metrics", """'{"accuracy": NaN}'""", r"field 'metrics.accuracy' is nan, expected a number in \[0, 1\]"),
    ("metrics", """'{"accuracy": 5}'""", r"field 'metrics.accuracy' is 5, expected a number in \[0, 1\]"),
    ("metrics", """'{"accuracy": 0.9, "model_bytes": 0}'""",
     r"field 'metrics.model_bytes' is 0, expected a number > 0"),
    ("metrics", """'{"accuracy": 0.9, "flops": true}'""", r"field 'metrics.flops' is True, expected a number >= 0"),
    ("chain", """'{"technique": "prune"}'""", r"field 'chain' holds an object, expected a JSON array"),
    ("chain", "'[42]'", r"field 'chain', step 0 is 42, expected an object with a 'technique' name"),
    ("predictions", """'{"h100": 3}'""", r"field 'predictions.h100' holds a number, expected a JSON object"),
    ("predictions", """'{"h100": {"fits": "yes"}}'""", r"field 'predictions.h100.fits' is 'yes', expected true"),
    ("predictions", """'{"h100": {"latency_s": -1}}'""", r"field 'predictions.h100.latency_s' is -1, expected a "
                                                           r"number >= 0"),
    ("machine", "'null'", r"field 'machine' holds null, expected a JSON object"),
    ("name", "X'00ff'", r"field 'name' is b'\\x00\\xff', not text"),
    ("created", "'yesterday'", r"field 'created' is 'yesterday', not a time stamp"),
]


@pytest.mark.parametrize("column,value,message", BAD_ROWS, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BAD_ROWS)])
def test_a_hand_edited_row_is_named(tmp_path, column, value, message):
    import sqlite3

    db = tmp_path / "runs.db"
    with Store(db) as s:
        s.put(_run("a"))
        s.put(_run("b"))
    conn = sqlite3.connect(db)
    conn.execute(f"UPDATE runs SET {column} = {value} WHERE key = 'b'")
    conn.commit()
    conn.close()
    variant = "'b'" if column != "name" else r"b'\\x00\\xff'"
    with Store(db) as s:
        assert s.get("s", "a").metrics == {"accuracy": 0.9}  # the other rows still read
        with pytest.raises(ConfigError, match=rf"runs.db', table runs, row id 2 \(variant {variant}\): {message}"):
            s.runs("s")


@pytest.mark.parametrize("value,message", [
    ("'abc'", "row 'schema_version' is 'abc'; this effml reads schema version 1"),
    ("'2'", "row 'schema_version' is '2'; this effml reads schema version 1"),
    (None, "table meta has no 'schema_version' row")])
def test_a_bad_schema_version_is_named(tmp_path, value, message):
    import sqlite3

    db = tmp_path / "runs.db"
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM meta" if value is None else f"UPDATE meta SET value = {value}")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match=message):
        Store(db)


def test_put_refuses_a_run_it_could_not_read_back(tmp_path):
    with Store(tmp_path / "runs.db") as s:
        with pytest.raises(ConfigError, match=r"row id \(new\) \(variant 'a'\): field 'metrics.accuracy' is nan"):
            s.put(_run("a", acc=float("nan")))
        assert s.runs() == []


def test_a_hand_edited_weights_artifact_is_named(tmp_path):
    from effml.study.pipeline import StudyConfig, run_study

    cfg = StudyConfig(model="effml.zoo:lenet5", model_args=(("width", 1.0),), data="digits", epochs=0.1,
                      train_limit=64, test_limit=32, measure_batch=8, measure_budget_s=0.1, devices=("h100-sxm",),
                      calibrate=False)
    with Store(tmp_path / "runs.db") as s:
        s.put_artifact("default", f"weights:baseline@{cfg.fingerprint()}", b"\x00garbage, not safetensors")
        with pytest.raises(ConfigError, match=rf"runs.db', table artifacts, key 'weights:baseline@{cfg.fingerprint()}' "
                                              r"cannot be loaded into the model \(SafetensorError"):
            run_study(cfg, s)
        assert s.runs() == []


def test_a_dropped_column_and_a_text_artifact_are_named(tmp_path):
    import sqlite3

    db = tmp_path / "runs.db"
    with Store(db) as s:
        s.put(_run("a"))
        s.put_artifact("s", "weights:a", b"\x00\x01")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE artifacts SET data = 'text, not bytes'")
    conn.commit()
    conn.close()
    with Store(db) as s:
        with pytest.raises(ConfigError, match=r"table artifacts, key 'weights:a' \(study 's'\): field 'data' is str"):
            s.get_artifact("s", "weights:a")
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE runs DROP COLUMN machine")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match=r"runs.db': table runs has no column\(s\) machine \(hand-edited\?\)"):
        Store(db)


# ---- claims: one worker per variant ---------------------------------------------------------------------------

def test_claim_rules(tmp_path, claim_worker):
    with Store(tmp_path / "runs.db") as s:
        claim_worker.claim_rules(s)
        with pytest.raises(ConfigError, match="claim ttl_s must be a number of seconds > 0, got 0"):
            s.claim("c", "k9", "w1", 0)


def test_two_processes_racing_claims_win_each_key_once(tmp_path, claim_worker):
    db = tmp_path / "runs.db"
    Store(db).close()
    (w1, won1), (w2, won2) = claim_worker.race_claims(str(db))
    assert w1 != w2
    assert sorted(won1 + won2) == sorted(f"k{i}" for i in range(40))  # 40 keys, each won by exactly one
    with Store(db) as s:
        held = s.claims("r")
    assert {k: w for k, (w, _) in held.items()} == {**{k: w1 for k in won1}, **{k: w2 for k in won2}}


def test_a_store_made_before_claims_gets_the_table(tmp_path):
    import sqlite3

    from effml.study.store import _SCHEMA

    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.executescript(_SCHEMA + "INSERT INTO meta VALUES ('schema_version', '1');")  # meta, runs, artifacts only
    conn.close()
    with Store(old) as s:
        assert s.claim("s", "a", "w1", 60) is True
