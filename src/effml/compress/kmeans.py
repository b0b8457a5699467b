"""k-means weight sharing (Deep Compression, Han et al. 2016, sec. 3): a codebook of 2^bits centroids per layer.

Centroids start linearly spaced between the layer's min and max weight (the paper's best initialisation:
it keeps the rare large weights), then Lloyd iterations in 1-D: nearest centroid by bucketing against the
sorted centroids' midpoints (O(n log k), no n x k distance matrix), then each centroid = mean of its
weights (an empty cluster keeps its value). Pruned weights (mask False) are not clustered and stay 0.

`KMeansQuant` is the parametrization that makes a layer use its codebook:
  - mode "frozen": weight = codebook[index] (post-training);
  - mode "centroids": the codebook is a Parameter; dL/dc_k = sum of dL/dw over the weights in cluster k
    (the paper's fine-tuning of shared weights);
  - mode "ste": quantization-aware training with a straight-through estimator: the latent fp32 weights are
    trained, each training forward re-estimates the centroids as the cluster means of the latent weights and
    reassigns them (MIT 6.5940 lab 2), and the forward uses codebook[index] with an identity gradient.
Storage: `bits` per (stored) weight + 32 bits per centroid.
"""

from __future__ import annotations

import torch
from torch import nn

from effml.errors import ConfigError

MODES = ("frozen", "centroids", "ste")


def nearest(codebook: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for every element of x (x's shape, int64)."""
    order = torch.argsort(codebook)
    c = codebook[order]  # (k,) ascending
    mids = (c[1:] + c[:-1]) / 2  # (k-1,)
    return order[torch.bucketize(x.contiguous(), mids)]


def _means(x: torch.Tensor, labels: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    k = old.numel()
    sums = torch.zeros(k, dtype=x.dtype).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    return torch.where(counts > 0, sums / counts.clamp(min=1), old)


@torch.no_grad()
def kmeans_1d(x: torch.Tensor, k: int, iters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids (k,), labels (n,)) of a 1-D sample, linear initialisation, until no label changes."""
    x = x.detach().reshape(-1).float()
    if k < 1:
        raise ConfigError(f"k-means needs at least 1 centroid, got {k}")
    if x.numel() == 0:
        return torch.zeros(k), torch.zeros(0, dtype=torch.long)
    c = torch.linspace(float(x.min()), float(x.max()), k)  # (k,)
    labels = nearest(c, x)
    for _ in range(iters):
        c = _means(x, labels, c)
        new = nearest(c, x)
        if torch.equal(new, labels):
            break
        labels = new
    return c, labels


class KMeansQuant(nn.Module):
    """Parametrization weight -> codebook[index] (masked), in one of MODES."""

    def __init__(self, w: torch.Tensor, bits: int, mask: torch.Tensor | None = None, mode: str = "frozen",
                 iters: int = 50, k: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"k-means mode {mode!r} unknown; expected one of {MODES}")
        k = 2 ** bits if k is None else k
        if not 1 <= k <= 2 ** bits:
            raise ConfigError(f"k-means with {bits} bits holds 1..{2 ** bits} centroids, got k={k}")
        self.bits, self.mode = bits, mode
        mask = (w != 0) if mask is None else mask.bool()
        codebook, labels = kmeans_1d(w[mask], k, iters)
        index = torch.zeros(w.shape, dtype=torch.long)
        index[mask] = labels
        if mode == "centroids":
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
        self.register_buffer("index", index.to(torch.uint8 if bits <= 8 else torch.int32))
        self.register_buffer("mask", mask)

    def shared(self) -> torch.Tensor:
        return self.codebook[self.index.long()] * self.mask

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mode == "ste":
            if self.training:
                with torch.no_grad():
                    flat = w[self.mask]
                    labels = self.index.long()[self.mask]
                    self.codebook.copy_(_means(flat, labels, self.codebook))  # centroids follow the weights
                    self.index[self.mask] = nearest(self.codebook, flat).to(self.index.dtype)
            if torch.is_grad_enabled() and w.requires_grad:
                return w + (self.shared() - w).detach()
        return self.shared()

    def codes(self, w: torch.Tensor | None = None) -> dict:
        return {"codebook": self.codebook.detach().clone(), "index": self.index.clone(), "mask": self.mask.clone()}


def storage_bits(n_stored: int, bits: int) -> int:
    """Index bits of the stored weights + the fp32 codebook."""
    return n_stored * bits + (2 ** bits) * 32
