import json

import pytest
import torch

import effml
from effml.errors import ConfigError
from effml.nas.proxy import ProxyConfig, run_proxy
from effml.nas.search import NasConfig, search
from effml.nas.spaces import get_space
from effml.study.build import build, latest_runs
from effml.study.store import Store

FAKE = "nas_helpers:fake_accuracy"  # deterministic, no training (tests/nas/nas_helpers.py)
KIB = 1024


def _calls(path):
    return path.read_text().splitlines() if path.exists() else []


def test_search_rejects_before_training_and_winners_fit(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("NAS_TEST_CALLS", str(calls))
    cfg = NasConfig(trials=5, proxy=FAKE, flash_kb=400, store=str(tmp_path / "runs.db"), seed=1)
    seen = []
    res = search(cfg, progress=lambda what, frac: seen.append((what, frac)))
    assert len(res.evaluated) == 5
    # progress(what, frac): first "0/5 trials" at 0, then once per trial (rejected ones too), ending at 5/5
    assert seen[0] == ("0/5 trials", 0.0) and seen[-1][0].startswith("5/5 trials · last: ") and seen[-1][1] == 1.0
    assert len(seen) == 1 + len(res.trials) and [f for _, f in seen] == sorted(f for _, f in seen)
    assert len(res.rejected) >= 1  # 400 KiB of flash rules out most of the space (the largest needs 2.4 MiB)
    trained = [t for t in res.evaluated if t.reused_from is None]
    assert sorted(_calls(calls)) == sorted(t.name for t in trained)  # rejected ones never reached the proxy
    assert not {t.name for t in res.rejected} & set(_calls(calls))
    # the counter's own numbers for every architecture on the front: int8 flash <= 400 KiB, SRAM <= 320 KiB
    mb = get_space("mobilenetv2")
    assert res.front
    for t in res.front:
        with torch.device("meta"):
            model = mb.build(t.arch, deploy=True)
        r = t.arch["resolution"]
        p = effml.profile(model, torch.empty(1, 1, r, r, device="meta"))
        assert p.memory("int8") <= 400 * KIB
        assert (p.peak_activation_bytes + r * r * 4) / 4 <= 320 * KIB
    # every trial, rejected ones included, is a row of the study store; the report draws the evaluated ones
    with Store(tmp_path / "runs.db") as s:
        runs = latest_runs(s, "default")
        assert len(runs) == len(res.trials)
        assert {r.metrics["rejected"] is None for r in runs} == {True, False}
        html, _ = build(s, "default")
    assert html.count("nas#") >= 5


def test_resume_runs_only_what_is_missing(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("NAS_TEST_CALLS", str(calls))
    cfg = NasConfig(trials=3, proxy=FAKE, store=None, storage=f"sqlite:///{tmp_path}/o.db", sampler="random")
    assert len(search(cfg).evaluated) == 3
    res = search(cfg, trials=5)
    assert len(res.evaluated) == 5 and len({t.number for t in res.trials}) == len(res.trials)
    assert len(_calls(calls)) <= 5


def test_two_workers_share_one_sqlite_storage(tmp_path):
    cfg = NasConfig(trials=4, workers=2, proxy=FAKE, store=str(tmp_path / "runs.db"), sampler="tpe")
    res = search(cfg)
    _check_shared(res, 4, tmp_path / "runs.db")


def _check_shared(res, n, store_path):
    numbers = [t.number for t in res.trials]
    assert len(res.evaluated) == n  # none lost, none extra
    assert sorted(numbers) == list(range(len(numbers)))  # each Optuna trial once
    assert {t.worker for t in res.evaluated} == {0, 1}  # both workers did some
    with Store(store_path) as s:
        keys = [r.key for r in latest_runs(s, "default")]
    assert len(keys) == len(set(keys)) == len(res.trials)


def test_two_workers_share_one_postgres(tmp_path, postgres_url):
    cfg = NasConfig(trials=4, workers=2, proxy=FAKE, store=str(tmp_path / "runs.db"), storage=postgres_url)
    res = search(cfg)
    _check_shared(res, 4, tmp_path / "runs.db")
    assert res.storage.endswith(postgres_url.split("://")[1])  # no password in it to redact


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="NasConfig.trials"):
        NasConfig(trials=0)
    with pytest.raises(ConfigError, match="NasConfig.sampler: unknown NAS sampler 'grid'; expected one of tpe, nsga2, random"):
        NasConfig(sampler="grid")
    with pytest.raises(ConfigError, match="NasConfig.objective: unknown NAS objective 'speed'; expected one of latency, "):
        NasConfig(objective="speed")
    with pytest.raises(ConfigError, match=r"unknown NAS accuracy proxy 'oracle'; expected one of train \(or package"):
        NasConfig(proxy="oracle")
    with pytest.raises(ConfigError, match="not a database URL"):
        NasConfig(storage="runs.db")


def test_impossible_budget_fails_before_any_trial(tmp_path):
    with pytest.raises(ConfigError, match="smallest one .* already breaks flash"):
        search(NasConfig(trials=2, proxy=FAKE, flash_kb=100, store=None, storage=f"sqlite:///{tmp_path}/o.db"))
    assert not (tmp_path / "o.db").exists()


def test_train_proxy_learns_real_data():
    mb = get_space("mobilenetv2")
    # 512 Fashion-MNIST images, 16 Adam steps, then BN re-estimated: well above chance (10%); measured 41%
    res = run_proxy("train", mb, {**mb.smallest(), "width": 0.5},
                    ProxyConfig(train_images=512, test_images=256, batch_size=32))
    assert res.accuracy > 0.25, res


def test_cli_json_and_errors(tmp_path, capsys):
    from effml.cli import main

    rc = main(["nas", "--trials", "2", "--proxy", FAKE, "--store", str(tmp_path / "r.db"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["trials_evaluated"] == 2 and out["budget"]["flash_bytes"] == 1024 * KIB
    assert main(["nas", "--space", "mobilenet", "--store", str(tmp_path / "r.db")]) == 2
    assert "did you mean 'mobilenetv2'" in capsys.readouterr().err
    assert main(["nas", "--hw", "h100-sxm", "--memory", "mcu", "--store", str(tmp_path / "r.db")]) == 2
    assert "no sram_bytes / flash_bytes" in capsys.readouterr().err
