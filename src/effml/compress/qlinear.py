"""Linear (uniform) quantization math: scales, codes, fake-quant with a straight-through estimator.

A weight is viewed as (rows, groups, group_size): per-tensor = one group of everything, per-channel = one
group per output row, per-group = `group_size` consecutive inputs of a row (conv weights flattened to
(out, in*kh*kw)). Symmetric: codes in [-(2^(b-1) - 1), 2^(b-1) - 1] (restricted range: zero is exact and the
grid is symmetric), scale = max|w| / qmax. Asymmetric: codes in [0, 2^b - 1], scale = (max - min) / (2^b - 1),
integer zero point z = round(-min / scale), so 0.0 is exact too. Rounding to the nearest code makes the
error of every in-range value at most scale / 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from effml.errors import ConfigError

GRANULARITIES = ("tensor", "channel", "group")


@dataclass(frozen=True)
class QSpec:
    bits: int = 8
    symmetric: bool = True
    granularity: str = "channel"
    group_size: int | None = None

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits < 1:
            raise ConfigError(f"bits must be an integer >= 1, got {self.bits!r}")
        if self.symmetric and self.bits < 2:
            raise ConfigError("symmetric quantization needs bits >= 2 (1 bit has no symmetric grid with zero); "
                              "use symmetric=False for 1 bit")
        if self.bits > 16:
            raise ConfigError(f"bits must be <= 16 for integer codes, got {self.bits}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity {self.granularity!r} unknown; expected one of {GRANULARITIES}")
        if self.granularity == "group" and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ConfigError(f"granularity='group' needs group_size >= 1, got {self.group_size!r}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1


def grouped(w: torch.Tensor, spec: QSpec, name: str = "weight") -> torch.Tensor:
    """w viewed as (rows, groups, group_size)."""
    w2 = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(1, -1)  # (out, K)
    if spec.granularity == "tensor":
        return w2.reshape(1, 1, -1)
    if spec.granularity == "channel":
        return w2.reshape(w2.shape[0], 1, -1)
    if w2.shape[1] % spec.group_size:
        raise ConfigError(f"{name}: input size {w2.shape[1]} is not a multiple of group_size={spec.group_size}")
    return w2.reshape(w2.shape[0], -1, spec.group_size)


def qparams(w: torch.Tensor, spec: QSpec, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero), each (rows, groups, 1)."""
    g = grouped(w.detach(), spec, name)
    if spec.symmetric:
        scale = g.abs().amax(-1, keepdim=True) / spec.qmax
        zero = torch.zeros_like(scale)
    else:
        lo = g.amin(-1, keepdim=True).clamp(max=0)  # include 0 in the range so it stays exact
        hi = g.amax(-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / (spec.qmax - spec.qmin)
        zero = torch.round(spec.qmin - lo / scale.clamp(min=1e-12))
    return scale.clamp(min=1e-12), zero


def quantize(w: torch.Tensor, spec: QSpec, scale=None, zero=None, name: str = "weight") -> torch.Tensor:
    """Integer codes of w (int32, w's shape)."""
    if scale is None:
        scale, zero = qparams(w, spec, name)
    g = grouped(w, spec, name)
    q = torch.clamp(torch.round(g / scale) + zero, spec.qmin, spec.qmax)
    return q.to(torch.int32).reshape(w.shape)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QSpec) -> torch.Tensor:
    g = grouped(codes.float(), spec)
    return ((g - zero) * scale).reshape(codes.shape)


def fake_quant(w: torch.Tensor, spec: QSpec, name: str = "weight") -> torch.Tensor:
    scale, zero = qparams(w, spec, name)
    return dequantize(quantize(w, spec, scale, zero, name), scale, zero, spec)


def storage_bits(numel: int, rows: int, spec: QSpec) -> int:
    """Codes at `bits` each + an fp32 scale per group (+ a zero point at `bits` when asymmetric)."""
    groups = 1 if spec.granularity == "tensor" else rows * (1 if spec.granularity == "channel"
                                                             else numel // rows // spec.group_size)
    return numel * spec.bits + groups * (32 + (0 if spec.symmetric else spec.bits))


class LinearFakeQuant(nn.Module):
    """A parametrization: weight -> fake_quant(weight) forward, identity gradient (straight-through)."""

    def __init__(self, spec: QSpec, name: str = "weight"):
        super().__init__()
        self.spec, self.name = spec, name

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = fake_quant(w, self.spec, self.name)
        if not (torch.is_grad_enabled() and w.requires_grad):
            return q  # exact quantized values (w + (q - w) would round)
        return w + (q - w).detach()

    def codes(self, w: torch.Tensor) -> dict:
        scale, zero = qparams(w, self.spec, self.name)
        return {"codes": quantize(w, self.spec, scale, zero, self.name), "scale": scale, "zero": zero,
                "spec": self.spec}
