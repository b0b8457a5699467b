"""Does the model fit? Weights + activations + KV cache against the device's memory.

GPUs and CPUs: everything against main memory (GB = 1e9 B). MCUs (MCUNet's setting): the weights live in
flash and the activations (plus any KV cache) in SRAM; each is checked on its own, and a miss says by how
many bytes and by what factor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from effml.hardware.catalog import Device
from effml.units import DTYPE_BYTES, fmt_bytes


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
    weights_note: str = ""  # how quantized weights are stored (stored_weights), empty for plain dtypes

    @property
    def fits(self) -> bool:
        return all(c.fits for c in self.checks)

    @property
    def message(self) -> str:
        return "; ".join(c.message for c in self.checks)

    def to_dict(self) -> dict:
        return {"fits": self.fits, "weights_bytes": self.weights_bytes, "activation_bytes": self.activation_bytes,
                "kv_cache_bytes": self.kv_cache_bytes, "checks": [c.to_dict() for c in self.checks],
                "message": self.message, "weights_note": self.weights_note}


INT4_GROUP = 128  # weights per quantization group (GPTQ's and AWQ's default, "g128")
GROUP_PARAM_BYTES = 2 + 0.5  # per group: an fp16 scale and a 4-bit zero point (GPTQ/AWQ pack qzeros 8 per int32)
EMBEDDING_BYTES = 2  # quantizers leave the embeddings and the output head in fp16


@dataclass(frozen=True)
class StoredWeights:
    """The bytes a checkpoint of the weights holds, and how it stores them (empty note: plain dtype)."""

    bytes: float
    note: str = ""


def stored_weights(params: int, dtype: str, embedding_params: int = 0, group: int = INT4_GROUP) -> StoredWeights:
    """Weights as a real checkpoint stores them. Float dtypes: params x bytes. int8/int4 (weight-only, as GPTQ,
    AWQ, torchao store them): the embedding and output-head weights stay fp16; int4 (GPTQ/AWQ layout: qweight,
    fp16 scales, 4-bit packed qzeros) adds per group of `group` weights a 16-bit scale and a 4-bit zero:
    4 + 20/128 = 4.156 bits per weight at g128 (the per-input-row g_idx and int8's one scale per output channel
    are < 0.1% of the bytes and not counted)."""
    per = DTYPE_BYTES[dtype]
    if dtype not in ("int4", "int8"):
        return StoredWeights(params * per)
    quantized = params - embedding_params
    if dtype == "int4":
        per = per + GROUP_PARAM_BYTES / group
        how = f"int4 g{group} with an fp16 scale + 4-bit zero per group: {8 * per:g} bits/weight"
    else:
        how = "int8 per-channel"
    return StoredWeights(quantized * per + embedding_params * EMBEDDING_BYTES,
                         f"{how}; {embedding_params:,} embedding/output-head weights kept in fp16")


def check_fit(device: Device, weights_bytes: float, activation_bytes: float, kv_cache_bytes: float = 0.0,
              weights_note: str = "") -> Fit:
    """Weights + activations + KV cache vs memory; MCUs: weights vs flash, the rest vs SRAM."""
    if device.kind == "mcu":
        checks = (FitCheck("flash", weights_bytes, float(device.flash_bytes.value), True),
                  FitCheck("SRAM", activation_bytes + kv_cache_bytes, float(device.sram_bytes.value), True))
    else:
        checks = (FitCheck("memory", weights_bytes + activation_bytes + kv_cache_bytes,
                           float(device.memory_bytes.value)),)
    return Fit(weights_bytes, activation_bytes, kv_cache_bytes, checks, weights_note)
