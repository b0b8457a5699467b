"""Does the model fit? Weights + activations + KV cache against the device's memory.

GPUs and CPUs: everything against main memory (GB = 1e9 B). MCUs (MCUNet's setting): the weights live in
flash and the activations (plus any KV cache) in SRAM; each is checked on its own, and a miss says by how
many bytes and by what factor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from effml.hardware.catalog import Device
from effml.units import fmt_bytes


@dataclass(frozen=True)
class FitCheck:
    """One memory (DRAM, SRAM or flash) against what has to live in it."""

    memory: str
    need_bytes: float
    have_bytes: float
    binary: bool = False  # MCU SRAM/flash are sized in KiB/MiB: print them that way

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.have_bytes

    @property
    def short_by_bytes(self) -> float:
        return max(0.0, self.need_bytes - self.have_bytes)

    @property
    def message(self) -> str:
        need, have = fmt_bytes(self.need_bytes, self.binary), fmt_bytes(self.have_bytes, self.binary)
        if self.fits:
            return f"{self.memory}: {need} of {have} ({self.need_bytes / self.have_bytes:.0%})"
        return (f"{self.memory}: needs {need} but has {have}: misses by {fmt_bytes(self.short_by_bytes, self.binary)} "
                f"({self.need_bytes / self.have_bytes:.2f}x the capacity)")

    def to_dict(self) -> dict:
        return {**asdict(self), "fits": self.fits, "short_by_bytes": self.short_by_bytes, "message": self.message}


@dataclass(frozen=True)
class Fit:
    weights_bytes: float
    activation_bytes: float
    kv_cache_bytes: float
    checks: tuple[FitCheck, ...]

    @property
    def fits(self) -> bool:
        return all(c.fits for c in self.checks)

    @property
    def message(self) -> str:
        return "; ".join(c.message for c in self.checks)

    def to_dict(self) -> dict:
        return {"fits": self.fits, "weights_bytes": self.weights_bytes, "activation_bytes": self.activation_bytes,
                "kv_cache_bytes": self.kv_cache_bytes, "checks": [c.to_dict() for c in self.checks],
                "message": self.message}


def check_fit(device: Device, weights_bytes: float, activation_bytes: float, kv_cache_bytes: float = 0.0) -> Fit:
    """Weights + activations + KV cache vs memory; MCUs: weights vs flash, the rest vs SRAM."""
    if device.kind == "mcu":
        checks = (FitCheck("flash", weights_bytes, float(device.flash_bytes.value), True),
                  FitCheck("SRAM", activation_bytes + kv_cache_bytes, float(device.sram_bytes.value), True))
    else:
        checks = (FitCheck("memory", weights_bytes + activation_bytes + kv_cache_bytes,
                           float(device.memory_bytes.value)),)
    return Fit(weights_bytes, activation_bytes, kv_cache_bytes, checks)
