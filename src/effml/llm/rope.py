"""Rotary position embeddings (Su et al. 2021) in transformers' Llama rotate-half layout, and the long-context
frequency scalings a checkpoint's config.json may name (`rope_scaling`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from effml.errors import ConfigError

ROPE_SCALINGS = ("linear", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """Long-context RoPE frequency scaling, as a checkpoint's config.json `rope_scaling` names it.

    linear (position interpolation, Chen et al. 2023): every frequency divided by `factor`. llama3 (Llama 3.1/3.2's
    config): wavelengths shorter than original_max_position_embeddings / high_freq_factor keep their frequency,
    those longer than original_max_position_embeddings / low_freq_factor are divided by `factor`, and the band
    between is interpolated linearly in original_max_position_embeddings / wavelength. Neither scales the attention
    logits (yarn and dynamic NTK, which do or which depend on the sequence length, are refused by the loader)."""
    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.kind not in ROPE_SCALINGS:
            raise ConfigError(f"RopeScaling.kind {self.kind!r} is not implemented; expected one of "
                              f"{', '.join(ROPE_SCALINGS)}")
        if not self.factor > 0:
            raise ConfigError(f"RopeScaling.factor must be > 0, got {self.factor}")
        if self.kind == "llama3" and not (0 < self.low_freq_factor < self.high_freq_factor
                                          and self.original_max_position_embeddings > 0):
            raise ConfigError(f"RopeScaling llama3 needs 0 < low_freq_factor < high_freq_factor and "
                              f"original_max_position_embeddings > 0, got {self.low_freq_factor}, "
                              f"{self.high_freq_factor}, {self.original_max_position_embeddings}")

    def apply(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """The scaled frequencies (hd/2,) from the unscaled ones."""
        if self.kind == "linear":
            return inv_freq / self.factor
        ctx = self.original_max_position_embeddings
        wavelen = 2 * math.pi / inv_freq
        smooth = (ctx / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        band = (1 - smooth) * inv_freq / self.factor + smooth * inv_freq
        out = torch.where(wavelen > ctx / self.low_freq_factor, inv_freq / self.factor, inv_freq)
        return torch.where((wavelen >= ctx / self.high_freq_factor) & (wavelen <= ctx / self.low_freq_factor),
                           band, out)


class RoPE(nn.Module):
    """Rotary embeddings in the rotate-half layout of transformers' Llama (what the GGUF loader restores)."""

    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling | None = None):
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # (hd/2,)
        if scaling is not None:
            inv = scaling.apply(inv)
        self.register_buffer("inv_freq", inv, persistent=False)
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin (max_len, hd), built once

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._table is not None and int(positions.max()) < self._table[0].shape[0]:
            cos, sin = self._table  # the same values, looked up: a decode step computes no trig
            return cos[positions], sin[positions]  # (B, T, hd)
        freqs = positions.float()[..., None] * self.inv_freq  # (B, T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd)
        return emb.cos(), emb.sin()

    def build_table(self, max_len: int) -> None:
        cos, sin = self.forward(torch.arange(max_len)[None])  # (1, max_len, hd)
        self._table = (cos[0], sin[0])
