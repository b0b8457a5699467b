"""Energy: Horowitz's 45 nm table (ISSCC 2014), per FLOP and per byte, scaled per device.

Per FLOP. A MAC is a multiply plus an add = 2 FLOPs, so energy per FLOP = (E_mul + E_add) / 2:
    fp32 (3.7 + 0.9) / 2 = 2.3 pJ     fp16/bf16 (1.1 + 0.4) / 2 = 0.75 pJ
    int32 (3.1 + 0.1) / 2 = 1.6 pJ    int8 (0.2 + 0.03) / 2 = 0.115 pJ
  bf16 takes the fp16 figures (same multiplier width class); tf32 and fp64 take fp32 (tf32 is an fp32
  datapath on the way in; fp64 is at least that); fp8 takes fp16's (no 45 nm figure; an upper bound);
  int4 takes int8's (an upper bound).
Per byte. A 32-bit read is 4 bytes: DRAM 640 / 4 = 160 pJ/B; 8 KB SRAM 5 / 4 = 1.25 pJ/B. GPUs and CPUs
  stream from DRAM/HBM; MCUs from on-chip SRAM/flash (SRAM figure).

Per-device scale factor. 45 nm arithmetic is not a 4 nm tensor core, and a CPU spends far more on
instruction overhead than on the add itself (Horowitz: ~70 pJ per instruction vs 0.9 pJ for an fp32 add).
So each device gets one documented factor that makes the table consistent with its power budget:

    scale = TDP / (peak_flops(ref dtype) x E_flop(ref dtype) + mem_bw x E_byte(level))

i.e. a device running at both its compute peak and its bandwidth draws exactly its TDP. Below 1: the
device is more efficient than 45 nm logic (modern GPUs, ~0.5); above 1: overhead dominates (CPUs, MCUs).
A device without a TDP gets scale 1 (the raw 45 nm table), and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from effml.hardware.catalog import Device

PJ = 1e-12

# Horowitz ISSCC 2014, 45 nm, pJ per operation.
HOROWITZ_PJ = {
    "int8_add": 0.03, "int32_add": 0.1, "fp16_add": 0.4, "fp32_add": 0.9,
    "int8_mul": 0.2, "int32_mul": 3.1, "fp16_mul": 1.1, "fp32_mul": 3.7,
    "sram_read_32b": 5.0, "dram_read_32b": 640.0,
}

# dtype -> Horowitz row whose (mul + add) / 2 is its energy per FLOP (see the module docstring)
_FLOP_ROW = {"fp64": "fp32", "fp32": "fp32", "tf32": "fp32", "bf16": "fp16", "fp16": "fp16", "fp8": "fp16",
             "int8": "int8", "int4": "int8", "int32": "int32"}
_BYTE_ROW = {"dram": "dram_read_32b", "sram": "sram_read_32b"}


def energy_per_flop(dtype: str) -> float:
    """Joules per FLOP at 45 nm: (E_mul + E_add) / 2 of the dtype's row (fp32 for unknown dtypes)."""
    row = _FLOP_ROW.get(dtype, "fp32")
    return (HOROWITZ_PJ[f"{row}_mul"] + HOROWITZ_PJ[f"{row}_add"]) / 2 * PJ


def energy_per_byte(level: str) -> float:
    """Joules per byte moved at 45 nm: a 32-bit read / 4."""
    return HOROWITZ_PJ[_BYTE_ROW[level]] / 4 * PJ


@dataclass(frozen=True)
class EnergyScale:
    factor: float
    source: str

    def to_dict(self) -> dict:
        return {"factor": self.factor, "source": self.source}


def energy_scale(device: Device) -> EnergyScale:
    """The per-device factor applied to the 45 nm table (derivation in the module docstring)."""
    ref = device.energy_ref_dtype
    p45 = device.peak_flops(ref) * energy_per_flop(ref) + device.bandwidth * energy_per_byte(device.memory_level)
    if device.tdp is None:
        return EnergyScale(1.0, "no TDP known for this device: raw Horowitz 45 nm table (scale 1)")
    f = device.tdp / p45
    return EnergyScale(f, f"TDP {device.tdp:g} W / 45 nm power at peak {ref} compute + full "
                          f"{device.memory_level} bandwidth ({p45:.3g} W) = {f:.3g}")


@dataclass(frozen=True)
class Energy:
    """Joules split into the arithmetic term and the data-movement term."""

    compute: float
    memory: float

    @property
    def total(self) -> float:
        return self.compute + self.memory

    def to_dict(self) -> dict:
        return {"compute": self.compute, "memory": self.memory, "total": self.total}


def op_energy(flops: float, nbytes: float, dtype: str, level: str, scale: float) -> Energy:
    """FLOPs x E_flop(dtype) + bytes x E_byte(level), both times the device factor."""
    return Energy(flops * energy_per_flop(dtype) * scale, nbytes * energy_per_byte(level) * scale)
