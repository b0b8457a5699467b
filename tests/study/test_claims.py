"""Several workers on one study store (effml.study.claims), on SQLite and on PostgreSQL: each variant computed
once while the workers live, a killed worker's variant redone by the other after its claim expires, and every
worker returning with all variants (issue 16, item 6)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from effml.errors import ConfigError
from effml.study.claims import Claims
from effml.study.store import Run, Store

from claim_worker import MLP_PLANS, STUDY, mlp  # tests/study is on pytest's pythonpath (pyproject.toml)

HERE = Path(__file__).parent

TTL = 3.0  # seconds: the workers' claim ttl (heartbeat every 0.75 s)


@pytest.fixture(params=["sqlite", "postgres"])
def shared_store(request, tmp_path):
    return str(tmp_path / "runs.db") if request.param == "sqlite" else request.getfixturevalue("pg_db")


def _start(store: str, log: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "claim_worker.py"), store, str(log), str(TTL), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(out: str) -> dict[str, set[str]]:
    """The worker's 'done a,b' / 'all a,b,c' lines as sets of variant names."""
    return {w.split(" ")[0]: set(filter(None, w.partition(" ")[2].split(","))) for w in out.splitlines()}


def _wait(cond, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_the_mlp_takes_five_plans():
    from effml.study.plans import select

    # Linear layers only, no train= or calibration=: all five plans the workers run apply (with the baseline, six
    # variants), none skipped
    sel = select(mlp(), MLP_PLANS, have=set())
    assert [p.name for p in sel.plans] == MLP_PLANS and sel.skipped == []


def test_a_killed_workers_variant_is_redone_by_the_other(shared_store, tmp_path):
    log = tmp_path / "evaluated.log"
    a = _start(shared_store, log, "slow")
    b = None
    try:
        # a measured and stored the baseline, claimed its first plan and sleeps inside that plan's evaluate
        assert a.stdout.readline() == "holding\n", a.stderr.read()[-2000:]
        b = _start(shared_store, log, "fast")
        with Store(shared_store) as s:
            # b computes the four plans a does not hold, then waits for a's
            _wait(lambda: len(s.runs(STUDY)) == 1 + len(MLP_PLANS) - 1, 180, "b's four variants")
            time.sleep(3 * TTL)  # a's heartbeat keeps its claim alive well past one ttl: b must not take it
            held = s.claims(STUDY)
            assert b.poll() is None and a.poll() is None  # b still waits for the variant a holds
            assert len(held) == 1 and f":{a.pid}:" in next(iter(held.values()))[0]  # worker id host:pid:random
            key = next(iter(held))
            assert not s.has(STUDY, key)
        os.kill(a.pid, signal.SIGKILL)  # mid-variant, holding the claim
        a.wait()
        killed = time.time()
        out, err = b.communicate(timeout=180)
        assert b.returncode == 0, err[-2000:]
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    with Store(shared_store) as s:
        runs, held = s.runs(STUDY), s.claims(STUDY)
    assert sorted(r.name for r in runs) == sorted(["baseline", *MLP_PLANS])  # six rows, each variant once
    assert held == {}  # b's put of the redone variant removed a's expired claim
    assert next(r for r in runs if r.key == key).created > killed  # redone only once a was dead
    pids = log.read_text().split()
    # a evaluated one variant (killed in it); b evaluated the other four and then a's: five
    assert (pids.count(str(a.pid)), pids.count(str(b.pid))) == (1, len(MLP_PLANS))
    lines = _lines(out)
    assert lines["done"] == set(MLP_PLANS) and lines["all"] == {"baseline", *MLP_PLANS}
    from effml.cli import main

    report = tmp_path / "report.html"  # the report reads all six back from the store
    assert main(["report", "--store", shared_store, "--study", STUDY, "--out", str(report)]) == 0
    html = report.read_text()
    assert all(name in html for name in ["baseline", *MLP_PLANS])


def test_two_live_workers_compute_each_variant_once(shared_store, tmp_path):
    log = tmp_path / "evaluated.log"
    procs = [_start(shared_store, log, "fast") for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    first, second = (_lines(out) for out, _ in outs)
    assert first["done"].isdisjoint(second["done"])  # nothing computed by both
    assert first["done"] | second["done"] == {"baseline", *MLP_PLANS}
    assert first["all"] == second["all"] == {"baseline", *MLP_PLANS}  # each returns with every variant
    assert len(log.read_text().split()) == len(MLP_PLANS)  # five variant evaluates in all, none twice


PIPELINE_WORKER = textwrap.dedent("""
    import sys
    from effml.study.pipeline import StudyConfig, run_study
    from effml.study.store import Store
    cfg = StudyConfig(model="effml.zoo:lenet5", model_args=(("width", 1.0),), data="digits", epochs=1,
                      finetune_epochs=0.3, measure_batch=16, measure_budget_s=0.1, devices=("h100-sxm",),
                      calibrate=False, plans=("linear-8b", "int8"), claim_ttl_s=3.0)
    seen = []
    with Store(sys.argv[1]) as store:
        res = run_study(cfg, store, progress=lambda what, frac: seen.append(what))
    trained = any(w.startswith("baseline: ") and w != "baseline: measuring" for w in seen)
    print("done", ",".join(res.done))
    print("all", ",".join(sorted(r.name for r in res.runs)))
    print("trained", "yes" if trained else "")
""")


def test_two_workers_share_the_default_study(tmp_path):
    db = str(tmp_path / "runs.db")
    procs = [subprocess.Popen([sys.executable, "-c", PIPELINE_WORKER, db], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    first, second = (_lines(out) for out, _ in outs)
    names = {"baseline", "linear-8b", "int8"}
    assert first["done"].isdisjoint(second["done"]) and first["done"] | second["done"] == names
    assert first["all"] == second["all"] == names
    assert len(first["trained"]) + len(second["trained"]) == 1  # one worker trained the baseline, the other loaded it


def test_claims_helper_skips_waits_and_takes_over(tmp_path):
    with Store(tmp_path / "runs.db") as s:
        assert s.claim("s", "b", "other", 0.5) is True  # another worker holds b for 0.5 s, then stops renewing
        got, waited = [], []
        with Claims(s, "s", ttl_s=0.5, poll_s=0.1) as claims:
            for key in claims.take(["a", "b", "c"], waiting=waited.append):
                got.append(key)
                s.put(Run("s", key, key, [], {"accuracy": 0.5}))
        assert got == ["a", "c", "b"]  # b put aside while held, taken over once its claim expired
        assert waited and all(w == ["b"] for w in waited)  # told, at each pause, what it waits for
        assert s.claims("s") == {}
        with Claims(s, "s", ttl_s=0.4) as claims:  # the heartbeat renews the claim every 0.1 s while f is computed
            for key in claims.take(["f"]):
                time.sleep(1.2)  # three ttls: without the heartbeat the claim would have expired
                assert s.claim("s", "f", "other", 60) is False
                s.put(Run("s", key, key, [], {"accuracy": 0.5}))
        with Claims(s, "s", ttl_s=60) as claims:  # leaving early (a budget) releases the held claim
            for key in claims.take(["d", "e"]):
                assert s.claims("s")["d"][0] == claims.worker
                break
        assert s.claims("s") == {}
    with pytest.raises(ConfigError, match="claim ttl_s must be a number of seconds > 0, got -1"):
        Claims(s, "s", ttl_s=-1)
