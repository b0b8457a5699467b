"""The values of attention masks built on the meta device, so the counter can count the pairs they let through.

A meta tensor has a shape and no values, so an explicit attention mask on meta says nothing about which
(query, key) pairs it keeps. But masks are built from index tensors: transformers' `sdpa_mask` compares
`arange(L)` against `arange(S)` (causal: kv <= q; sliding window W: kv > q - W; chunked, padding ...). Those
values do not depend on the model's weights or inputs, so `Shadows` replays such ops on the CPU: an op gets a
CPU "shadow" when it makes values out of nothing (arange, full, ones, zeros, scalar_tensor) or when every
tensor it reads has a shadow. A mask reaching `scaled_dot_product_attention` with a shadow is then counted
exactly. Shadows are kept only for tensors of at most `MAX_BYTES` (the bool L x S mask of a 16k sequence),
float ones only up to `MAX_FLOAT_BYTES` (an additive fp32 mask of a 4k sequence: a zeros_like of activations is
not worth copying); beyond that the mask is unknown and the counter charges every pair (and says so).
"""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

from effml.cost.registry import tensors

aten = torch.ops.aten
MAX_BYTES = 1 << 28  # 16384 x 16384 bool: 256 MiB per intermediate
MAX_FLOAT_BYTES = 1 << 26  # 4096 x 4096 fp32: 64 MiB
_SOURCES = {aten.arange, aten.full, aten.ones, aten.zeros, aten.scalar_tensor, aten.new_ones, aten.new_zeros,
            aten.new_full, aten.ones_like, aten.zeros_like, aten.full_like}


def _cpu(x):
    """Arguments with the device moved to the CPU (factory kwargs, `to` targets)."""
    if isinstance(x, torch.device) and x.type == "meta":
        return torch.device("cpu")
    return x


class Shadows:
    """CPU values of the small meta tensors that do not depend on data (see the module docstring)."""

    def __init__(self, max_bytes: int | None = None, max_float_bytes: int | None = None):
        self.max_bytes = MAX_BYTES if max_bytes is None else max_bytes
        self.max_float_bytes = MAX_FLOAT_BYTES if max_float_bytes is None else max_float_bytes
        self.values = WeakIdKeyDictionary()
        self.unknown = 0  # explicit masks that reached attention with unknown values (all pairs counted)

    def get(self, t) -> torch.Tensor | None:
        return self.values.get(t) if isinstance(t, torch.Tensor) else None

    def record(self, func, args, kwargs, out) -> None:
        """Called after each meta op: compute its CPU shadow when all it reads is known."""
        outs = [t for t in tensors(out) if t.device.type == "meta"]
        if not outs or any(t.numel() * t.element_size() > (self.max_float_bytes if t.is_floating_point()
                                                           else self.max_bytes) for t in outs):
            return
        # sources make values from shapes alone (ones_like reads only its input's shape); others need every input
        ins = tensors((args, kwargs))
        if func.overloadpacket not in _SOURCES and (not ins or any(self.get(t) is None for t in ins)):
            return

        def sub(x):
            if isinstance(x, torch.Tensor):
                known = self.get(x)
                return known if known is not None else torch.empty(x.shape, dtype=x.dtype)
            if isinstance(x, (list, tuple)):
                return type(x)(sub(y) for y in x)
            return _cpu(x)
        try:
            res = func(*sub(tuple(args)), **{k: sub(v) for k, v in kwargs.items()})
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            return
        for t, r in zip(outs, tensors(res)):
            self.values[t] = r

    def scores(self, mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[int, float] | None:
        """(pairs, keys): the (query, key) pairs the mask lets through, summed over the query's leading dims
        (batch x heads), and the share of key positions some query attends (a decode step past a sliding window
        reads W of its S cached keys); None when the mask's values are unknown. Bool masks keep True; float
        masks keep entries above -inf."""
        value = mask if mask.device.type != "meta" else self.get(mask)
        if value is None:
            self.unknown += 1
            return None
        keep = value if value.dtype == torch.bool else value > float("-inf")
        lead = tuple(q.shape[:-2]) + (q.shape[-2], k.shape[-2])  # (..., L, S) the mask broadcasts to
        keep = keep.reshape((1,) * (len(lead) - keep.dim()) + tuple(keep.shape))
        broadcast = 1
        for full, own in zip(lead, keep.shape):
            broadcast *= full if own == 1 else 1
        keys = float(keep.any(dim=-2).float().mean()) if keep.numel() else 1.0
        return int(torch.count_nonzero(keep)) * broadcast, keys
