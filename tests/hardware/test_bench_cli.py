"""effml bench: rows per batch with percentiles, memory and threads, beside the local prediction."""

import json

from effml.cli import main
import torch


def test_bench_without_calibration_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EFFML_LOCAL_DEVICE", str(tmp_path / "missing.json"))
    assert main(["bench", "--model", "effml.zoo:mlp", "--batch", "1,4", "--budget", "0.05", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in d["results"]] == [1, 4]
    assert d["hw"] is None and "effml calibrate" in d["note"]
    r = d["results"][0]
    assert r["p50_s"] <= r["p90_s"] <= r["p99_s"] and r["threads"] >= 1 and r["error_pct"] is None


def fig(value):
    return {"value": value, "source": "hand-written for this test"}


def test_bench_with_local_prediction(capsys, tmp_path, monkeypatch):
    # a `local` device in the calibration schema, written by hand (calibrate() itself is tested elsewhere)
    local = {"name": "local (test)", "kind": "cpu", "peak_flops": {"fp32": fig(50e9)}, "mem_bw": fig(10e9),
             "memory_bytes": fig(16e9), "overhead_s": {"default": fig(5e-6), "module_call": fig(2e-6)},
             "meta": {"threads": torch.get_num_threads()}}
    path = tmp_path / "local.json"
    path.write_text(json.dumps({"devices": {"local": local}}))
    monkeypatch.setenv("EFFML_LOCAL_DEVICE", str(path))
    assert main(["bench", "--model", "effml.zoo:mlp", "--batch", "2", "--budget", "0.05", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    r = d["results"][0]
    assert d["hw"].startswith("local")
    assert r["prediction"]["time_s"] > 0
    # the error is (predicted - measured p50) / p50, in %
    assert abs(r["error_pct"] - (r["prediction"]["time_s"] - r["p50_s"]) / r["p50_s"] * 100) < 1e-6
    assert r["memory"]["rss_delta_bytes"] >= 0
    # LeNet-300-100 at batch 2: 3 Linear + 2 ReLU + flatten (+ views) calls at >= 5 us each, 7 module calls
    assert r["prediction"]["overhead_s"] >= 5 * 5e-6 + 7 * 2e-6
    assert d["note"] == ""  # calibrated with this thread count
