"""A decode step with a KV cache already holding `kv_len` tokens, for counting (on meta: free).

`prefilled_cache` builds a transformers cache whose layers are pre-allocated to kv_len + seq tokens and
filled to kv_len *before* counting, then written in place: the counted step reads all kv_len + seq keys and
values in attention and writes only the new rows, as a serving engine's static or paged cache does. (HF's
default DynamicCache instead `torch.cat`s the whole cache every step: a copy of 2 x KV bytes that is an
artifact of eager HF, not of decoding.)

    args, kwargs = decode_inputs(model, batch=1, seq=1, kv_len=2048, dtype="bf16")
    profile(model, *args, forward_kwargs=kwargs)   # attention over 2049 keys per layer
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from effml.errors import ConfigError
from effml.units import dtype_bytes, torch_dtype


@dataclass(frozen=True)
class KVShape:
    """The cache geometry of a decoder config: layers x kv heads x head_dim, and each layer's attention window.

    A sliding-window layer (Mistral-7B-v0.1: W = 4096 in every layer; Gemma-2: every other layer; Qwen2 with
    use_sliding_window: the layers from max_window_layers on) keeps a rolling buffer of its last W tokens
    (Jiang et al. 2023, "Rolling buffer cache"): min(length, W) tokens, not `length`.
    """

    layers: int
    kv_heads: int
    head_dim: int
    windows: tuple[int | None, ...] = ()  # per layer: W for a sliding-window layer, None for full; () = all full

    @classmethod
    def of(cls, hf_config) -> "KVShape":
        cfg = hf_config.get_text_config(decoder=True) if hasattr(hf_config, "get_text_config") else hf_config
        try:
            layers = int(cfg.num_hidden_layers)
            heads = int(cfg.num_attention_heads)
        except AttributeError as exc:
            raise ConfigError(f"model config {type(cfg).__name__} has no decoder layers/heads for a KV cache: {exc}")
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        return cls(layers, kv_heads, head_dim, _windows(cfg, layers))

    def window(self, layer: int) -> int | None:
        return self.windows[layer] if self.windows else None

    @property
    def windowed_layers(self) -> int:
        return sum(w is not None for w in self.windows)

    def cached_tokens(self, length: int) -> int:
        """Tokens held over all layers for one sequence of `length`: Σ_layers min(length, W_layer)."""
        return sum(length if self.window(i) is None else min(length, self.window(i)) for i in range(self.layers))

    def bytes(self, batch: int, length: int, dtype: str) -> float:
        """K and V: 2 x batch x kv_heads x head_dim x bytes(dtype) x Σ_layers min(length, W_layer)."""
        return 2 * batch * self.kv_heads * self.head_dim * self.cached_tokens(length) * dtype_bytes(dtype)


def _windows(cfg, layers: int) -> tuple[int | None, ...]:
    """Per-layer windows from a transformers config: `layer_types` ('sliding_attention' layers use
    `sliding_window`) where the config has it (Gemma-2, Qwen2), else `sliding_window` for every layer (Mistral)."""
    w = getattr(cfg, "sliding_window", None)
    if not w:
        return ()
    w = int(w)
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        if len(types) != layers:
            raise ConfigError(f"model config: layer_types has {len(types)} entries for {layers} layers")
        wins = tuple(w if t == "sliding_attention" else None for t in types)
        return wins if any(x is not None for x in wins) else ()
    if getattr(cfg, "use_sliding_window", True) is False:
        return ()
    return (w,) * layers


def kv_cache_bytes(hf_config, batch: int, length: int, dtype: str) -> float:
    return KVShape.of(hf_config).bytes(batch, length, dtype)


def _layer_class():
    from transformers.cache_utils import DynamicLayer

    class PrefilledLayer(DynamicLayer):
        """Pre-allocated K/V (B, H_kv, capacity, hd) filled to `filled`; update writes the new rows in place."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int):
            super().__init__()
            self.keys_buf, self.values_buf, self.filled = keys, values, filled
            self.keys, self.values = keys[..., :filled, :], values[..., :filled, :]
            self.device, self.is_initialized = keys.device, True

        def update(self, key_states, value_states, *args, **kwargs):
            q = key_states.shape[-2]
            end = self.filled + q
            if end > self.keys_buf.shape[-2]:
                raise ConfigError(f"KV cache capacity {self.keys_buf.shape[-2]} exceeded by a step of {q} tokens")
            self.keys_buf[..., self.filled:end, :].copy_(key_states)  # (B, H_kv, q, hd): only the new rows
            self.values_buf[..., self.filled:end, :].copy_(value_states)
            self.filled = end
            self.keys, self.values = self.keys_buf[..., :end, :], self.values_buf[..., :end, :]
            return self.keys, self.values  # (B, H_kv, kv_len + q, hd): what attention reads

        def get_seq_length(self) -> int:
            return self.filled

    return PrefilledLayer


def prefilled_cache(hf_config, batch: int, kv_len: int, seq: int, dtype: str, device: str = "meta"):
    """A transformers Cache holding kv_len tokens, with room for `seq` more, written in place."""
    from transformers import DynamicCache

    if kv_len < 0 or seq <= 0 or batch <= 0:
        raise ConfigError(f"kv_len must be >= 0 and seq, batch > 0; got kv_len={kv_len}, seq={seq}, batch={batch}")
    shape = KVShape.of(hf_config)
    layer_cls = _layer_class()
    tdt = torch_dtype(dtype)
    layers = []
    for _ in range(shape.layers):
        k = torch.zeros(batch, shape.kv_heads, kv_len + seq, shape.head_dim, dtype=tdt, device=device)
        layers.append(layer_cls(k, torch.zeros_like(k), kv_len))
    cache = DynamicCache()
    cache.layers = layers
    return cache


def decode_inputs(model, batch: int, seq: int, kv_len: int, dtype: str, device: str = "meta",
                  seed: int = 0) -> tuple[tuple, dict]:
    """(args, kwargs) for one step of `seq` new tokens on top of a cache of `kv_len` (HF causal LMs)."""
    hf = getattr(model, "config", None)
    if hf is None:
        raise ConfigError(f"--kv-len needs a transformers causal LM (a config such as llama-2-7b); "
                          f"{type(model).__name__} has no .config")
    limit = getattr(hf, "max_position_embeddings", None)
    if limit is not None and kv_len + seq > limit:
        raise ConfigError(f"kv_len {kv_len} + seq {seq} exceeds the model's max_position_embeddings {limit}")
    if str(device) == "meta":
        ids = torch.empty(batch, seq, dtype=torch.long, device="meta")  # (B, T)
    else:
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, hf.vocab_size, (batch, seq), generator=gen).to(device)  # (B, T)
    cache = prefilled_cache(hf, batch, kv_len, seq, dtype, device)
    params = inspect.signature(model.forward).parameters
    key = "cache" if "cache" in params else "past_key_values"  # transformers renamed it in 5.x
    return (ids,), {key: cache, "use_cache": True}
