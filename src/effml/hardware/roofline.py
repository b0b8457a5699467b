"""Roofline time of one op call on one device.

    time = overhead(category) + max(FLOPs / (peak(dtype) x eta_c(I)), bytes / (bw(bytes) x eta_m))

For catalog devices eta_c = eta_m = 1, overhead = 0 and bw is the datasheet figure: the textbook
roofline, a lower bound on time. For `local`, `effml calibrate` measures a per-category overhead, a
bandwidth-vs-working-set curve (caches are faster than DRAM) and per-category (or per-aten-op)
efficiencies, the compute one possibly falling with intensity I = FLOPs/bytes, so the same formula
predicts measured eager-PyTorch latency.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from effml.hardware.catalog import Device

FLOAT_DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8")
MODULE_CALL = "module_call"  # overhead_s key: Python cost of one nn.Module __call__ (eager frameworks)


@dataclass(frozen=True)
class OpCost:
    """Seconds of one op call: its compute term, memory term and fixed overhead."""

    compute_s: float
    memory_s: float
    overhead_s: float = 0.0

    @property
    def roofline_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def time_s(self) -> float:
        return self.overhead_s + self.roofline_s

    @property
    def bound(self) -> str:
        """'compute' when FLOPs / peak >= bytes / bandwidth, else 'memory'; 'none' for a
        call that neither computes nor moves bytes (a view: only its overhead, if any)."""
        if self.compute_s == 0 and self.memory_s == 0:
            return "none"
        return "compute" if self.compute_s >= self.memory_s else "memory"


def bandwidth_at(device: Device, nbytes: float) -> float:
    """Bytes/s for an op that moves `nbytes`: on the calibrated curve if any, else the datasheet figure."""
    curve = device.bw_curve.value if device.bw_curve is not None else None
    return curve_at(curve, nbytes) if curve else device.bandwidth


def curve_at(curve: list, nbytes: float) -> float:
    """Log-log interpolation on [[bytes, bytes/s], ...] (ascending), flat beyond both ends."""
    sizes = [p[0] for p in curve]
    if nbytes <= sizes[0]:
        return float(curve[0][1])
    if nbytes >= sizes[-1]:
        return float(curve[-1][1])
    i = bisect.bisect_right(sizes, nbytes)
    (x0, y0), (x1, y1) = curve[i - 1], curve[i]
    t = (math.log(nbytes) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return float(math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0))))


def _lookup(table: dict, category: str, op: str | None):
    """Most specific calibrated entry: the aten op ("aten.max_pool2d"), its category, then "default"."""
    for key in (op, category, "default"):
        if key is not None and key in table:
            return table[key]
    return None


def overhead(device: Device, category: str, op: str | None = None) -> float:
    """Fixed seconds per op call (0 for catalog devices: a pure roofline)."""
    fig = _lookup(device.overhead_s, category, op)
    return float(fig.value) if fig is not None else 0.0


def compute_efficiency(eff: dict, intensity: float, nbytes: float = 1e6) -> float:
    """Fraction of peak FLOP/s: eta_max, or eta_max I^p / (I^p + I_half^p) when calibration found that
    low-intensity calls (a GEMM with few rows) run further below peak (I = FLOPs / bytes). With `r`, the
    knee moves with the call's bytes, I_half x (bytes / 1 MB)^r: a 16-row GEMM whose 9 MB of weights
    stream through the caches runs further below peak than one whose 0.3 MB stay in L2. The bytes are
    clamped to the range calibration measured (`bytes_range`)."""
    eta = float(eff.get("compute", 1.0))
    i_half = eff.get("i_half")
    if not i_half or intensity == float("inf"):
        return eta
    p = float(eff.get("p", 1.0))
    lo, hi = eff.get("bytes_range", (1.0, float("inf")))
    knee = float(i_half) * (min(max(nbytes, lo), hi) / 1e6) ** float(eff.get("r", 0.0))  # no extrapolation
    x = max(intensity, 1e-6) ** p
    return eta * x / (x + knee ** p)


def efficiency(device: Device, category: str, op: str | None = None,
               intensity: float = float("inf"), nbytes: float = 1e6) -> tuple[float, float]:
    """(fraction of peak FLOP/s, fraction of bandwidth) the op reaches; (1, 1) if uncalibrated."""
    fig = _lookup(device.efficiency, category, op)
    if fig is None:
        return 1.0, 1.0
    return compute_efficiency(fig.value, intensity, nbytes), float(fig.value.get("memory", 1.0))


def fresh_alloc_s(device: Device, category: str, op: str | None, written: float) -> float:
    """Seconds the OS spends mapping and zeroing fresh pages for a large new output.

    glibc serves allocations above its mmap threshold (at most 32 MiB on 64-bit) with mmap, and PyTorch's
    CPU allocator does not cache, so every such output page-faults on first touch (measured by
    calibration). In-place ops (name ending in '_') and views allocate nothing.
    """
    fig = device.fresh_alloc
    if fig is None or category == "view" or (op or "").endswith("_"):
        return 0.0
    if written < fig.value["threshold_bytes"]:
        return 0.0
    return written / fig.value["bytes_per_s"]


def op_cost(device: Device, category: str, dtype: str, flops: float, nbytes: float, op: str | None = None,
            written: float = 0.0) -> OpCost:
    """Roofline cost of one op call; `dtype` must be one the device has (peak_flops raises otherwise).

    `written`: bytes of the output, for the fresh-allocation cost of calibrated CPUs (0: ignore).
    """
    eta_c, eta_m = efficiency(device, category, op, flops / nbytes if nbytes else float("inf"), nbytes)
    compute = flops / (device.peak_flops(dtype) * eta_c) if flops else 0.0
    memory = nbytes / (bandwidth_at(device, nbytes) * eta_m) if nbytes else 0.0
    return OpCost(compute, memory, overhead(device, category, op) + fresh_alloc_s(device, category, op, written))
