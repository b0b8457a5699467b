"""`prune(model, PruneConfig(kind=...))`: fine-grained, channel (physically smaller) and N:M pruning.

    res = prune(model, PruneConfig(kind="fine", sparsity=0.9))            # masks kept through fine-tuning
    res = prune(model, PruneConfig(kind="channel", sparsity=0.5), example_inputs=(x,))
    res = prune(model, PruneConfig(kind="n:m", n=2, m=4))
    res.model, res.to_dict()

The model is modified in place (deep-copy it first to keep the original). `sparsity` is the fraction
removed: of the weights (fine, n:m) or of the channels of every prunable group (channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import nn

from effml.compress.layers import (check_fraction, check_targets, count_nonzero, count_params, param_bytes,
                                   select_layers, unknown_name_error)
from effml.compress.masks import MaskSet, sparse_bits
from effml.registries import Registry
from effml.compress.structured import CRITERIA, Group, cut
from effml.errors import ConfigError

KINDS: Registry = Registry("prune kind")
SCOPES = ("global", "layer")
NM_NOTE = ("N:M (2:4) sparsity runs faster only where the hardware has sparse kernels: NVIDIA Ampere and newer "
           "sparse tensor cores (cuSPARSELt, torch.sparse.to_sparse_semi_structured; the datasheets' 'with "
           "sparsity' figures are 2x the dense peak, ~1.3-1.8x end to end on large GEMMs). On this CPU the dense "
           "kernels multiply the zeros: no speedup, only the storage saving.")


@dataclass(frozen=True)
class PruneConfig:
    kind: str = "fine"  # fine | channel | n:m
    sparsity: float = 0.5  # fraction removed: weights (fine) or channels per group (channel)
    per_layer: Mapping[str, float] | None = None  # layer (channel: group) name -> sparsity; others use `sparsity`
    scope: str = "global"  # fine: one magnitude threshold over all layers, or "layer": each at its own sparsity
    criterion: str = "l1"  # channel: l1 | l2 | taylor
    n: int = 2  # n:m: keep n of every m consecutive weights along the input dimension
    m: int = 4
    targets: tuple[str, ...] = ("Linear", "Conv2d")
    exclude: tuple[str, ...] = ()  # layer (or group) names left alone
    index_bits: Mapping[str, int] = field(default_factory=lambda: {"Conv2d": 8, "Linear": 5})

    def __post_init__(self):
        KINDS.get(self.kind)
        check_fraction(self.sparsity, "PruneConfig.sparsity")
        if self.per_layer is not None:
            if not isinstance(self.per_layer, Mapping):
                raise ConfigError("PruneConfig.per_layer must map layer names to sparsities")
            for name, s in self.per_layer.items():
                check_fraction(s, f"PruneConfig.per_layer[{name!r}]")
            object.__setattr__(self, "per_layer", dict(self.per_layer))  # a copy: later edits do not leak in
        if self.scope not in SCOPES:
            raise ConfigError(f"PruneConfig.scope {self.scope!r} unknown; expected one of {SCOPES}")
        CRITERIA.get(self.criterion)
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
            raise ConfigError(f"PruneConfig n:m must satisfy 0 < n < m, got {self.n}:{self.m}")
        object.__setattr__(self, "targets", check_targets(self.targets, "PruneConfig.targets"))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def layer_sparsity(self, name: str) -> float:
        return self.per_layer.get(name, self.sparsity) if self.per_layer else self.sparsity


@dataclass
class PruneResult:
    kind: str
    model: nn.Module = field(repr=False)
    params_before: int
    params_after: int  # channel: the smaller model's parameters; fine/n:m: unchanged (zeros still stored dense)
    nonzero_after: int
    dense_bytes: int  # fp32 bytes of the model before pruning
    stored_bytes: int  # fp32 bytes as stored after: dense smaller model (channel) or sparse format (fine, n:m)
    layers: dict[str, dict] = field(default_factory=dict)
    masks: MaskSet | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def compression(self) -> float:
        return self.dense_bytes / self.stored_bytes if self.stored_bytes else float("inf")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "params_before": self.params_before, "params_after": self.params_after,
                "nonzero_after": self.nonzero_after, "dense_bytes": self.dense_bytes,
                "stored_bytes": self.stored_bytes, "compression": self.compression, "layers": self.layers,
                "notes": list(self.notes)}


def prune(model: nn.Module, config: PruneConfig, *, example_inputs: tuple | None = None, data: Iterable | None = None,
          taylor_batches: int = 4) -> PruneResult:
    """Prune `model` in place by `config.kind`; `data` (x, y) batches serve the Taylor criterion and tracing."""
    return KINDS.get(config.kind)(model, config, example_inputs=example_inputs, data=data,
                                  taylor_batches=taylor_batches)


# ---- fine-grained ------------------------------------------------------------------------------------------
def _index_bits(config: PruneConfig, m: nn.Module) -> int:
    return config.index_bits.get("Conv2d" if isinstance(m, nn.modules.conv._ConvNd) else "Linear", 5)


def sparse_storage_bytes(model: nn.Module, masks: MaskSet, config: PruneConfig, weight_bits: int = 32) -> int:
    """Masked weights in relative-index format + every other parameter dense, at weight_bits."""
    masked = {id(lm.module.weight) for lm in masks.layers.values()}
    bits = sum(p.numel() * weight_bits for p in {id(p): p for p in model.parameters()}.values()
               if id(p) not in masked)
    for lm in masks.layers.values():
        bits += sparse_bits(lm.mask, weight_bits, _index_bits(config, lm.module))
    return math.ceil(bits / 8)


def _finish_masked(kind, model, config, masks, before, dense, notes) -> PruneResult:
    masks.attach()
    layers = {n: {"shape": list(lm.mask.shape), "sparsity": 1.0 - lm.mask.float().mean().item(),
                  "index_bits": _index_bits(config, lm.module)} for n, lm in masks.layers.items()}
    return PruneResult(kind, model, before, count_params(model), count_nonzero(model), dense,
                       sparse_storage_bytes(model, masks, config), layers, masks, notes)


@KINDS.register("fine")
@torch.no_grad()
def fine_prune(model: nn.Module, config: PruneConfig, **_) -> PruneResult:
    """Zero the smallest-|w| weights: one global threshold, or per layer (config.scope / per_layer)."""
    layers = select_layers(model, config.targets, None, config.exclude)
    for name in config.per_layer or {}:
        if name not in layers:
            raise unknown_name_error(name, layers)
    before, dense = count_params(model), param_bytes(model)
    masks: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    per = set(config.per_layer or {})
    if config.scope == "global":
        glob = {n: m for n, m in layers.items() if n not in per}
        if glob and config.sparsity > 0:
            flat = torch.cat([m.weight.detach().abs().reshape(-1) for m in glob.values()])  # (N,)
            k = int(round(config.sparsity * flat.numel()))
            thr = torch.kthvalue(flat, k).values if k > 0 else flat.new_tensor(-1.0)
            masks.update({n: (m, m.weight.detach().abs() > thr) for n, m in glob.items()})
    for name, m in layers.items():
        if name in masks:
            continue
        s = config.layer_sparsity(name)
        w = m.weight.detach().abs()
        k = int(round(s * w.numel()))
        thr = torch.kthvalue(w.reshape(-1), k).values if k > 0 else w.new_tensor(-1.0)
        masks[name] = (m, w > thr)
    return _finish_masked("fine", model, config, MaskSet(masks), before, dense, [])


@KINDS.register("n:m")
@torch.no_grad()
def nm_prune(model: nn.Module, config: PruneConfig, **_) -> PruneResult:
    """Keep the n largest |w| of every m consecutive weights along the reduction (input) dimension."""
    layers = select_layers(model, config.targets, None, config.exclude)
    before, dense = count_params(model), param_bytes(model)
    masks, notes = {}, [NM_NOTE]
    for name, m in layers.items():
        w = m.weight.detach()
        wk = w.movedim(1, -1).reshape(w.shape[0], -1) if w.ndim > 2 else w  # (out, K), input channels innermost
        if wk.shape[1] % config.m:
            notes.append(f"{name}: reduction size {wk.shape[1]} is not a multiple of m={config.m}; left dense")
            continue
        groups = wk.abs().reshape(-1, config.m)  # (out*K/m, m)
        top = groups.topk(config.n, dim=1).indices
        mk = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True).reshape(wk.shape)
        if w.ndim > 2:
            mk = mk.reshape(w.shape[0], *w.shape[2:], w.shape[1]).movedim(-1, 1)
        masks[name] = (m, mk)
    return _finish_masked("n:m", model, config, MaskSet(masks), before, dense, notes)


# ---- channel ----------------------------------------------------------------------------------------------
def channel_groups(model: nn.Module, example_inputs: tuple | None) -> list[Group]:
    """Transformer rules first (heads, MLP intermediates); otherwise the FX dependency graph."""
    from effml.compress.graph import trace_groups
    from effml.compress.transformer import transformer_groups

    groups = transformer_groups(model)
    return groups if groups else trace_groups(model, example_inputs or ())


def _taylor_grads(model: nn.Module, data: Iterable | None, batches: int) -> None:
    import torch.nn.functional as F

    from effml.zoo.training import logits_of

    if data is None:
        raise ConfigError("PruneConfig.criterion='taylor' needs data: prune(model, cfg, data=loader)")
    model.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(data):
        if i >= batches:
            break
        F.cross_entropy(logits_of(model(x)), y).backward()


@KINDS.register("channel")
def channel_prune(model: nn.Module, config: PruneConfig, *, example_inputs=None, data=None, taylor_batches=4,
                  **_) -> PruneResult:
    """Remove the least important channels of every prunable group; the model gets physically smaller."""
    if example_inputs is None and data is not None:
        example_inputs = (next(iter(data))[0],)
    groups = channel_groups(model, example_inputs)
    by_name = {g.name: g for g in groups}
    member_of = {mod: g.name for g in groups for mod in g.producers()}
    for name in list(config.per_layer or {}) + list(config.exclude):
        if name not in by_name and name not in member_of:
            raise unknown_name_error(name, by_name, "prunable layer/group")
    per = {member_of.get(k, k): v for k, v in (config.per_layer or {}).items()}
    skip = {member_of.get(k, k) for k in config.exclude}
    before, dense = count_params(model), param_bytes(model)
    if config.criterion == "taylor":
        _taylor_grads(model, data, taylor_batches)
    plan, layers = {}, {}
    for g in groups:
        s = 0.0 if g.name in skip else per.get(g.name, config.sparsity)
        remove = int(round(s * g.channels))
        if remove >= g.channels:
            raise ConfigError(f"pruning {g.name} at sparsity {s} would remove every one of its {g.channels} channels "
                              f"(round({s} x {g.channels}) = {remove}); lower its sparsity")
        if remove == 0:
            continue
        score = CRITERIA.get(config.criterion)(model, g)  # (channels,)
        keep = torch.sort(torch.topk(score, g.channels - remove).indices).values
        plan[g.name] = (g, keep)
        layers[g.name] = {"kind": g.kind, "channels": g.channels, "kept": len(keep), "modules": g.modules()}
    if config.criterion == "taylor":
        model.zero_grad(set_to_none=True)
    cut(model, plan)
    after = count_params(model)
    notes = [] if plan else ["no channel group was pruned (every group frozen, excluded or at sparsity 0)"]
    return PruneResult("channel", model, before, after, count_nonzero(model), dense, param_bytes(model), layers,
                       None, notes)
