"""effml hw / predict / calibrate from the command line: one JSON object with --json, one-line errors."""

import json

import pytest

from effml.cli import main


def run_json(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)  # exactly one JSON object, nothing else


def test_hw_list_json(capsys):
    d = run_json(capsys, "hw", "list", "--json")
    keys = {dev["key"] for dev in d["devices"]}
    assert {"h100-sxm", "stm32f746", "rpi5", "t4"} <= keys
    h100 = next(dev for dev in d["devices"] if dev["key"] == "h100-sxm")
    assert h100["peak_flops"]["bf16"]["value"] == 989.5e12 and h100["peak_flops"]["bf16"]["source"]


def test_hw_show_and_table(capsys):
    assert run_json(capsys, "hw", "show", "a100", "--json")["mem_bw"]["value"] == 2.039e12
    assert main(["hw", "list"]) == 0
    assert "H100-SXM" in capsys.readouterr().out


def test_predict_decode_several_devices(capsys):
    d = run_json(capsys, "predict", "--config", "gpt2", "--seq", "1", "--kv-len", "256",
                 "--hw", "h100", "a100,l4", "--dtype", "bf16", "--json")
    assert list(d["devices"]) == ["h100-sxm", "a100-80gb", "l4"]
    for p in d["devices"].values():
        assert p["bound"] == "memory"  # batch-1 decode
        assert {"compute", "memory"} <= set(p["energy_j"])
        assert p["usd_per_1m"] > 0 and p["fits"] is True
    # memory-bound: time ~ 1 / bandwidth, A100 / H100 ~ 3.35 / 2.039
    ratio = d["devices"]["a100-80gb"]["time_s"] / d["devices"]["h100-sxm"]["time_s"]
    assert ratio == pytest.approx(3.35e12 / 2.039e12, rel=0.01)
    assert d["step"]["kv_len"] == 256


def test_predict_single_device_keys_and_plot(capsys, tmp_path):
    html = tmp_path / "roof.html"
    d = run_json(capsys, "predict", "--model", "effml.zoo:lenet5", "--hw", "rpi5", "--plot", str(html), "--json")
    for k in ("time_s", "bound", "energy_j", "usd_per_1m", "fits", "top_ops"):
        assert k in d
    assert d["usd_per_1m"] is None  # the Pi has a unit price, not an hourly one
    assert html.exists() and "plotly" in html.read_text()[:100000].lower()


def test_predict_mcu_int8_does_not_fit_and_says_by_how_much(capsys):
    d = run_json(capsys, "predict", "--model", "effml.zoo:vgg", "--hw", "stm32f746", "--dtype", "int8", "--json")
    flash = d["fit"]["checks"][0]
    # 9,228,362 int8 weights vs 1 MiB flash: misses by 9,228,362 - 1,048,576 = 8,179,786 B
    assert not d["fits"] and flash["short_by_bytes"] == 9_228_362 - 1_048_576
    assert "misses by" in flash["message"]


@pytest.mark.parametrize("argv,msg", [
    (["predict", "--model", "effml.zoo:mlp", "--hw", "h10"], "did you mean"),
    (["predict", "--model", "effml.zoo:mlp", "--hw", "t4", "--dtype", "bf16"], "T4 has no bf16"),
    (["hw", "show", "tpu"], "unknown device"),
])
def test_bad_input_is_one_line(capsys, argv, msg):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


def test_calibrate_cli_writes_out(capsys, tmp_path, monkeypatch):
    import effml.hardware.calibrate as cal

    real = cal.CalibrateConfig
    monkeypatch.setattr(cal, "CalibrateConfig", lambda quick, threads: real(
        quick=True, threads=threads, samples=1, sample_s=0.0005, categories=("view",)))
    out = tmp_path / "local.json"
    d = run_json(capsys, "calibrate", "--quick", "--out", str(out), "--json")
    assert d["path"] == str(out) and out.exists()
    assert d["device"]["peak_flops"]["fp32"]["value"] > 0
