"""`prune(model, config)`: the config's type picks the method: fine-grained, channel (physically smaller), N:M.

    res = prune(model, FinePrune(sparsity=0.9))                      # masks kept through fine-tuning
    res = prune(model, ChannelPrune(sparsity=0.5), example_inputs=(x,))
    res = prune(model, NMPrune(n=2, m=4))
    res.model, res.to_dict(), res.skipped

In place, every method: `model` itself is pruned and `res.model is model` (deep-copy first to keep the
original). `sparsity` is the fraction removed: of the weights (fine) or of the channels of every prunable
group (channel). `skipped` lists every weight layer left unpruned, with the reason.

A new method: a config class in compress/configs.py style (`CONFIGS.add`) and `@PRUNERS.register(MyConfig)` on a
function `(model, config, *, example_inputs, data, progress) -> PruneResult`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from effml.compress.configs import ChannelPrune, FinePrune, NMPrune
from effml.compress.layers import (count_nonzero, count_params, is_hf_conv1d, param_bytes, require_weight_layers,
                                   select_layers, skipped_layers, tied_layers, unknown_name_error, weight_layers)
from effml.compress.masks import MaskSet, sparse_bits
from effml.compress.structured import CRITERIA, Group, cut
from effml.errors import ConfigError
from effml.registries import Registry
from effml.progress import Progress, no_progress

PRUNERS: Registry = Registry("pruning method")  # config class -> pruner
NM_NOTE = ("N:M (2:4) sparsity runs faster only where the hardware has sparse kernels: NVIDIA Ampere and newer "
           "sparse tensor cores (cuSPARSELt, torch.sparse.to_sparse_semi_structured; the datasheets' 'with "
           "sparsity' figures are 2x the dense peak, ~1.3-1.8x end to end on large GEMMs). On this CPU the dense "
           "kernels multiply the zeros: no speedup, only the storage saving.")


@dataclass
class PruneResult:
    method: str
    model: nn.Module = field(repr=False)
    params_before: int
    params_after: int  # channel: the smaller model's parameters; fine/n:m: unchanged (zeros still stored dense)
    nonzero_after: int
    dense_bytes: int  # fp32 bytes of the model before pruning
    stored_bytes: int  # fp32 bytes as stored after: dense smaller model (channel) or sparse format (fine, n:m)
    layers: dict[str, dict] = field(default_factory=dict)
    masks: MaskSet | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (layer, reason) for every layer left whole

    @property
    def compression(self) -> float:
        return self.dense_bytes / self.stored_bytes if self.stored_bytes else float("inf")

    def to_dict(self) -> dict:
        return {"method": self.method, "params_before": self.params_before, "params_after": self.params_after,
                "nonzero_after": self.nonzero_after, "dense_bytes": self.dense_bytes,
                "stored_bytes": self.stored_bytes, "compression": self.compression, "layers": self.layers,
                "notes": list(self.notes), "skipped": [list(s) for s in self.skipped]}


def prune(model: nn.Module, config, *, example_inputs: tuple | None = None, data: Iterable | None = None,
          progress: Progress | None = None) -> PruneResult:
    """Prune `model` IN PLACE by the method `type(config)` names; `result.model is model`.

    data: (x, y) batches for the Taylor criterion (and tracing when example_inputs is None).
    progress(what, fraction).
    """
    fn = PRUNERS.get_for(config)
    require_weight_layers(model, f"prune({type(config).__name__})")
    return fn(model, config, example_inputs=example_inputs, data=data, progress=progress or no_progress)


# ---- fine-grained ------------------------------------------------------------------------------------------
def _index_bits(config: FinePrune | NMPrune, m: nn.Module) -> int:
    return config.index_bits.get("Conv2d" if isinstance(m, nn.modules.conv._ConvNd) else "Linear", 5)


def sparse_storage_bytes(model: nn.Module, masks: MaskSet, config: FinePrune | NMPrune, weight_bits: int = 32) -> int:
    """Masked weights in relative-index format + every other parameter dense, at weight_bits."""
    masked = {id(lm.module.weight) for lm in masks.layers.values()}
    bits = sum(p.numel() * weight_bits for p in {id(p): p for p in model.parameters()}.values()
               if id(p) not in masked)
    for lm in masks.layers.values():
        bits += sparse_bits(lm.mask, weight_bits, _index_bits(config, lm.module))
    return math.ceil(bits / 8)


def _finish_masked(model, config, masks, before, dense, notes, why=None) -> PruneResult:
    masks.attach()
    layers = {n: {"shape": list(lm.mask.shape), "sparsity": 1.0 - lm.mask.float().mean().item(),
                  "index_bits": _index_bits(config, lm.module)} for n, lm in masks.layers.items()}
    skipped = skipped_layers(model, masks.layers, exclude=config.exclude, targets=config.targets, why=why)
    return PruneResult(config.name, model, before, count_params(model), count_nonzero(model), dense,
                       sparse_storage_bytes(model, masks, config), layers, masks, notes, skipped)


@PRUNERS.register(FinePrune)
@torch.no_grad()
def fine_prune(model: nn.Module, config: FinePrune, *, progress: Progress = no_progress, **_) -> PruneResult:
    """Zero the smallest-|w| weights: one global threshold, or per layer (config.scope / per_layer)."""
    layers = select_layers(model, config.targets, None, config.exclude)  # HF Conv1D included with "Linear"
    for name in config.per_layer or {}:
        if name not in layers:
            raise unknown_name_error(name, layers)
    tied = tied_layers(model, layers, config.per_layer)  # a tied head is pruned only when named in per_layer
    layers = {n: m for n, m in layers.items() if n not in tied}
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
    progress("fine pruning", 1.0)
    return _finish_masked(model, config, MaskSet(masks), before, dense, [], tied)


@PRUNERS.register(NMPrune)
@torch.no_grad()
def nm_prune(model: nn.Module, config: NMPrune, *, progress: Progress = no_progress, **_) -> PruneResult:
    """Keep the n largest |w| of every m consecutive weights along the reduction (input) dimension."""
    layers = select_layers(model, config.targets, None, config.exclude)  # HF Conv1D included with "Linear"
    why = tied_layers(model, layers)
    before, dense = count_params(model), param_bytes(model)
    masks, notes = {}, [NM_NOTE]
    for name, m in layers.items():
        if name in why:
            continue
        conv1d = is_hf_conv1d(m)
        w = m.weight.detach().t() if conv1d else m.weight.detach()  # Conv1D stores (in, out): view it (out, in)
        wk = w.movedim(1, -1).reshape(w.shape[0], -1) if w.ndim > 2 else w  # (out, K), input channels innermost
        if wk.shape[1] % config.m:
            why[name] = f"reduction size {wk.shape[1]} is not a multiple of m={config.m}; left dense"
            continue
        groups = wk.abs().reshape(-1, config.m)  # (out*K/m, m)
        top = groups.topk(config.n, dim=1).indices
        mk = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True).reshape(wk.shape)
        if w.ndim > 2:
            mk = mk.reshape(w.shape[0], *w.shape[2:], w.shape[1]).movedim(-1, 1)
        masks[name] = (m, mk.t().contiguous() if conv1d else mk)  # in the layout of m.weight
    progress("n:m pruning", 1.0)
    return _finish_masked(model, config, MaskSet(masks), before, dense, notes, why)


# ---- channel ----------------------------------------------------------------------------------------------
def channel_groups(model: nn.Module, example_inputs: tuple | None) -> list[Group]:
    """Transformer rules first (heads, MLP intermediates); otherwise the FX dependency graph."""
    from effml.compress.graph import trace_groups
    from effml.compress.transformer import transformer_groups

    groups = transformer_groups(model)
    return groups if groups else trace_groups(model, example_inputs or ())


def _taylor_grads(model: nn.Module, data: Iterable | None, batches: int) -> None:
    import torch.nn.functional as F

    from effml.train.core import logits_of

    if data is None:
        raise ConfigError("ChannelPrune.criterion='taylor' needs data: prune(model, cfg, data=loader)")
    model.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(data):
        if i >= batches:
            break
        F.cross_entropy(logits_of(model(x)), y).backward()


@PRUNERS.register(ChannelPrune)
def channel_prune(model: nn.Module, config: ChannelPrune, *, example_inputs=None, data=None,
                  progress: Progress = no_progress, **_) -> PruneResult:
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
        _taylor_grads(model, data, config.taylor_batches)
    plan, layers, why = {}, {}, {}
    for i, g in enumerate(groups):
        progress(f"channel pruning: {g.name}", i / max(1, len(groups)))
        s = 0.0 if g.name in skip else per.get(g.name, config.sparsity)
        remove = int(round(s * g.channels))
        if remove >= g.channels:
            raise ConfigError(f"pruning {g.name} at sparsity {s} would remove every one of its {g.channels} channels "
                              f"(round({s} x {g.channels}) = {remove}); lower its sparsity")
        if remove == 0:
            why.update({p: "excluded by the config" if g.name in skip else
                        f"round({s} x {g.channels} channels) = 0 removed" for p in g.producers()})
            continue
        score = CRITERIA.get(config.criterion)(model, g)  # (channels,)
        keep = torch.sort(torch.topk(score, g.channels - remove).indices).values
        plan[g.name] = (g, keep)
        layers[g.name] = {"kind": g.kind, "channels": g.channels, "kept": len(keep), "modules": g.modules()}
    if config.criterion == "taylor":
        model.zero_grad(set_to_none=True)
    cut(model, plan)
    progress("channel pruning", 1.0)
    after = count_params(model)
    notes = [] if plan else ["no channel group was pruned (every group frozen, excluded or at sparsity 0)"]
    touched = {mod for g, _ in plan.values() for mod in g.modules()}  # outputs or inputs cut
    in_groups = {mod for g in groups for mod in g.modules()}
    for name in weight_layers(model):
        if name not in touched and name not in in_groups and name not in why:
            why[name] = ("no prunable channel group holds it (its outputs are fixed, e.g. the model output, or "
                         "the dependency analysis could not place it)")
    skipped = skipped_layers(model, [n for n in weight_layers(model) if n in touched and n not in why],
                             exclude=config.exclude, why=why)
    return PruneResult("channel", model, before, after, count_nonzero(model), dense, param_bytes(model), layers,
                       None, notes, skipped)
