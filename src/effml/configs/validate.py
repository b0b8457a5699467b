"""Absurd values in a HF config refused by effml, naming the field, before transformers sees them.

transformers checks few of them: hidden_size 0 builds a model of empty tensors, a negative vocab_size fails deep in
nn.Embedding with "Trying to create tensor with negative dimension", 768.5 fails in a reshape, 12 heads over a
hidden size of 100 fail at the first forward. Each of those is a config error, reported here as one.
"""

from __future__ import annotations

import math
from typing import Any

from effml.errors import ConfigError

# The model's core dimensions: a positive integer whenever present (null is not a size either).
SIZES = ("hidden_size", "n_embd", "d_model", "num_attention_heads", "n_head", "vocab_size")
# Dimensions whose null means "the architecture's default" in transformers (GPT-2's n_inner, Mistral's window).
SIZES_OR_NULL = ("intermediate_size", "n_inner", "ffn_dim", "moe_intermediate_size", "num_key_value_heads",
                 "head_dim", "max_position_embeddings", "n_positions", "n_ctx", "num_channels", "patch_size",
                 "embedding_size", "type_vocab_size", "num_labels", "num_local_experts", "num_experts",
                 "num_experts_per_tok", "sliding_window", "depth_divisible_by", "min_depth", "output_stride")
# Layer counts: 0 is a (zero-layer) transformer, a negative count is nothing.
COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers")
SIZE_LISTS = ("hidden_sizes", "depths")  # ResNet stages: a list of positive integers
POSITIVE_FLOATS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta", "depth_multiplier",
                   "expand_ratio")
PROBABILITIES = ("attention_probs_dropout_prob", "hidden_dropout_prob", "attn_pdrop", "embd_pdrop", "resid_pdrop",
                 "attention_dropout", "hidden_dropout", "activation_dropout", "classifier_dropout_prob", "dropout")
HIDDEN = ("hidden_size", "n_embd", "d_model")
HEADS = ("num_attention_heads", "n_head")


def _first(hf: dict, names: tuple[str, ...]) -> tuple[str | None, Any]:
    for n in names:
        if hf.get(n) is not None:
            return n, hf[n]
    return None, None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_hf_config(hf: dict, where: str) -> None:
    """Raise ConfigError naming `where` (e.g. "model config 'x' (file:/tmp/x.json)") and the field when a value
    of `hf` (a transformers config as a dict) cannot describe a model."""

    def bad(field: str, value: Any, want: str) -> ConfigError:
        return ConfigError(f"{where}: field {field!r} is {value!r}, must be {want}; fix the config")

    for f in SIZES:
        if f in hf and not (_is_int(hf[f]) and hf[f] > 0):
            raise bad(f, hf[f], "a positive integer")
    for f in SIZES_OR_NULL:
        if hf.get(f) is not None and not (_is_int(hf[f]) and hf[f] > 0):
            raise bad(f, hf[f], "a positive integer (or null)")
    for f in COUNTS:
        if f in hf and not (_is_int(hf[f]) and hf[f] >= 0):
            raise bad(f, hf[f], "an integer >= 0")
    for f in SIZE_LISTS:
        v = hf.get(f)
        if v is not None and not (isinstance(v, list) and v and all(_is_int(x) and x > 0 for x in v)):
            raise bad(f, v, "a non-empty list of positive integers")
    size = hf.get("image_size")
    if size is not None:
        sides = size if isinstance(size, list) else [size]
        if not (1 <= len(sides) <= 2 and all(_is_int(x) and x > 0 for x in sides)):
            raise bad("image_size", size, "a positive integer or a [height, width] pair")
    for f in POSITIVE_FLOATS:
        if hf.get(f) is not None and not (_is_real(hf[f]) and hf[f] > 0):
            raise bad(f, hf[f], "a finite number > 0")
    for f in PROBABILITIES:
        if hf.get(f) is not None and not (_is_real(hf[f]) and 0 <= hf[f] <= 1):
            raise bad(f, hf[f], "a probability in [0, 1]")
    if hf.get("initializer_range") is not None and not (_is_real(hf["initializer_range"])
                                                        and hf["initializer_range"] >= 0):
        raise bad("initializer_range", hf["initializer_range"], "a finite number >= 0")
    _check_shapes(hf, where)


def _check_shapes(hf: dict, where: str) -> None:
    """Fields that must agree: heads split the hidden size (unless head_dim is given), KV heads group the heads,
    a token picks no more experts than there are."""
    hidden_f, hidden = _first(hf, HIDDEN)
    heads_f, heads = _first(hf, HEADS)
    if hidden is not None and heads is not None and hf.get("head_dim") is None and hidden % heads:
        raise ConfigError(f"{where}: field {heads_f!r} ({heads}) does not divide field {hidden_f!r} ({hidden}): "
                          f"each head gets {hidden_f} / {heads_f} dimensions; fix the config (or give head_dim)")
    kv = hf.get("num_key_value_heads")
    if kv is not None and heads is not None and heads % kv:
        raise ConfigError(f"{where}: field 'num_key_value_heads' ({kv}) does not divide field {heads_f!r} "
                          f"({heads}): grouped-query attention shares each KV head among {heads_f} / "
                          "num_key_value_heads query heads; fix the config")
    k, n = hf.get("num_experts_per_tok"), _first(hf, ("num_local_experts", "num_experts"))
    if k is not None and n[1] is not None and k > n[1]:
        raise ConfigError(f"{where}: field 'num_experts_per_tok' ({k}) exceeds field {n[0]!r} ({n[1]}); fix the "
                          "config")


__all__ = ["validate_hf_config"]
