"""Channel groups and how to cut them: the low level under `prune(kind="channel")` (Torch-Pruning's idea).

A `Group` is a set of channels that must be removed together: the output channels of the layers that
produce a tensor, the matching slices of everything that passes it through (BatchNorm, a depthwise conv)
and the input slices of every layer that consumes it. A residual add joins the spaces of its operands
into one group, so every producer feeding the add loses the same channels.

Each `Member` names one tensor dimension: channel c covers indices offset + c*block ... offset + (c+1)*block-1
for every offset in `segments` (block > 1: a flatten after a conv (H*W columns per channel) or an attention
head (head_dim rows); several segments: a fused q|k|v projection).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from effml.registries import Registry
from effml.errors import ConfigError

ROLES = ("out", "in", "through")  # produces the channels, consumes them, carries them (BN, depthwise)


@dataclass(frozen=True)
class Member:
    module: str  # module name in named_modules()
    param: str  # parameter or buffer name, e.g. "weight", "running_mean"
    dim: int
    role: str
    block: int = 1
    segments: tuple[int, ...] = (0,)

    def indices(self, channels: torch.Tensor) -> torch.Tensor:
        """Original indices along `dim` of the given channels (all segments)."""
        inner = torch.arange(self.block)  # (block,)
        per = (channels[:, None] * self.block + inner).reshape(-1)  # (len(channels) * block,)
        return torch.cat([off + per for off in self.segments])


@dataclass
class Group:
    name: str  # the first producer's module name (what `per_layer` keys refer to)
    kind: str  # "conv", "linear", "heads", "mlp"
    channels: int
    members: list[Member]
    fixups: list[Callable[[nn.Module, torch.Tensor], None]] = field(default_factory=list, repr=False)

    def modules(self) -> list[str]:
        return list(dict.fromkeys(m.module for m in self.members))

    def producers(self) -> list[str]:
        return list(dict.fromkeys(m.module for m in self.members if m.role == "out"))


def _tensor(model: nn.Module, m: Member) -> torch.Tensor | None:
    return getattr(model.get_submodule(m.module), m.param, None)


# ---- importance criteria: (model, group) -> (channels,) score; larger is kept ------------------------------
CRITERIA: Registry = Registry("channel importance criterion")


def _norm_score(model: nn.Module, group: Group, p: int, grad: bool = False) -> torch.Tensor:
    score = torch.zeros(group.channels)
    for mem in group.members:
        if mem.role == "through" or mem.param != "weight":
            continue
        w = _tensor(model, mem)
        t = w.detach() * w.grad if grad else w.detach()
        if grad and w.grad is None:
            raise ConfigError(f"the Taylor criterion needs gradients of {mem.module}.weight: pass data to prune()")
        t = t.movedim(mem.dim, 0)  # (index, ...)
        for off in mem.segments:
            part = t[off: off + group.channels * mem.block].reshape(group.channels, -1)  # (channels, rest)
            score += part.abs().sum(1) if (grad or p == 1) else part.pow(2).sum(1)
    return score if (grad or p == 1) else score.sqrt()


@CRITERIA.register("l1")
def l1_importance(model: nn.Module, group: Group) -> torch.Tensor:
    """Sum of |w| over each channel's slices in every producer and consumer weight."""
    return _norm_score(model, group, 1)


@CRITERIA.register("l2")
def l2_importance(model: nn.Module, group: Group) -> torch.Tensor:
    """L2 norm of each channel's slices over every producer and consumer weight."""
    return _norm_score(model, group, 2)


@CRITERIA.register("taylor")
def taylor_importance(model: nn.Module, group: Group) -> torch.Tensor:
    """First-order Taylor (Molchanov et al. 2017, weight form): sum of |w * dL/dw| over the channel's slices."""
    return _norm_score(model, group, 1, grad=True)


# ---- module resizers: after slicing, make the module's attributes agree with its new tensors ---------------
RESIZERS: Registry = Registry("module resizer")


@RESIZERS.register("Linear")
def _resize_linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


@RESIZERS.register("Conv")
def _resize_conv(m: nn.modules.conv._ConvNd) -> None:
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    m.out_channels = m.weight.shape[0]
    if depthwise:
        m.groups = m.in_channels = m.out_channels
    else:
        m.in_channels = m.weight.shape[1] * m.groups


@RESIZERS.register("BatchNorm")
def _resize_bn(m: nn.modules.batchnorm._BatchNorm) -> None:
    m.num_features = (m.weight if m.weight is not None else m.running_mean).shape[0]


@RESIZERS.register("LayerNorm")
def _resize_ln(m: nn.LayerNorm) -> None:
    m.normalized_shape = (m.weight.shape[0],)


def resizer_for(m: nn.Module):
    if isinstance(m, nn.Linear):
        return RESIZERS.get("Linear")
    if isinstance(m, nn.modules.conv._ConvNd):
        return RESIZERS.get("Conv")
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return RESIZERS.get("BatchNorm")
    if isinstance(m, nn.LayerNorm):
        return RESIZERS.get("LayerNorm")
    return None


@torch.no_grad()
def cut(model: nn.Module, plan: dict[str, tuple[Group, torch.Tensor]]) -> None:
    """Physically remove channels: plan maps group name -> (group, sorted channel indices to keep)."""
    keep_idx: dict[tuple[str, str, int], torch.Tensor] = {}
    for group, keep in plan.values():
        for mem in group.members:
            key = (mem.module, mem.param, mem.dim)
            if key in keep_idx:
                raise ConfigError(f"{mem.module}.{mem.param} dim {mem.dim} is in two channel groups")
            keep_idx[key] = mem.indices(keep)
    for (mod_name, pname, dim), idx in keep_idx.items():
        mod = model.get_submodule(mod_name)
        t = getattr(mod, pname)
        new = t.detach().index_select(dim, idx).clone()
        if isinstance(t, nn.Parameter):
            setattr(mod, pname, nn.Parameter(new, requires_grad=t.requires_grad))
        else:
            setattr(mod, pname, new)  # a registered buffer stays registered
    for mod_name in dict.fromkeys(k[0] for k in keep_idx):
        mod = model.get_submodule(mod_name)
        fn = resizer_for(mod)
        if fn is not None:
            fn(mod)
    for group, keep in plan.values():
        for fix in group.fixups:
            fix(model, keep)
