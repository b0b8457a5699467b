"""Pruning masks that stay applied through fine-tuning, and the real storage of a sparse layer.

A `MaskSet` zeroes the pruned weights once and registers a gradient hook that zeroes their gradients, so
plain SGD (momentum, weight decay), Adam and AdamW leave them at exactly zero: with a zero gradient from the
start the momentum/Adam moments of those entries stay zero, and decoupled weight decay scales 0 to 0.
`MaskSet.apply()` re-zeroes after a step anyway (pass it as `fit(step_hook=...)` for optimizers that
move weights without a gradient).

Sparse storage (Deep Compression, Han et al. 2016, sec. 2): the non-zeros of a layer, flattened row-major,
are stored with the *relative* index (gap to the previous non-zero) in `index_bits` bits; a gap larger than
2^index_bits is bridged with filler zeros, so a gap d costs ceil(d / 2^index_bits) entries. Each entry holds
one weight (`weight_bits`) and one relative index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def relative_index_entries(mask: torch.Tensor, index_bits: int) -> int:
    """Entries (non-zeros + filler zeros) of a flattened mask in relative-index format."""
    pos = torch.nonzero(mask.reshape(-1)).reshape(-1)  # (nnz,) positions
    if pos.numel() == 0:
        return 0
    gaps = torch.diff(pos, prepend=torch.tensor([-1]))  # (nnz,), first gap counts from position -1
    span = 2 ** index_bits
    return int(torch.sum((gaps + span - 1) // span))  # ceil(d / 2^bits) per gap


def relative_index_stream(mask: torch.Tensor, index_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored relative indices (each in [1, 2^bits]) with filler zeros, and which entries are fillers.

    A gap d becomes (d-1) // 2^bits fillers that each advance 2^bits, then the entry of the non-zero itself.
    Returns (gaps (E,), is_filler (E,) bool); the non-fillers are the non-zeros in row-major order.
    """
    pos = torch.nonzero(mask.reshape(-1)).reshape(-1)  # (nnz,)
    if pos.numel() == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool)
    span = 2 ** index_bits
    d = torch.diff(pos, prepend=torch.tensor([-1]))  # (nnz,)
    counts = (d - 1) // span + 1  # entries per non-zero
    last = torch.cumsum(counts, 0) - 1  # (nnz,) index of each non-zero's own entry
    gaps = torch.full((int(counts.sum()),), span, dtype=torch.long)
    gaps[last] = d - span * (counts - 1)
    filler = torch.ones_like(gaps, dtype=torch.bool)
    filler[last] = False
    return gaps, filler


def sparse_bits(mask: torch.Tensor, weight_bits: int, index_bits: int) -> int:
    """Bits to store a layer's non-zeros in relative-index format."""
    return relative_index_entries(mask, index_bits) * (weight_bits + index_bits)


@dataclass
class LayerMask:
    module: nn.Module
    mask: torch.Tensor  # bool, same shape as module.weight
    handle: object = None


class MaskSet:
    """Masks of `module.weight` by layer name; `attach()` keeps them through training, `detach()` stops."""

    def __init__(self, masks: dict[str, tuple[nn.Module, torch.Tensor]]):
        self.layers = {name: LayerMask(m, mask.bool()) for name, (m, mask) in masks.items()}

    def __len__(self) -> int:
        return len(self.layers)

    @torch.no_grad()
    def apply(self) -> None:
        for lm in self.layers.values():
            lm.module.weight.mul_(lm.mask)

    def attach(self) -> "MaskSet":
        """Zero the pruned weights and zero their gradients from now on."""
        self.apply()
        for lm in self.layers.values():
            if lm.handle is None:
                mask = lm.mask
                lm.handle = lm.module.weight.register_hook(lambda g, mask=mask: g * mask)
        return self

    def detach(self) -> None:
        for lm in self.layers.values():
            if lm.handle is not None:
                lm.handle.remove()
                lm.handle = None

    def sparsity(self) -> dict[str, float]:
        """Fraction of zeros per layer."""
        return {n: 1.0 - lm.mask.float().mean().item() for n, lm in self.layers.items()}

    def masks(self) -> dict[str, torch.Tensor]:
        return {n: lm.mask for n, lm in self.layers.items()}

    def total(self) -> tuple[int, int]:
        """(kept, total) weights over the masked layers."""
        kept = sum(int(lm.mask.sum()) for lm in self.layers.values())
        return kept, sum(lm.mask.numel() for lm in self.layers.values())
