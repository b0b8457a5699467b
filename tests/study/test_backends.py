"""effml.study(..., backends=("torch", "onnxruntime")): every variant also exported and timed in ONNX Runtime."""

import math

import pytest
import torch
from torch import nn

from effml.errors import ConfigError
from effml.measure.onnxrt import DISTURBED, MIN_ROUNDS
from effml.study.backends import check_backends
from effml.study.user import study

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

BUDGET = 0.05  # seconds of timing per variant: the numbers are not asserted, only their presence and sense


class MLP(nn.Module):
    def __init__(self, special: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
        self.special = special

    def forward(self, x):
        y = self.net(x)
        # torch.lgamma has no ONNX symbolic in the TorchScript exporter (opset 17): export fails, torch runs it
        return torch.lgamma(y.abs() + 1.0) if self.special else y


def _setup(special: bool = False):
    torch.manual_seed(0)
    model = MLP(special).eval()
    x = torch.randn(64, 16)
    with torch.no_grad():
        labels = model(x).argmax(1)  # the baseline's own predictions: its accuracy is exactly 1.0

    def evaluate(m):
        with torch.no_grad():
            return {"accuracy": float((m(x).argmax(1) == labels).float().mean())}

    return model, evaluate, x


def test_ort_metrics_per_variant(tmp_path):
    model, evaluate, x = _setup()
    res = study(model, evaluate, example_inputs=(x[:8],), plans=["prune-fine-50%", "linear-8b"],
                store=str(tmp_path / "r.db"), measure_budget_s=BUDGET, devices=("rpi5",),
                backends=("torch", "onnxruntime"))
    assert [r["name"] for r in res.rows] == ["baseline", "prune-fine-50%", "linear-8b"]
    for r in res.rows:
        assert r.get("ort_error") is None, r.get("ort_error")
        # fp32 weights (fake-quant linear-8b keeps fp32 tensors) exported as they are: ORT computes the same
        # GEMMs; float32 rounding differences only, relative ~1e-7 -> cosine 1 - O(1e-12)
        assert r["ort_cosine"] > 0.999
        assert r["ort_max_abs_err"] < 1e-4
        # a 0.05 s budget still gets the window's MIN_ROUNDS (20) rounds, after its warm-up rounds
        assert r["ort_latency_p50_s"] > 0 and r["ort_rounds"] >= MIN_ROUNDS == 20
        assert r["ort_threads"] == torch.get_num_threads()
        # the ratio is exactly the two medians of the one window, both stored: PyTorch baseline p50 / ORT p50
        # (the same float division, so equal up to the last bit; rel 1e-12 allows a recomputation's rounding)
        assert r["ort_speedup_measured"] == pytest.approx(r["ort_torch_p50_s"] / r["ort_latency_p50_s"], rel=1e-12)
        assert math.isfinite(r["ort_speedup_measured"]) and r["ort_speedup_measured"] > 0
        assert r["latency_p50_s"] > 0  # the PyTorch numbers stand beside the ORT ones
    base = res.row("baseline")
    # ORT's own dynamic int8 of the baseline: 8-bit weights and activations; a 3-layer MLP's logits keep their
    # direction to well within 5% (per-tensor int8 error ~ range/255 per element)
    assert base["ort_int8_error"] is None
    assert 0.95 < base["ort_int8_cosine"] <= 1.0 + 1e-9
    assert base["ort_int8_latency_p50_s"] > 0
    # ORT int8 was timed in the baseline's same window: its ratio divides the same PyTorch p50
    assert base["ort_int8_speedup_measured"] == pytest.approx(
        base["ort_torch_p50_s"] / base["ort_int8_latency_p50_s"], rel=1e-12)
    assert "ort_int8_cosine" not in res.row("linear-8b")  # measured once, on the baseline row


def test_ort_ratio_is_the_windows_two_medians(monkeypatch):
    import effml.measure.onnxrt as onnxrt
    from effml.study.backends import ort_metrics

    model, _, x = _setup()
    seen = {}

    def window(calls, *, threads, budget_s):  # hand-made seconds per call, in the window's call order
        seen.update(keys=list(calls), threads=threads, budget_s=budget_s)
        return {"PyTorch baseline": [3e-3, 1e-3, 2e-3], "ORT": [1e-3, 0.5e-3, 0.8e-3], "ORT int8": [0.4e-3] * 3}

    monkeypatch.setattr(onnxrt, "time_beside_torch", window)
    m = ort_metrics(model, None, (x[:1],), budget_s=0.5, name="mlp")
    assert seen == {"keys": ["PyTorch baseline", "ORT", "ORT int8"], "threads": torch.get_num_threads(),
                    "budget_s": 0.5}
    # medians: torch 2 ms, ORT 0.8 ms, ORT int8 0.4 ms -> 2 / 0.8 = 2.5x and 2 / 0.4 = 5x, from the same 2 ms
    assert (m["ort_torch_p50_s"], m["ort_latency_p50_s"], m["ort_int8_latency_p50_s"]) == (2e-3, 0.8e-3, 0.4e-3)
    assert m["ort_speedup_measured"] == pytest.approx(2.5) and m["ort_int8_speedup_measured"] == pytest.approx(5.0)
    assert m["ort_rounds"] == 3 and m["ort_error"] is None and m["ort_note"] is None  # no reference p50 given
    # in-window: p50 / p10 (here the min of 3) = 2 / 1 for PyTorch, 0.8 / 0.5 for ORT: both <= DISTURBED (3)
    # PyTorch's p50 in the study's own window 1 ms: 2 / 1 = 2x <= 3, no note; 0.5 ms: 4x, the window is called off
    assert DISTURBED == 3.0
    assert ort_metrics(model, None, (x[:1],), budget_s=0.5, torch_p50_s=1e-3)["ort_note"] is None
    note = ort_metrics(model, None, (x[:1],), budget_s=0.5, torch_p50_s=0.5e-3)["ort_note"]
    assert note.startswith("PyTorch baseline: p50 in the window (2 ms) is 4.0x its p50 back to back, without the "
                           "other runtime (0.5 ms)")


def test_export_failure_is_listed_and_study_continues(tmp_path):
    model, evaluate, x = _setup(special=True)
    res = study(model, evaluate, example_inputs=(x[:8],), plans=["prune-fine-50%"], store=str(tmp_path / "r.db"),
                measure_budget_s=BUDGET, devices=("rpi5",), backends=["onnxruntime"])
    assert [r["name"] for r in res.rows] == ["baseline", "prune-fine-50%"] and res.failed == []
    for r in res.rows:
        assert "aten::lgamma" in r["ort_error"]
        assert r["ort_latency_p50_s"] is None and r["ort_cosine"] is None
        assert r["latency_p50_s"] > 0 and r["status"] == "ok"
    assert "no fp32 ONNX graph" in res.row("baseline")["ort_int8_error"]


def test_torch_only_has_no_ort_metrics(tmp_path):
    model, evaluate, x = _setup()
    res = study(model, evaluate, example_inputs=(x[:8],), plans=[], store=str(tmp_path / "r.db"),
                measure_budget_s=BUDGET, devices=("rpi5",))
    assert not [k for k in res.row("baseline") if k.startswith("ort_")]


def test_check_backends():
    assert check_backends(None) == ("torch",)
    assert check_backends("onnxruntime") == ("torch", "onnxruntime")
    assert check_backends(["pytorch,ort"]) == ("torch", "onnxruntime")  # aliases and a comma list
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'; known: torch, onnxruntime"):
        check_backends(["tensorrt"])
    with pytest.raises(ConfigError, match="cannot be compared on cuda:0"):
        check_backends(["onnxruntime"], device="cuda:0")


def test_missing_ort_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ModuleNotFoundError
    with pytest.raises(ImportError, match=r"pip install 'effml\[onnx\]'"):
        check_backends(["onnxruntime"])


def test_default_study_variant_gets_ort_metrics():
    from effml.study.pipeline import StudyConfig, _build, _builder, _load_data, evaluate_variant

    cfg = StudyConfig(data="digits", measure_batch=16, measure_budget_s=BUDGET, test_limit=64, calibrate=False,
                      backends=("onnxruntime",))
    fn = _builder(cfg.model)
    data = _load_data(cfg, fn)
    model = _build(fn, data, 0, **cfg.constructor_args).eval()
    metrics, _, _ = evaluate_variant(model, 1, data, cfg, [("rpi5", None)])
    # LeNet-5 (conv, pool, linear) in fp32, exported as it is: same outputs up to float32 rounding
    assert metrics["ort_error"] is None and metrics["ort_cosine"] > 0.999
    assert metrics["ort_latency_p50_s"] > 0 and metrics["ort_int8_error"] is None  # the baseline row (no baseline)
    assert "device_name" not in metrics  # the CPU: the machine info says which CPU
