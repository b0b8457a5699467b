"""Hardware model: catalog (with sources), roofline prediction, energy, $ and local calibration.

    from effml.hardware import get_device, predict
    dev = get_device("h100"); dev.peak_flops("bf16")    # 989.5e12, dense
    pred = predict(profile, "h100", dtype="bf16")        # Prediction: time_s, bound, energy, usd_per_1m, fit
"""

from __future__ import annotations

from effml.hardware.catalog import Device, DeviceError, Figure, get_device, list_devices, local_device_path
from effml.hardware.energy import Energy, energy_scale
from effml.hardware.capacity import Fit, check_fit
from effml.hardware.predict import OpPrediction, Prediction, predict, predict_many

__all__ = ["Device", "DeviceError", "Energy", "Figure", "Fit", "OpPrediction", "Prediction", "calibrate",
           "check_fit", "energy_scale", "get_device", "list_devices", "local_device_path", "predict",
           "predict_many"]


def __getattr__(name: str):
    if name in ("calibrate", "Calibration", "CalibrateConfig"):  # imports torch benchmarks: load on demand
        from effml.hardware import calibrate as _cal

        return getattr(_cal, name if name != "calibrate" else "calibrate")
    raise AttributeError(f"module 'effml.hardware' has no attribute {name!r}")
