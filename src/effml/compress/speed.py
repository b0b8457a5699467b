"""Will it be faster? The roofline prediction before compressing, the measurement after, side by side.

    pred = predict_change(model, (x,), "int8", hw="local")            # before: from the dense model's profile
    meas = measure_pair(model, compressed, (x,))                        # after: interleaved timing, ratio
    SpeedCheck(label, pred, meas).to_dict()

What the prediction knows (effml.hardware.predict on an effml.profile count):
- fine-grained / N:M sparsity: the same dense FLOPs and bytes -> predicted 1.0x on dense kernels (only
  hardware with sparse kernels, e.g. 2:4 sparse tensor cores, gains; the catalog lists those peaks).
- channel pruning: the smaller model's own profile -> its FLOPs and bytes really fall.
- int8: the same profile re-priced at int8 (a quarter of the bytes, the device's int8 peak): a memory-bound
  layer moves 4x fewer weight bytes, a compute-bound one runs at the int8/fp32 peak ratio.
Measurement runs the two models alternately (A, B, A, B, ...) so a busy machine slows both alike; the
ratio of medians is the measured speedup.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from effml.errors import ConfigError, EffmlError

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
class Measured:
    before_s: float  # median seconds per call
    after_s: float
    rounds: int
    threads: int
    cpu_capability: str
    times: dict = field(default_factory=dict, repr=False)

    @property
    def speedup(self) -> float:
        return self.before_s / self.after_s

    def to_dict(self) -> dict:
        return {"before_s": self.before_s, "after_s": self.after_s, "speedup": self.speedup, "rounds": self.rounds,
                "threads": self.threads, "cpu_capability": self.cpu_capability}


@dataclass
class SpeedCheck:
    label: str
    predicted: Predicted | None
    measured: Measured | None
    note: str = ""

    def to_dict(self) -> dict:
        return {"label": self.label, "predicted": self.predicted.to_dict() if self.predicted else None,
                "measured": self.measured.to_dict() if self.measured else None, "note": self.note}


def predict_change(model: nn.Module, inputs: tuple, change: str, *, after: nn.Module | None = None,
                   hw="local", kwargs: dict | None = None) -> Predicted:
    """Predicted latency before and after `change` (one of CHANGES) on `hw` (a name or a Device)."""
    from effml.cost.counter import profile
    from effml.hardware import predict

    if change not in CHANGES:
        raise ConfigError(f"unknown change {change!r}; expected one of {CHANGES}")
    kwargs = dict(kwargs or {})
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


def measure_interleaved(calls: dict[str, Callable[[], object]], *, rounds: int = 15, warmup: int = 2,
                        budget_s: float = 60.0) -> dict[str, list[float]]:
    """Seconds per call of each function, timed in turn (a, b, c, a, b, c, ...) under inference mode, for
    `rounds` rounds or until budget_s (at least 3 rounds)."""
    if rounds < 1:
        raise ConfigError(f"timing rounds must be >= 1, got {rounds}")
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in calls.values():
                fn()
        start = time.perf_counter()
        for r in range(rounds):
            for key, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
            if time.perf_counter() - start > budget_s and r >= 2:
                break
    return times


def median(xs: list[float]) -> float:
    from effml.measure.timing import percentile

    return percentile(sorted(xs), 50)


def measure_pair(before: nn.Module, after: nn.Module, inputs: tuple, *, kwargs: dict | None = None,
                 rounds: int = 15, warmup: int = 2, budget_s: float = 60.0) -> Measured:
    """Median latency of both models, timed alternately (A, B, A, B, ...)."""
    kwargs = dict(kwargs or {})
    times = measure_interleaved({"before": lambda: before(*inputs, **kwargs), "after": lambda: after(*inputs, **kwargs)},
                                rounds=rounds, warmup=warmup, budget_s=budget_s)
    return Measured(median(times["before"]), median(times["after"]), len(times["after"]), torch.get_num_threads(),
                    torch.backends.cpu.get_cpu_capability(), times)


def local_device(quick: bool = True):
    """The calibrated `local` device, or a quick calibration of this machine (not saved) when there is none."""
    from effml.hardware import get_device
    from effml.hardware.catalog import DeviceError

    try:
        return get_device("local")
    except DeviceError:
        from effml.hardware.calibrate import CalibrateConfig, calibrate

        return calibrate(CalibrateConfig(quick=quick)).device
