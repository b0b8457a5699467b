"""Profile + device -> Prediction: roofline time per op call, bound, energy, $ per 1M inferences, fit.

Predicts per op call from `profile.events` (summing first would average the intensities away): each call
gets max(compute, memory) + overhead (`roofline.op_cost`), its bound, and its energy split. The totals
are sums over calls; the model's bound is the side (compute or memory) that holds more of the time.

`dtype` re-prices a profile in another dtype: float op calls are costed at that dtype's peak and their
bytes scaled by bytes(dtype) / bytes(counted dtype) (fp32-counted -> int8 moves a quarter). Integer and
bool bookkeeping calls (indices, masks) keep their bytes and are costed at the run dtype's peak.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from effml.errors import ConfigError
from effml.hardware.catalog import Device, DeviceError, get_device
from effml.hardware.energy import Energy, EnergyScale, energy_scale, op_energy
from effml.hardware.capacity import Fit, StoredWeights, check_fit, stored_weights
from effml.hardware.kernels import kernel_cost, predict_kernel_times
from effml.hardware.roofline import (
    FLOAT_DTYPES,
    MODULE_CALL,
    OpCost,
    fresh_alloc_s,
    op_cost,
)
from effml.units import DTYPE_BYTES


@dataclass(frozen=True)
class OpPrediction:
    """One op call on the device."""

    index: int
    op: str
    category: str
    module: str
    dtype: str
    flops: float
    bytes: float
    cost: OpCost
    energy: Energy

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0

    def to_dict(self) -> dict:
        return {"index": self.index, "op": self.op, "category": self.category, "module": self.module,
                "dtype": self.dtype, "flops": self.flops, "bytes": self.bytes, "intensity": self.intensity,
                "time_s": self.cost.time_s, "compute_s": self.cost.compute_s, "memory_s": self.cost.memory_s,
                "overhead_s": self.cost.overhead_s, "bound": self.cost.bound, "energy_j": self.energy.to_dict()}


@dataclass
class Prediction:
    """What one forward (or step) of a profile costs on one device. `batch` inferences per step."""

    device: str
    device_key: str
    dtype: str
    batch: int
    ops: list[OpPrediction]
    energy_scale: EnergyScale
    fit: Fit
    ridge_point: float
    price_per_hour: float | None
    peak_flops: float = 0.0  # dense peak of the run dtype (roof of the roofline)
    bandwidth: float = 0.0  # main-memory bytes/s (the slope)
    module_overhead_s: float = 0.0
    unsupported: dict[str, int] = field(default_factory=dict)

    # ---- totals --------------------------------------------------------------------------------
    @property
    def time_s(self) -> float:
        return sum(o.cost.time_s for o in self.ops) + self.module_overhead_s

    @property
    def overhead_s(self) -> float:
        return sum(o.cost.overhead_s for o in self.ops) + self.module_overhead_s

    def _bound_time(self, bound: str) -> float:
        return sum(o.cost.roofline_s for o in self.ops if o.cost.bound == bound)

    @property
    def compute_s(self) -> float:
        """Roofline seconds of the compute-bound calls."""
        return self._bound_time("compute")

    @property
    def memory_s(self) -> float:
        """Roofline seconds of the memory-bound calls."""
        return self._bound_time("memory")

    @property
    def bound(self) -> str:
        """'compute' or 'memory': whichever kind of call holds more of the roofline time."""
        return "compute" if self.compute_s >= self.memory_s else "memory"

    @property
    def flops(self) -> float:
        return sum(o.flops for o in self.ops)

    @property
    def bytes(self) -> float:
        return sum(o.bytes for o in self.ops)

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0

    @property
    def energy(self) -> Energy:
        return Energy(sum(o.energy.compute for o in self.ops), sum(o.energy.memory for o in self.ops))

    @property
    def usd_per_1m(self) -> float | None:
        """time per inference x $/hour x 1e6 (None for devices without an hourly price)."""
        if self.price_per_hour is None:
            return None
        return self.time_s / self.batch * 1e6 * self.price_per_hour / 3600

    @property
    def fits(self) -> bool:
        return self.fit.fits

    @property
    def lower_bound(self) -> bool:
        """True when some op had no FLOP formula: the compute terms miss those calls."""
        return bool(self.unsupported)

    def by_category(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for o in self.ops:
            row = out.setdefault(o.category, {"calls": 0, "time_s": 0.0, "flops": 0.0, "bytes": 0.0,
                                              "compute_bound_calls": 0})
            row["calls"] += 1
            row["time_s"] += o.cost.time_s
            row["flops"] += o.flops
            row["bytes"] += o.bytes
            row["compute_bound_calls"] += o.cost.bound == "compute"
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["time_s"]))

    def to_dict(self, ops: bool = False) -> dict:
        e = self.energy
        d = {"device": self.device, "device_key": self.device_key, "dtype": self.dtype, "batch": self.batch,
             "time_s": self.time_s, "time_per_inference_s": self.time_s / self.batch,
             "throughput_per_s": self.batch / self.time_s if self.time_s else None,
             "bound": self.bound, "compute_s": self.compute_s, "memory_s": self.memory_s,
             "overhead_s": self.overhead_s, "flops": self.flops, "bytes": self.bytes, "intensity": self.intensity,
             "ridge_point": self.ridge_point, "peak_flops": self.peak_flops, "bandwidth": self.bandwidth,
             "energy_j": {**e.to_dict(), "per_inference": e.total / self.batch},
             "energy_scale": self.energy_scale.to_dict(),
             "power_w": e.total / self.time_s if self.time_s else None,
             "usd_per_1m": self.usd_per_1m, "price_per_hour": self.price_per_hour,
             "fits": self.fit.fits, "fit": self.fit.to_dict(), "lower_bound": self.lower_bound,
             "unsupported": dict(self.unsupported), "calls": len(self.ops), "by_category": self.by_category()}
        if ops:
            d["ops"] = [o.to_dict() for o in self.ops]
        return d


def _kernel_times(profile, device: Device, run: str) -> list[float | None]:
    """Seconds per event from the device's kernel models (`local` after calibration), None where none
    applies: other devices, other dtypes than the fp32 the models were measured in, uncovered ops."""
    if not device.kernels or run != "fp32":
        return [None] * len(profile.events)
    calls = []
    for ev in profile.events:
        f, b = float(ev.flops or 0), float(ev.bytes_read + ev.bytes_written)
        base = op_cost(device, ev.category, "fp32", f, b, ev.op).time_s if ev.dtype == "fp32" else 0.0
        calls.append((ev.op, ev.args, f, b, base) if ev.dtype == "fp32" else ("", None, 0.0, 0.0, 0.0))
    return predict_kernel_times(device, calls)


def _run_dtype(profile, dtype: str | None) -> str:
    if dtype is not None:
        if dtype not in DTYPE_BYTES:
            raise ConfigError(f"dtype {dtype!r} unknown; expected one of {', '.join(DTYPE_BYTES)}")
        return dtype
    by_flops: Counter = Counter()
    for ev in profile.events:
        if ev.dtype in FLOAT_DTYPES:
            by_flops[ev.dtype] += (ev.flops or 0) + 1
    return by_flops.most_common(1)[0][0] if by_flops else "fp32"


def predict(profile, hw: "str | Device", dtype: str | None = None, batch: int | None = None, *,
            kv_cache_bytes: float = 0.0, price_per_hour: float | None = None) -> Prediction:
    """Roofline prediction of `profile` on `hw` (a Device or a name for `get_device`).

    dtype: price float ops in this dtype (default: the dtype the profile was counted in).
    batch: inferences in one profiled step (default profile.meta['batch'] or 1), for $ and energy per inference.
    kv_cache_bytes: a KV cache held during the step (counted in `fit`; its reads are already in the events).
    price_per_hour: override the catalog's $/hour.
    """
    device = get_device(hw)
    run = _run_dtype(profile, dtype)
    device.peak_flops(run)  # a dtype the device lacks is an error, never a silent fallback
    batch = int(batch if batch is not None else profile.meta.get("batch", 1) or 1)
    if batch <= 0:
        raise ConfigError(f"batch must be positive, got {batch}")
    scale = energy_scale(device)
    kernel_s = _kernel_times(profile, device, run)
    ops: list[OpPrediction] = []
    counted_float = None
    for i, ev in enumerate(profile.events):
        nbytes = float(ev.bytes_read + ev.bytes_written)
        written = float(ev.bytes_written)
        if ev.dtype in FLOAT_DTYPES:
            counted_float = counted_float or ev.dtype
            nbytes *= DTYPE_BYTES[run] / DTYPE_BYTES[ev.dtype]
            written *= DTYPE_BYTES[run] / DTYPE_BYTES[ev.dtype]
            cdt = run
        else:
            cdt = ev.dtype if device.has_dtype(ev.dtype) else run
        flops = float(ev.flops or 0)
        cost = op_cost(device, ev.category, cdt, flops, nbytes, ev.op, written)
        if kernel_s[i] is not None:
            cost = kernel_cost(cost, kernel_s[i], fresh_alloc_s(device, ev.category, ev.op, written))
        en = op_energy(flops, nbytes, cdt, device.memory_level, scale.factor)
        ops.append(OpPrediction(i, ev.op, ev.category, ev.modules[-1] if ev.modules else "", cdt, flops, nbytes,
                                cost, en))
    # memory fit: weights and peak activations at the run dtype
    act_scale = DTYPE_BYTES[run] / DTYPE_BYTES[counted_float] if counted_float else 1.0
    if dtype is None and profile.param_bytes:
        stored = StoredWeights(float(profile.param_bytes))
    else:  # int4/int8: what a quantized checkpoint holds (group scales, fp16 embeddings)
        stored = stored_weights(profile.params, run, int(profile.meta.get("embedding_params", 0)))
    fit = check_fit(device, stored.bytes, profile.peak_activation_bytes * act_scale, kv_cache_bytes, stored.note)
    module_calls = sum(info.calls for name, info in profile.modules.items())
    mod_fig = device.overhead_s.get(MODULE_CALL)
    module_overhead = module_calls * float(mod_fig.value) if mod_fig is not None else 0.0
    price = price_per_hour if price_per_hour is not None else device.price_per_hour
    return Prediction(device.name, device.key, run, batch, ops, scale, fit, device.ridge_point(run), price,
                      device.peak_flops(run), device.bandwidth, module_overhead, dict(profile.unsupported))


def predict_many(profile, devices, dtype: str | None = None, batch: int | None = None,
                 **kw) -> dict[str, Prediction]:
    """Side by side: one Prediction per device name (all errors raised before any work is shown)."""
    devs = [get_device(d) for d in devices]
    if not devs:
        raise DeviceError("no device given: name at least one (see `effml hw list`)")
    return {d.key: predict(profile, d, dtype, batch, **kw) for d in devs}
