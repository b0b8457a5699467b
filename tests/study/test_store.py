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
