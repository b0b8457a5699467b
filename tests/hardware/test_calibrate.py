"""Calibration: the fit recovers known parameters; a quick run writes a usable `local` device."""

import json

import pytest

from effml.cost.profile import ModuleInfo, OpEvent, Profile
from effml.hardware import get_device, predict
from effml.hardware.calibrate import CalibrateConfig, calibrate
from effml.hardware.curvefit import fit_group, fit_op_model


def test_fit_recovers_known_overhead_and_efficiencies():
    peak, bw = 1e11, 1e10
    o, eta, mu = 5e-6, 0.5, 0.8
    # a compute-heavy, a memory-heavy and a tiny case; time = o + max(F / (peak eta), B / (bw mu))
    cases = [(2e8, 1e6), (1e5, 4e7), (10.0, 40.0), (5e7, 4e6), (1e3, 4e5)]
    rows = [{"ops": [(f, b)], "known_s": 0.0, "time_s": o + max(f / (peak * eta), b / (bw * mu))} for f, b in cases]
    fit = fit_group(rows, peak, lambda b: bw)
    # e.g. (2e8 FLOPs) at 0.5 x 1e11 = 4 ms; (4e7 B) at 0.8 x 1e10 = 5 ms; the tiny case is ~ o = 5 us
    assert fit["overhead_s"] == pytest.approx(o, rel=0.02)
    assert fit["compute"] == pytest.approx(eta, rel=0.02)
    assert fit["memory"] == pytest.approx(mu, rel=0.02)
    assert fit["rms_log_error"] < 0.01


def test_unidentifiable_efficiency_stays_one():
    # only memory-bound cases: nothing says how fast compute is, so eta stays 1
    rows = [{"ops": [(b / 100, b)], "known_s": 0.0, "time_s": 2e-6 + b / 5e9} for b in (1e4, 1e6, 1e8)]
    fit = fit_group(rows, 1e11, lambda b: 1e10)
    assert fit["compute"] == 1.0 and fit["memory"] == pytest.approx(0.5, rel=0.02)


def test_fit_per_op_when_an_op_has_its_own_cases():
    def ev(op, b):
        return OpEvent(op, "pool", "forward", (), int(b / 8), 0, int(b), 0, "fp32")
    rows = {"pool": [{"label": f"{op} {b}", "time_s": t, "events": [ev(op, b)]}
                     for op, b, t in (("aten.a", 1e6, 2e-4), ("aten.a", 1e7, 2e-3),
                                      ("aten.b", 1e6, 1e-4), ("aten.b", 1e7, 1e-3))]}
    out = fit_op_model(rows, 0.0, 1e12, lambda b: 1e10)
    assert {"pool", "aten.a", "aten.b"} <= set(out)
    # aten.a moves 1e7 B in 2 ms: 5e9 B/s = 0.5 x 1e10; aten.b twice as fast
    assert out["aten.a"]["memory"] == pytest.approx(0.5, rel=0.05)
    assert out["aten.b"]["memory"] == pytest.approx(1.0, rel=0.05)


@pytest.fixture(scope="module")
def quick_local(tmp_path_factory):
    cfg = CalibrateConfig(quick=True, samples=1, sample_s=0.0005, categories=("view", "elementwise", "matmul"),
                          kernel_families=("matmul",), kernel_budget_s=2.0)
    cal = calibrate(cfg)
    return cal, cal.save(tmp_path_factory.mktemp("cal") / "local.json")


def test_quick_calibration_writes_a_local_device(quick_local, monkeypatch):
    cal, path = quick_local
    data = json.loads(path.read_text())
    assert set(data["devices"]) == {"local"}
    monkeypatch.setenv("EFFML_LOCAL_DEVICE", str(path))
    dev = get_device("local")
    assert dev.kind == "cpu" and dev.peak_flops("fp32") > 0 and dev.bandwidth > 0
    assert {"fp32", "bf16"} <= set(dev.peak)  # int8 only where fbgemm/x86 quantized kernels exist
    for path_, fig in dev.figures():
        assert fig.source.startswith("measured by effml calibrate"), path_
    sizes = [p[0] for p in dev.bw_curve.value]
    assert sizes == sorted(sizes)
    assert {"module_call", "view", "matmul", "elementwise", "default"} <= set(dev.overhead_s)
    assert data["devices"]["local"]["meta"]["threads"] >= 1
    assert data["devices"]["local"]["meta"]["cpu_capability"]


def test_local_prediction_includes_overheads(quick_local):
    cal, _ = quick_local
    ev = OpEvent("aten.add", "elementwise", "forward", ("m",), 16, 0, 128, 64, "fp32")
    prof = Profile([ev, ev], 0, {"": ModuleInfo("M", 0, 1), "m": ModuleInfo("Add", 0, 2)}, 64, {})
    p = predict(prof, cal.device)
    o = float(cal.device.overhead_s["elementwise"].value if "aten.add" not in cal.device.overhead_s
              else cal.device.overhead_s["aten.add"].value)
    m = float(cal.device.overhead_s["module_call"].value)
    # two adds of 192 B each: overhead 2 o (+ a negligible roofline term) + 3 module calls
    assert p.overhead_s == pytest.approx(2 * o + 3 * m)
    assert p.time_s >= p.overhead_s


def test_fit_learns_an_intensity_dependent_compute_efficiency():
    from effml.hardware.roofline import compute_efficiency

    peak, bw = 1e11, 1e10
    truth = {"compute": 0.9, "memory": 1.0, "i_half": 16.0, "p": 1.0}

    def t(i, b):  # GEMM-like call of intensity I (= rows / 2 for few rows): eta(I) = 0.9 I / (I + 16)
        f = i * b
        return 3e-6 + max(f / (peak * compute_efficiency(truth, i, b)), b / bw)

    rows = [{"ops": [(i * 4e6, 4e6)], "known_s": 0.0, "time_s": t(i, 4e6)}
            for i in (4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)]
    fit = fit_group(rows, peak, lambda b: bw)
    assert fit["rms_log_error"] < 0.02 and "i_half" in fit
    # a constant efficiency cannot do this: eta(4) = 0.18 but eta(256) = 0.85. The fitted curve predicts
    # calls it was not fitted on (I = 12, 48, 192) within 5%
    for i in (12.0, 48.0, 192.0):
        eta = compute_efficiency(fit, i, 4e6)
        pred = fit["overhead_s"] + max(i * 4e6 / (peak * eta), 4e6 / (bw * fit["memory"]))
        assert pred == pytest.approx(t(i, 4e6), rel=0.05)


def test_a_calibration_on_a_busy_machine_says_so(tmp_path, monkeypatch):
    import json

    from effml.hardware.calibrate import busy_warning, saved_busy_warning

    # the threshold is one runnable process per CPU before calibrating: load 1.9 on 2 CPUs is fine, 2.0 is not
    assert busy_warning({"load_average": [1.9, 1.0, 1.0], "cpu_count": 2}) is None
    assert busy_warning({"load_average": [2.0, 1.0, 1.0], "cpu_count": 2})
    msg = busy_warning({"load_average": [7.9, 6.0, 5.0], "cpu_count": 2})
    assert msg and "load average 7.9 on 2 CPUs" in msg and "effml calibrate" in msg
    assert busy_warning({}) is None  # a calibration saved before the field existed
    path = tmp_path / "local.json"
    monkeypatch.setenv("EFFML_LOCAL_DEVICE", str(path))
    assert saved_busy_warning() is None  # nothing saved yet
    path.write_text(json.dumps({"devices": {"local": {"meta": {"load_average": [5.0], "cpu_count": 4}}}}))
    assert "load average 5.0 on 4 CPUs" in saved_busy_warning()
