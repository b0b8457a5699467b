"""KV-cache calculator for any decoder config: bytes = 2 · layers · kv_heads · head_dim · tokens · batch · bytes.

A sliding-window layer holds a rolling buffer of its last W tokens: tokens = min(seq, W) there (Mistral-7B-v0.1,
W = 4096, at 32k: 0.5 GiB in fp16 instead of 4 GiB).

    r = kv_report("llama-2-7b", seq=4096, batch=1, dtype="fp16")      # r.bytes == 2 GiB exactly
    r = kv_report("llama-3-8b", seq=8192, batch=8, dtype="bf16", hw="h100")
    r.gqa_saving, r.max_batch

GQA (grouped-query attention) stores kv_heads < heads heads of K and V: the saving over multi-head attention is
heads / kv_heads (Llama-3-8B: 32/8 = 4x). `hw` (a catalog device, `effml hw list`) adds the largest batch whose
cache fits beside the weights: floor((memory − weights) / KV bytes per sequence). Activations and framework
overhead are left out (say so where it is shown): it is an upper bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from effml.errors import ConfigError
from effml.units import DTYPE_BYTES, dtype_name


@dataclass(frozen=True)
class KVQuery:
    config: str
    seq: int
    batch: int = 1
    dtype: str = "fp16"
    hw: str | None = None

    def __post_init__(self):
        if not isinstance(self.seq, int) or self.seq <= 0:
            raise ConfigError(f"--seq must be a positive number of tokens, got {self.seq!r}")
        if not isinstance(self.batch, int) or self.batch <= 0:
            raise ConfigError(f"--batch must be a positive number of sequences, got {self.batch!r}")
        dtype_name(self.dtype)  # unknown dtype -> ConfigError naming the choices


@dataclass(frozen=True)
class KVReport:
    model: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    seq: int
    batch: int
    dtype: str
    dtype_bytes: float
    bytes: float  # the whole cache
    bytes_per_token: float  # one token of one sequence, all layers, K and V
    mha_bytes: float  # the same cache if every head kept its own K and V
    params: int
    weights_bytes: float
    device: str | None = None
    device_memory_bytes: float | None = None
    max_batch: int | None = None  # sequences of `seq` tokens whose cache fits beside the weights
    window: int | None = None  # sliding-window size of the windowed layers (rolling buffer), None: none
    windowed_layers: int = 0  # layers holding min(seq, window) tokens; the others hold seq
    weights_note: str = ""  # how int4/int8 weights are stored (group scales, fp16 embeddings); "" for floats

    @property
    def gqa_saving(self) -> float:
        return self.mha_bytes / self.bytes

    @property
    def formula(self) -> str:
        b = self.dtype_bytes
        tail = f" · {self.batch} batch · {b:g} B ({self.dtype})"
        if not self.windowed_layers:
            return (f"2 · {self.layers} layers · {self.kv_heads} kv_heads · {self.head_dim} head_dim · "
                    f"{self.seq} tokens" + tail)
        full = self.layers - self.windowed_layers
        tokens = f"{self.windowed_layers} layers · min({self.seq}, window {self.window}) tokens (rolling buffer)"
        if full:
            tokens = f"({full} layers · {self.seq} tokens + {tokens})"
        return f"2 · {self.kv_heads} kv_heads · {self.head_dim} head_dim · {tokens}" + tail

    @property
    def fits(self) -> bool | None:
        return None if self.max_batch is None else self.batch <= self.max_batch

    def to_dict(self) -> dict:
        return {**asdict(self), "gib": self.bytes / 2**30, "gb": self.bytes / 1e9, "gqa_saving": self.gqa_saving,
                "formula": self.formula, "fits": self.fits,
                "note": "max_batch leaves out activations and runtime overhead: an upper bound"}


def kv_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int, batch: int, dtype: str) -> float:
    """2 (K and V) · layers · kv_heads · head_dim · tokens · batch · bytes(dtype)."""
    return 2 * layers * kv_heads * head_dim * tokens * batch * DTYPE_BYTES[dtype_name(dtype)]


def _params(cfg) -> int:
    if cfg.published_params:
        return int(cfg.published_params)
    from effml import configs

    return sum(p.numel() for p in configs.build(cfg, "fp32", "meta").parameters())  # meta: shapes only


def kv_report(config: str, seq: int, batch: int = 1, dtype: str = "fp16", hw: str | None = None) -> KVReport:
    q = KVQuery(config, seq, batch, dtype, hw)
    from effml import configs
    from effml.hardware.kv import KVShape

    cfg = configs.load(q.config)
    if cfg.task != "causal-lm":
        raise ConfigError(f"model config {cfg.name!r} is a {cfg.task} model: a KV cache needs a decoder (causal-lm)")
    hf = configs.hf_config(cfg)
    shape = KVShape.of(hf)
    heads = int(hf.num_attention_heads)
    ctx = configs.max_positions(cfg, hf)
    if ctx and q.seq > ctx:
        raise ConfigError(f"--seq {q.seq} exceeds {cfg.name}'s context of {ctx} tokens (max_position_embeddings)")
    dt = dtype_name(q.dtype)
    total = shape.bytes(q.batch, q.seq, dt)  # = kv_bytes(...) without sliding-window layers
    mha = total * heads / shape.kv_heads
    params = _params(cfg)
    from effml.hardware.capacity import stored_weights

    tied = bool(getattr(hf, "tie_word_embeddings", False))
    embeddings = int(hf.vocab_size) * int(hf.hidden_size) * (1 if tied else 2)  # input table + output head
    stored = stored_weights(params, dt, embeddings)
    weights = stored.bytes
    dev_name = mem = max_batch = None
    if q.hw:
        from effml.hardware import get_device

        dev = get_device(q.hw)
        dev_name, mem = dev.name, dev.capacity_bytes
        per_seq = total / q.batch
        max_batch = max(0, math.floor((mem - weights) / per_seq))
    return KVReport(cfg.name, shape.layers, heads, shape.kv_heads, shape.head_dim, q.seq, q.batch, dt,
                    DTYPE_BYTES[dt], total, total / (q.seq * q.batch), mha, params, weights, dev_name, mem, max_batch,
                    max((w for w in shape.windows if w is not None), default=None), shape.windowed_layers,
                    stored.note)
