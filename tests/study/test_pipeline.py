"""The study pipeline end to end on sklearn digits: variants stored, resumed, reported; bad input."""

import json

import pytest

from effml.cli import main
from effml.errors import ConfigError
from effml.study.build import build
from effml.study.pipeline import StudyConfig, run_study
from effml.study.store import Store

FAST = dict(model="effml.zoo:lenet5", model_args=(("width", 1.0),), data="digits", epochs=2, finetune_epochs=0.5,
            measure_batch=16, measure_budget_s=0.2, devices=("stm32f746:int8", "h100-sxm"), calibrate=False)


def test_study_stores_resumes_and_reports(tmp_path):
    db = tmp_path / "runs.db"
    with Store(db) as store:
        first = run_study(StudyConfig(plans=("prune-channel-50%",), **FAST), store)
        assert first.done == ["baseline", "prune-channel-50%"]
        second = run_study(StudyConfig(plans=("prune-channel-50%", "int8"), **FAST), store)
        assert second.skipped == ["prune-channel-50%"] and second.done == ["int8"]  # resumed, not redone
        runs = {r.name: r for r in second.runs}
        assert set(runs) == {"baseline", "prune-channel-50%", "int8"}
        base, pruned, q = runs["baseline"].metrics, runs["prune-channel-50%"].metrics, runs["int8"].metrics
        assert base["params"] == 61_706 and base["model_bytes"] == 4 * 61_706
        # 50% of channels: conv1 6→3, conv2 16→8, fc 120→60, 84→42 — every inner layer shrinks on both sides
        assert pruned["params"] == (3 * 25 + 3) + (8 * 3 * 25 + 8) + (200 * 60 + 60) + (60 * 42 + 42) + (42 * 10 + 10)
        assert q["macs"] == base["macs"]  # int8 keeps every MAC, in int8
        assert 3.5 < base["model_bytes"] / q["model_bytes"] <= 4.0  # int8 weights + fp32 scales/biases
        assert runs["int8"].predictions["stm32f746"]["dtype"] == "int8"
        for r in runs.values():  # peak memory measured for every variant (the RSS high-water mark read 0 B)
            m = r.metrics
            assert m["peak_mem_bytes"] == m["resident_bytes"] + m["activation_peak_bytes"]
            # the weights are resident (fp32 baseline: 4 B x 61,706 params) and one forward allocates at least
            # its logits: 16 images x 10 classes x 4 B
            assert m["resident_bytes"] >= (4 * 61_706 if r.name == "baseline" else 1)
            assert m["activation_peak_bytes"] >= 16 * 10 * 4
        html, lines = build(store, "default")
    assert "prune-channel-50%" in html
    # a headline exactly when some variant stays within 1 pt of the baseline (on 360 digits test images one
    # image is 0.28 pt, so whether int8 or the pruned net stays within 1 pt can vary between runs)
    within = [n for n in ("prune-channel-50%", "int8") if 100 * (base["accuracy"] - runs[n].metrics["accuracy"]) <= 1]
    assert bool(lines) == bool(within)


def test_cli_study_json_and_report_rebuild(tmp_path, capsys):
    db, out = tmp_path / "runs.db", tmp_path / "report.html"
    argv = ["study", "--model", "effml.zoo:lenet5", "--set", "width=1", "--data", "digits", "--epochs", "1",
            "--finetune-epochs", "0.3", "--measure-batch", "16", "--variants", "linear-4b", "--store", str(db),
            "--out", str(out), "--hw", "h100-sxm", "--no-calibrate", "--json"]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in d["runs"]] == ["baseline", "linear-4b"] and out.exists()
    out.unlink()
    assert main(["report", "--store", str(db), "--out", str(out)]) == 0 and out.exists()


def test_default_baseline_is_lenet5_at_twice_its_width():
    cfg = StudyConfig()
    assert cfg.constructor_args == {"width": 2.0}
    assert StudyConfig(model="effml.zoo:vgg").constructor_args == {}  # the width default is the default model's
    # the settings are part of the fingerprint: another width is another study
    assert StudyConfig(model_args=(("width", 1.0),)).fingerprint() != cfg.fingerprint()


@pytest.mark.parametrize("argv, message", [
    (["--data", "cifar-1000"], "unknown data set 'cifar-1000'"),
    (["--model", "nosuchpkg.models:net"], "no module named 'nosuchpkg'"),
    (["--variants", "prune-everything"], "unknown variant plan(s) prune-everything"),
    (["--set", "depth=3"], "--set depth=3 for --model effml.zoo:lenet5: the builder takes no 'depth'"),
    (["--set", "width=0"], "--set width=0 for --model effml.zoo:lenet5: must be > 0"),
    (["--budget=-5m"], "argument --budget: must be a finite duration > 0"),
    (["--hw", "h100", "nosuchdevice:int8"], "--hw: unknown device 'nosuchdevice'"),
    (["--set", "width"], "--set 'width' must look like KEY=VALUE"),
])
def test_bad_input_one_line(tmp_path, capsys, argv, message):
    assert main(["study", "--store", str(tmp_path / "r.db"), "--out", str(tmp_path / "r.html"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_store_that_is_not_sqlite(tmp_path, capsys):
    bad = tmp_path / "runs.db"
    bad.write_bytes(b"not a database" * 1000)
    assert main(["report", "--store", str(bad)]) == 2
    assert "is not an effml SQLite store" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="has no runs of study 'default'"):
        with Store(tmp_path / "empty.db") as s:
            build(s, "default")
