"""transformers' `Conv1D` (GPT-2, GPT-Neo's ancestors) seen as the nn.Linear it is: y = x W + b with W (in, out).

GPT-2 writes every projection (c_attn, c_proj, c_fc) as `transformers.pytorch_utils.Conv1D`, whose weight is the
transpose of an nn.Linear's. A method that only looks for nn.Linear skips all of them; these helpers let every
method treat Conv1D as Linear:

    linear_weight(m)            # (out, in) view for nn.Linear and Conv1D alike
    conv1d_to_linear(model)     # replace every Conv1D by an exactly equivalent nn.Linear, in place; returns names
    weight_layers(model)        # name -> module for every nn.Linear and Conv1D

A Conv1D's forward is `addmm(b, x, W)`; the nn.Linear made from it computes `x W^T' + b` with W' = W^T, the
same products summed in the same order per output, so outputs match to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn


def is_conv1d(m: nn.Module) -> bool:
    """transformers' Conv1D (checked by name and fields, so transformers need not be imported)."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None \
        and m.weight.ndim == 2


def is_linear_like(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or is_conv1d(m)


def linear_weight(m: nn.Module) -> torch.Tensor:
    """The (out, in) weight of an nn.Linear or a Conv1D (a transposed view for Conv1D)."""
    if isinstance(m, nn.Linear):
        return m.weight
    if is_conv1d(m):
        return m.weight.t()  # Conv1D stores (in, out)
    raise TypeError(f"{type(m).__name__} is neither nn.Linear nor transformers' Conv1D")


def in_out(m: nn.Module) -> tuple[int, int]:
    out, inp = linear_weight(m).shape
    return inp, out


@torch.no_grad()
def set_linear_weight(m: nn.Module, w: torch.Tensor) -> None:
    """Write an (out, in) weight into an nn.Linear or a Conv1D."""
    linear_weight(m).copy_(w)  # the transposed view writes through for Conv1D


@torch.no_grad()
def as_linear(m: nn.Module) -> nn.Linear:
    """An nn.Linear computing what `m` (nn.Linear or Conv1D) computes (a copy of its tensors)."""
    inp, out = in_out(m)
    lin = nn.Linear(inp, out, bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
    lin.weight.copy_(linear_weight(m))
    if m.bias is not None:
        lin.bias.copy_(m.bias)
    lin.train(m.training)
    return lin


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """name -> module of every nn.Linear and Conv1D, in module order."""
    return {n: m for n, m in model.named_modules() if is_linear_like(m)}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def conv1d_to_linear(model: nn.Module) -> list[str]:
    """Replace every Conv1D by an equivalent nn.Linear, in place; the names replaced (empty: nothing to do)."""
    names = [n for n, m in model.named_modules() if is_conv1d(m)]
    for n in names:
        replace_module(model, n, as_linear(model.get_submodule(n)))
    return names
