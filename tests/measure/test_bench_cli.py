"""effml bench: rows per batch with percentiles, memory and threads, beside the local prediction."""

import json

from effml.cli import main
from effml.hardware.calibrate import CalibrateConfig, calibrate


def test_bench_without_calibration_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EFFML_LOCAL_DEVICE", str(tmp_path / "missing.json"))
    assert main(["bench", "--model", "effml.zoo:mlp", "--batch", "1,4", "--budget", "0.05", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in d["results"]] == [1, 4]
    assert d["hw"] is None and "effml calibrate" in d["note"]
    r = d["results"][0]
    assert r["p50_s"] <= r["p90_s"] <= r["p99_s"] and r["threads"] >= 1 and r["error_pct"] is None


def test_bench_with_local_prediction(capsys, tmp_path, monkeypatch):
    path = calibrate(CalibrateConfig(quick=True, samples=1, sample_s=0.0005,
                                     categories=("view", "matmul", "activation"))).save(tmp_path / "local.json")
    monkeypatch.setenv("EFFML_LOCAL_DEVICE", str(path))
    assert main(["bench", "--model", "effml.zoo:mlp", "--batch", "2", "--budget", "0.05", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    r = d["results"][0]
    assert d["hw"].startswith("local")
    assert r["prediction"]["time_s"] > 0
    # the error is (predicted - measured p50) / p50, in %
    assert abs(r["error_pct"] - (r["prediction"]["time_s"] - r["p50_s"]) / r["p50_s"] * 100) < 1e-6
    assert r["memory"]["rss_delta_bytes"] >= 0
