"""SmoothQuant for dynamic int8 Linear layers (Xiao et al., ICML 2023), so outlier activations survive 8 bits.

Dynamic int8 quantizes each Linear's input per tensor (7 bits on the x86/fbgemm engine: `reduce_range`), so a
few large activation channels (LayerNorm outputs of BERT-style models have them) squeeze every other channel
into a handful of levels. Per input channel j, with a = max|x_j| over calibration data and w = max|W[:, j]|:
    s_j = a^alpha / w^(1 - alpha),   x' = x / s,   W' = W * s   (x' W'^T = x W^T exactly in real arithmetic)
moves part of the range from activations to weights, which are quantized per output channel. alpha = 0.5 is
the paper's default for OPT; 0.8 measured best for all-MiniLM-L6-v2 here (benchmarks/bench_int8.py).
"""

from __future__ import annotations

import torch
from torch import nn

from effml.compress.hf_layers import replace_module
from effml.compress.int8 import dynamic_notes, dynamic_targets, pick_engine, quantize_linear_dynamic
from effml.errors import ConfigError


def _call(model: nn.Module, batch) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(batch[0])
    else:
        model(batch)


@torch.no_grad()
def activation_absmax(model: nn.Module, calibration, names: list[str]) -> dict[str, torch.Tensor]:
    """max |input| per input channel of each named Linear over the calibration batches (tensors, (x, y) pairs
    or dicts of keyword arguments such as a tokenizer's output)."""
    if calibration is None:
        raise ConfigError("SmoothQuant needs calibration data: quantize(model, cfg, calibration=batches)")
    amax: dict[str, torch.Tensor] = {}

    def hook(mod, inputs, out, name):
        x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)  # (in,)
        amax[name] = torch.maximum(amax[name], x) if name in amax else x

    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: hook(m, i, o, n)) for n in names]
    was = model.training
    model.eval()
    try:
        for batch in calibration:
            _call(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    missing = [n for n in names if n not in amax]
    if missing:
        raise ConfigError(f"calibration never ran layer(s) {', '.join(missing[:5])}: cannot smooth them")
    return amax


class SmoothInt8Linear(nn.Module):
    """y = DynamicInt8Linear(W * s)(x / s): the input rescaled per channel, then PyTorch's int8 kernel."""

    def __init__(self, in_features: int, out_features: int, inner: nn.Module, inv_s: torch.Tensor):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.inner = inner
        self.register_buffer("inv_s", inv_s)

    @classmethod
    def from_linear(cls, lin: nn.Linear, absmax: torch.Tensor, alpha: float, per_channel: bool = True):
        w = lin.weight.detach()  # (out, in)
        s = absmax.clamp(min=1e-5) ** alpha / w.abs().amax(0).clamp(min=1e-5) ** (1 - alpha)  # (in,)
        scaled = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
        with torch.no_grad():
            scaled.weight.copy_(w * s)
            if lin.bias is not None:
                scaled.bias.copy_(lin.bias.detach())
        return cls(lin.in_features, lin.out_features, quantize_linear_dynamic(scaled, per_channel), 1.0 / s)

    @classmethod
    def empty(cls, in_features: int, out_features: int, per_channel: bool = True):
        inner = quantize_linear_dynamic(nn.Linear(in_features, out_features), per_channel)
        return cls(in_features, out_features, inner, torch.ones(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in)
        return self.inner(x * self.inv_s)


def smooth_linears(model: nn.Module, names: list[str], absmax: dict[str, torch.Tensor], alpha: float,
                   per_channel: bool = True) -> nn.Module:
    """Replace each named nn.Linear of `model` (in place) by a SmoothInt8Linear."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    for n in names:
        replace_module(model, n, SmoothInt8Linear.from_linear(model.get_submodule(n), absmax[n], alpha, per_channel))
    return model


def smooth_dynamic_int8(model: nn.Module, skip: tuple[str, ...], per_channel: bool, alpha: float, calibration
                        ) -> tuple[nn.Module, list[str], list[str]]:
    """Dynamic int8 with SmoothQuant, in place: (model, quantized layer names, notes), like int8.dynamic_int8."""
    engine = pick_engine()
    targets = dynamic_targets(model, skip)
    model.eval()
    amax = activation_absmax(model, calibration, targets)
    smooth_linears(model, targets, amax, alpha, per_channel)
    how = f"{'per-channel' if per_channel else 'per-tensor'} weights, SmoothQuant alpha={alpha}"
    return model, targets, dynamic_notes(model, engine, how)
