"""The decode roofline: a memory-bound decode step reads every weight once (plus the KV cache), so

    tokens/s  <=  read bandwidth / bytes read per token

    bw = read_bandwidth()                         # bytes/s, measured here on the threads torch uses
    r = decode_roofline(model, tokens_per_s=31.2, context=96, bandwidth=bw)
    r.bound_tokens_per_s, r.fraction              # e.g. 59.6 tok/s, 0.52

Bytes per token: each projection's weights as stored (fp32/bf16 elements; int8/int4 codes at 1 byte / half a byte
plus their scales and zero points: exactly gemv_a8's packed tensor where a layer runs it), the norms, one embedding
row (the full table only when it doubles as the LM head), and K and V of every cached token of every layer
(2 · layers · kv_heads · head_dim · context · bytes).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from effml.errors import ConfigError
from effml.llm.kvcache import kv_bytes_per_token
from effml.llm.model import Transformer, compute_dtype

_BW_CACHE: dict[tuple[int, int], float] = {}


def read_bandwidth(mib: int = 256, repeats: int = 3, fresh: bool = False) -> float:
    """Main-memory read bandwidth in bytes/s: the fastest of `repeats` sums over `mib` MiB of fp32, on torch's
    current thread count (a decode step's threads). 256 MiB is past the cache one core is given on the hosts
    measured, even where the OS reports a larger shared L3 (an Intel Xeon VM reporting 480 MiB read 28 GB/s at
    64 MiB and 15.5-15.8 GB/s from 128 MiB to 2 GiB); a model whose weights do fit in cache can beat the bound.
    The buffer is read in ordinary pages and, where effml's kernels are built, in memory advised for 2 MiB pages as
    effml's packed weights are (effml.native `huge`), there also by effml's own read loop with the software
    prefetch its weight passes issue (`read_sum`): the fastest is the bound, so a step is not measured against a
    slower read than its own. Holds 2 x `mib` MiB while it runs; cached per process (fresh=True: measured again,
    e.g. beside each round of a benchmark on a shared machine)."""
    from effml import native

    key = (mib, torch.get_num_threads())
    if fresh or key not in _BW_CACHE:
        a = torch.ones(mib * 2 ** 20 // 4)  # (n,) fp32
        ext = native.load()
        best = float("inf")
        reads = [a.sum]
        if ext is not None:
            h = ext.huge(a)
            reads += [h.sum, lambda: ext.read_sum(h)]
        for read in reads:
            read()  # touch every page once
            for _ in range(repeats):
                t0 = time.perf_counter()
                read()
                best = min(best, time.perf_counter() - t0)
        _BW_CACHE[key] = a.numel() * 4 / best
    return _BW_CACHE[key]


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def weight_bytes_per_token(model: Transformer) -> int:
    """Bytes of weights one decode step reads (see the module docstring); shared tensors counted once."""
    from effml.compress.weight_only import WeightOnlyLinear
    from effml.llm.engine import PackedLinear

    seen: set[int] = set()
    total = 0

    def once(t: torch.Tensor, nbytes: int) -> None:
        nonlocal total
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += nbytes

    embeddings = []
    for m in model.modules():
        if isinstance(m, WeightOnlyLinear):
            a8 = m.a8() if m.kernel == "a8" else None
            if a8 is not None:  # gemv_a8's one tensor: the codes with their scales (int4: and zero terms) in it
                once(m.codes, a8[1].nbytes)
            else:  # the codes + their scales (int4: + zero points) in the activation dtype, as torch's kernels read
                act = torch.empty(0, dtype=m.act_dtype).element_size()
                per_group = 1 if m.bits == 8 else 2
                once(m.codes, m.codes.numel() * m.bits // 8 + m.scale.numel() * per_group * act)
            if m.bias is not None:
                once(m.bias, _tensor_bytes(m.bias))
        elif isinstance(m, PackedLinear):  # what its decode rows read: gemv_tiles' copy, else the weight
            w = m._tiles if m._tiles is not None else m.weight
            once(w, _tensor_bytes(w))
            if m.bias is not None:
                once(m.bias, _tensor_bytes(m.bias))
        elif isinstance(m, nn.Linear):
            for p in (m.weight, m.bias):
                if p is not None:
                    once(p, _tensor_bytes(p))
        elif isinstance(m, nn.Embedding):
            embeddings.append(m)
        elif callable(getattr(m, "weight", None)):  # torch.ao dynamic int8 Linear: weight() is packed int8
            w = m.weight()
            once(w, w.numel() * w.element_size())
        else:
            for p in m.parameters(recurse=False):
                once(p, _tensor_bytes(p))
    for e in embeddings:  # after the head: a tied table is already counted whole
        once(e.weight, e.weight.shape[1] * e.weight.element_size())
    return total


@dataclass(frozen=True)
class DecodeRoofline:
    bandwidth_Bps: float
    weight_bytes: int
    kv_bytes: float  # at the mean context of the measured tokens
    tokens_per_s: float

    @property
    def bytes_per_token(self) -> float:
        return self.weight_bytes + self.kv_bytes

    @property
    def bound_tokens_per_s(self) -> float:
        return self.bandwidth_Bps / self.bytes_per_token

    @property
    def fraction(self) -> float:
        return self.tokens_per_s / self.bound_tokens_per_s

    def to_dict(self) -> dict:
        return {**asdict(self), "bytes_per_token": self.bytes_per_token,
                "bound_tokens_per_s": self.bound_tokens_per_s, "fraction": self.fraction,
                "bandwidth_source": "measured: fastest of 3 sums over 256 MiB fp32, in 4 KiB and in 2 MiB pages "
                                    "(torch's sum and effml's prefetching read), on "
                                    f"{torch.get_num_threads()} torch thread(s)"}

    def line(self) -> str:
        return (f"{self.tokens_per_s:.1f} tok/s = {self.fraction:.0%} of the bandwidth bound "
                f"{self.bound_tokens_per_s:.1f} tok/s ({self.bandwidth_Bps / 1e9:.1f} GB/s read / "
                f"{self.bytes_per_token / 1e6:.1f} MB per token)")


def decode_roofline(model: Transformer, tokens_per_s: float, context: float,
                    bandwidth: float | None = None) -> DecodeRoofline:
    """The bound for `model` at a mean context of `context` cached tokens, beside the measured `tokens_per_s`."""
    if context < 0 or tokens_per_s < 0:
        raise ConfigError(f"decode_roofline: context and tokens_per_s must be >= 0, got {context}, {tokens_per_s}")
    kv = kv_bytes_per_token(model.args, compute_dtype(model)) * context
    return DecodeRoofline(bandwidth or read_bandwidth(), weight_bytes_per_token(model), kv, tokens_per_s)
