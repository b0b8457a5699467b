"""Throughput vs batch size, each measurement next to its `local` prediction and the error in %.

It lives in `hardware` (above `measure`): it joins the timer of `effml.measure` with the count of
`effml.cost` and the prediction of `effml.hardware`, so `measure` itself depends on neither.

    res = bench(lambda b: resolve(model="effml.zoo:vgg", batch=b), [1, 8, 32])
    res.rows[0].p50, res.rows[0].prediction.time_s, res.rows[0].error_pct

For each batch: build the model and input, count it with `effml.profile` (on the very input timed),
predict it on the `local` device (if this machine was calibrated; otherwise the rows say so), then time it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

from effml.errors import ConfigError, EffmlError
from effml.measure.timing import MeasureConfig, Measurement, measure
from effml.progress import Progress



@dataclass
class BenchResult:
    name: str
    rows: list[Measurement]
    hw: str | None  # the device the predictions are for (None: no calibration)
    note: str = ""  # why there is no prediction, if there is none
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        r0 = self.rows[0] if self.rows else None
        return {"model": self.name, "hw": self.hw, "note": self.note,
                "threads": r0.threads if r0 else None, "cpu_capability": r0.cpu_capability if r0 else None,
                "measure_config": self.config, "results": [r.to_dict() for r in self.rows]}


@dataclass(frozen=True)
class PredictionSummary:
    """The few numbers of a Prediction worth printing beside a measurement (Measurement.prediction)."""

    hw: str
    time_s: float
    bound: str
    overhead_s: float
    compute_s: float
    memory_s: float
    lower_bound: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def prediction_summary(pred) -> PredictionSummary:
    """The summary of a hardware Prediction."""
    return PredictionSummary(pred.device, pred.time_s, pred.bound, pred.overhead_s, pred.compute_s, pred.memory_s,
                             pred.lower_bound)


def attach_prediction(m: Measurement, pred) -> Measurement:
    """Put the prediction beside the measurement: `m.error_pct` = (predicted - p50) / p50 x 100."""
    m.prediction = prediction_summary(pred)
    return m


def parse_batches(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; a one-line error naming --batch otherwise."""
    try:
        out = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--batch {text!r} must be comma-separated positive integers, e.g. 1,8,32") from None
    if not out or any(b <= 0 for b in out):
        raise ConfigError(f"--batch {text!r} must be comma-separated positive integers, e.g. 1,8,32")
    return out


def bench(make: Callable[[int], object], batches: list[int], *, config: MeasureConfig | None = None,
          hw: str | None = "local", dtype: str | None = None, progress: Progress | None = None,
          name: str | None = None) -> BenchResult:
    """`make(batch)` returns a ModelSpec-like object (.name, .model, .args, .kwargs) on a real device."""
    from effml.cost.counter import profile
    from effml.hardware import get_device, predict

    config = config or MeasureConfig()
    progress = progress or (lambda what, frac: None)
    device, note = None, ""
    if hw is not None:
        try:
            device = get_device(hw)
        except EffmlError as exc:
            note = str(exc)
    if device is not None:
        import torch

        cal_threads = device.meta.get("threads")
        if cal_threads and cal_threads != torch.get_num_threads():
            note = (f"{device.name} was calibrated with {cal_threads} threads but this run uses "
                    f"{torch.get_num_threads()}: re-run `effml calibrate --threads {torch.get_num_threads()}`")
    rows: list[Measurement] = []
    for i, b in enumerate(batches):
        spec = make(b)
        name = name or spec.name
        progress(f"{name} batch {b}", i / len(batches))
        pred = None
        if device is not None:
            prof = profile(spec.model, *spec.args, forward_kwargs=spec.kwargs)
            pred = predict(prof, device, dtype=dtype, batch=b)
        m = measure(spec.model, spec.args, forward_kwargs=spec.kwargs, batch=b, config=config)
        if pred is not None:
            attach_prediction(m, pred)
        rows.append(m)
    progress("done", 1.0)
    from dataclasses import asdict

    return BenchResult(name or "model", rows, device.name if device is not None else None, note, asdict(config))
