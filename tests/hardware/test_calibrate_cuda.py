"""The GPU calibration's device entry (catalog schema, kind 'gpu') loads and predicts; the measurement itself needs
a GPU (tests/measure/test_device.py runs it there and skips here)."""

import pytest
import torch

import effml
from effml.hardware import predict
from effml.hardware.calibrate import _fig
from effml.hardware.calibrate_cuda import gpu_entry
from effml.hardware.catalog import device_from_dict
from effml.hardware.roofline import MODULE_CALL


def test_gpu_entry_loads_and_predicts():
    # hand-set figures of a hypothetical card: 50 TFLOP/s fp32, 3 TB/s, 5 us per launch, 2 us per module call
    peak = {k: _fig(v, "test", "t") for k, v in {"fp32": 50e12, "tf32": 400e12, "bf16": 700e12, "fp16": 700e12,
                                                  "int8": 1200e12}.items()}
    raw = gpu_entry("Fake GPU", "9.0", peak, _fig(3e12, "test", "t"), _fig([[2.0**28, 3e12]], "test", "t"), 80e9,
                    {"default": _fig(5e-6, "test", "t"), MODULE_CALL: _fig(2e-6, "test", "t")}, "t",
                    {"device": "cuda:0"})
    dev = device_from_dict("local", raw)
    assert dev.kind == "gpu" and dev.name == "local (Fake GPU, cc 9.0)" and dev.peak_flops("int8") == 1200e12
    assert raw["meta"]["int8_kernel"] == peak["int8"]["source"] and raw["meta"]["device"] == "cuda:0"

    prof = effml.profile(torch.nn.Linear(4096, 4096), torch.randn(1, 4096))
    p = predict(prof, dev, dtype="fp32")
    # bytes: weight 4096*4096*4 = 67,108,864 + bias, input, output 3 * 16,384 = 67,158,016 -> / 3e12 = 22.386 us;
    # FLOPs 2*4096*4096 + 4096 = 33,558,528 / 50e12 = 0.67 us: memory-bound.
    # overhead: 2 counted op calls x 5 us + 1 module call x 2 us = 12 us
    assert prof.total().bytes == 67_158_016 and p.bound == "memory"
    assert p.memory_s == pytest.approx(67_158_016 / 3e12)
    assert p.overhead_s == pytest.approx(12e-6)
    assert p.time_s == pytest.approx(67_158_016 / 3e12 + 12e-6)


def test_gpu_entry_without_int8_says_so():
    peak = {"fp32": _fig(1e12, "test", "t")}
    raw = gpu_entry("G", "7.5", peak, _fig(1e11, "test", "t"), _fig([[1e8, 1e11]], "test", "t"), 16e9,
                    {"default": _fig(1e-5, "test", "t")}, "t", {})
    assert raw["meta"]["int8_kernel"].startswith("none") and not device_from_dict("local", raw).has_dtype("int8")
