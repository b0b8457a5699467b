"""Will it be faster? The roofline prediction before compressing, the measurement after, side by side.

    pred = predict_change(model, (x,), "int8", hw="local")            # before: from the dense model's profile
    meas = effml.measure.ab.compare(model, compressed, (x,))            # after: interleaved timing, ratio
    SpeedCheck(label, pred, meas).to_dict()

What the prediction knows (effml.hardware.predict on an effml.profile count):
- fine-grained / N:M sparsity: the same dense FLOPs and bytes -> predicted 1.0x on dense kernels (only
  hardware with sparse kernels, e.g. 2:4 sparse tensor cores, gains; the catalog lists those peaks).
- channel pruning: the smaller model's own profile -> its FLOPs and bytes really fall.
- int8: the same profile re-priced at int8 (a quarter of the bytes, the device's int8 peak): a memory-bound
  layer moves 4x fewer weight bytes, a compute-bound one runs at the int8/fp32 peak ratio.
Measurement (effml.measure.ab) runs the two models alternately (A, B, A, B, ...) so a busy machine slows both
alike; the ratio of medians is the measured speedup.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from torch import nn

from effml.errors import ConfigError, EffmlError

if TYPE_CHECKING:
    from effml.measure.ab import ABResult

CHANGES = ("sparse", "channel", "int8", "int8-weight", "int4-weight", "none")


@dataclass
class Predicted:
    hw: str
    before_s: float
    after_s: float
    before_bound: str
    after_bound: str
    note: str = ""

    @property
    def speedup(self) -> float:
        return self.before_s / self.after_s if self.after_s else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


@dataclass
class SpeedCheck:
    label: str
    predicted: Predicted | None
    measured: ABResult | None
    note: str = ""

    def to_dict(self) -> dict:
        return {"label": self.label, "predicted": self.predicted.to_dict() if self.predicted else None,
                "measured": self.measured.to_dict() if self.measured else None, "note": self.note}


def predict_change(model: nn.Module, inputs: tuple, change: str, *, after: nn.Module | None = None,
                   hw="local", forward_kwargs: dict | None = None) -> Predicted:
    """Predicted latency before and after `change` (one of CHANGES) on `hw` (a name or a Device)."""
    from effml.cost.counter import profile
    from effml.hardware import predict

    if change not in CHANGES:
        raise ConfigError(f"unknown change {change!r}; expected one of {CHANGES}")
    kwargs = dict(forward_kwargs or {})
    batch = int(inputs[0].shape[0]) if inputs and hasattr(inputs[0], "shape") else 1
    prof = profile(model, *inputs, forward_kwargs=kwargs)
    before = predict(prof, hw, dtype="fp32", batch=batch)
    note = ""
    if change == "channel":
        if after is None:
            raise ConfigError("predict_change('channel') needs the pruned model (after=...)")
        after_pred = predict(profile(after, *inputs, forward_kwargs=kwargs), hw, dtype="fp32", batch=batch)
    elif change in ("int8", "int8-weight", "int4-weight"):
        dtype = "int4" if change == "int4-weight" else "int8"
        try:
            after_pred = predict(prof, hw, dtype=dtype, batch=batch)
        except EffmlError as e:
            after_pred, note = before, f"no {dtype} figure for {hw}: {e}"
        if change != "int8":
            note = note or "weight-only: priced as if the GEMM ran at the low-precision peak (an upper bound)"
    else:
        after_pred = before
        note = "same dense FLOPs and bytes: dense kernels multiply the zeros" if change == "sparse" else ""
    name = getattr(before, "device", str(hw))
    return Predicted(name, before.time_s, after_pred.time_s, before.bound, after_pred.bound, note)


def local_device(quick: bool = True):
    """The calibrated `local` device, or a quick calibration of this machine (not saved) when there is none."""
    from effml.hardware import get_device
    from effml.hardware.catalog import DeviceError

    try:
        return get_device("local")
    except DeviceError:
        from effml.hardware.calibrate import CalibrateConfig, calibrate

        return calibrate(CalibrateConfig(quick=quick)).device
