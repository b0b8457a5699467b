"""Structured pruning of transformers without tracing: attention heads, MLP channels, whole blocks.

    prune(model, HeadPrune(ratio=0.5, criterion="activation"), data=tokens)   # (n, T) token ids
    prune(model, FFNPrune(ratio=0.5))                                          # magnitude needs no data
    prune(model, BlockPrune(n_blocks=6), data=tokens)                          # depth: drop the 6 least useful

Groups come from the module-structure rules of `effml.compress.transformer` (BERT/MiniLM, GPT-2, HF Llama family,
effml's Transformer); the model gets physically smaller and keeps its interface (HF models still `generate`).

Importance (`IMPORTANCE`, larger = kept), per channel (a head or an MLP channel) of a group:
  - magnitude: L2 norm of the channel's weights in every producer and consumer;
  - taylor: sum |w · dL/dw| over the channel's weights (Molchanov et al. 2019), L = next-token cross-entropy on
    `data` token ids (or cross-entropy of (x, y) batches);
  - activation: RMS over calibration tokens of the channel's input to the consumer (o_proj / down_proj) times
    the norm of the consumer's columns that read it (the channel's contribution to the output, Wanda-style).
Blocks (`BLOCK_IMPORTANCE`): "cosine" = 1 - mean cos(h_in, h_out) over calibration tokens (ShortGPT's Block
Influence, Men et al. 2024); "angular" = mean arccos(cos(h_in, h_out)) / π (Gromov et al. 2024, one block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from effml.compress.blockwise import block_inputs, find_blocks, hidden_of, next_input, run_block
from effml.compress.configs import CONFIGS, CompressionConfig
from effml.compress.hf_layers import linear_weight
from effml.compress.structured import CRITERIA, Group, cut
from effml.compress.transformer import transformer_groups
from effml.errors import ConfigError
from effml.registries import Registry

IMPORTANCE: Registry = Registry("transformer channel importance")  # name -> (model, groups, data) -> {group: score}
BLOCK_IMPORTANCE: Registry = Registry("block importance")  # name -> (h_in (N, C), h_out (N, C)) -> float


def _ratio(cls, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
        raise ConfigError(f"{cls}.ratio must be a fraction in [0, 1), got {v!r}")
    return float(v)


@dataclass(frozen=True)
class HeadPrune(CompressionConfig):
    """Remove `ratio` of every attention's heads (grouped-query: of the query heads of every KV group)."""

    name: ClassVar[str] = "heads"
    ratio: float = 0.5
    criterion: str = "magnitude"
    exclude: tuple[str, ...] = ()  # attention module names left whole

    def __post_init__(self):
        object.__setattr__(self, "ratio", _ratio(type(self).__name__, self.ratio))
        IMPORTANCE.get(self.criterion)
        self._names("exclude")


@dataclass(frozen=True)
class FFNPrune(HeadPrune):
    """Remove `ratio` of every MLP's intermediate channels (gate/up rows and down columns together)."""

    name: ClassVar[str] = "ffn"


@dataclass(frozen=True)
class BlockPrune(CompressionConfig):
    """Remove whole blocks: `n_blocks` of them, or round(ratio x blocks), the least important on `data`."""

    name: ClassVar[str] = "blocks"
    n_blocks: int | None = None
    ratio: float | None = None
    criterion: str = "cosine"

    def __post_init__(self):
        if (self.n_blocks is None) == (self.ratio is None):
            raise ConfigError("BlockPrune needs exactly one of n_blocks and ratio")
        if self.ratio is not None:
            object.__setattr__(self, "ratio", _ratio("BlockPrune", self.ratio))
        if self.n_blocks is not None and (isinstance(self.n_blocks, bool) or not isinstance(self.n_blocks, int)
                                          or self.n_blocks < 0):
            raise ConfigError(f"BlockPrune.n_blocks must be an integer >= 0, got {self.n_blocks!r}")
        BLOCK_IMPORTANCE.get(self.criterion)


for _cls in (HeadPrune, FFNPrune, BlockPrune):
    if _cls.name not in CONFIGS:
        CONFIGS.add(_cls.name, _cls)


# ---- importance ---------------------------------------------------------------------------------------------
def _run(model: nn.Module, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def _batches(data, what: str):
    if data is None:
        raise ConfigError(f"the {what} criterion needs calibration data: prune(model, cfg, data=token_ids) with "
                          "token ids (samples, seq) from effml.eval.calibration_tokens(tokenizer)")
    if isinstance(data, torch.Tensor):
        return [data[i:i + 1] for i in range(data.shape[0])]
    return list(data)


@IMPORTANCE.register("magnitude")
def magnitude(model, groups, data=None) -> dict[str, torch.Tensor]:
    return {g.name: CRITERIA.get("l2")(model, g) for g in groups}


@IMPORTANCE.register("taylor")
def taylor(model, groups, data=None) -> dict[str, torch.Tensor]:
    from effml.eval import logits_of

    was = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            for b in _batches(data, "taylor"):
                logits = logits_of(_run(model, b))
                if isinstance(b, torch.Tensor):  # next-token loss on the ids themselves
                    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), b[:, 1:].flatten())
                else:
                    loss = F.cross_entropy(logits, b[1])
                loss.backward()
        return {g.name: CRITERIA.get("taylor")(model, g) for g in groups}
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)


@IMPORTANCE.register("activation")
@torch.no_grad()
def activation(model, groups, data=None) -> dict[str, torch.Tensor]:
    consumers = {}
    for g in groups:
        mem = next(m for m in g.members if m.role == "in" and m.param == "weight")
        consumers[g.name] = (mem.module, mem.block)
    sq: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    mods = dict(model.named_modules())

    def hook(name, x):
        x = x.detach().float().reshape(-1, x.shape[-1])  # (N, in)
        sq[name] = sq.get(name, 0) + (x ** 2).sum(0)
        count[name] = count.get(name, 0) + x.shape[0]

    names = {c for c, _ in consumers.values()}
    hs = [mods[n].register_forward_hook(lambda m, i, o, n=n: hook(n, i[0])) for n in names]
    was = model.training
    model.eval()
    try:
        for b in _batches(data, "activation"):
            _run(model, b)
    finally:
        for h in hs:
            h.remove()
        model.train(was)
    out = {}
    for g in groups:
        cname, block = consumers[g.name]
        ms = sq[cname] / count[cname]  # (in,): mean square per input feature
        w = linear_weight(mods[cname]).detach().float()  # (out, in)
        per = ms.reshape(g.channels, block).sum(1).sqrt()  # (channels,) RMS of the channel's input
        out[g.name] = per * w.reshape(w.shape[0], g.channels, block).pow(2).sum((0, 2)).sqrt()
    return out


@BLOCK_IMPORTANCE.register("cosine")
def block_influence(h_in: torch.Tensor, h_out: torch.Tensor) -> float:
    return float(1 - F.cosine_similarity(h_in, h_out, dim=-1).mean())


@BLOCK_IMPORTANCE.register("angular")
def angular(h_in: torch.Tensor, h_out: torch.Tensor) -> float:
    cos = F.cosine_similarity(h_in, h_out, dim=-1).clamp(-1, 1)
    return float(torch.arccos(cos).mean() / math.pi)


# ---- pruners ------------------------------------------------------------------------------------------------
def _keep_heads(g: Group, score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Sorted kept head indices; grouped-query attention: the same count kept in every KV group."""
    kv = getattr(g, "kv_heads", 0) or 1  # multi-head: one group of all heads
    rep = g.channels // kv
    remove = int(round(ratio * rep))
    if remove >= rep:
        what = f"{rep} query heads of each of its {kv} KV groups" if kv > 1 else f"{rep} heads"
        raise ConfigError(f"pruning {g.name} at ratio {ratio} would remove all {what} (round({ratio} x {rep}) = "
                          f"{remove}); lower the ratio")
    per = score.reshape(kv, rep)  # (kv, rep): query heads kv-group-major
    top = torch.topk(per, rep - remove, dim=1).indices.sort(1).values  # (kv, kept)
    return (top + torch.arange(kv)[:, None] * rep).reshape(-1)


def keep_channels(g: Group, score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Sorted kept channel indices of a transformer group at `ratio` removed; refuses to empty a group, naming it.
    Heads of grouped-query attention are kept by the same count in every KV group (`effml.compress.transformer.HeadGroup.kv_heads`)."""
    if g.kind == "heads":
        return _keep_heads(g, score, ratio)
    remove = int(round(ratio * g.channels))
    if remove >= g.channels:
        raise ConfigError(f"pruning {g.name} at ratio {ratio} would remove all {g.channels} channels "
                          f"(round({ratio} x {g.channels}) = {remove}); lower the ratio")
    return torch.topk(score, g.channels - remove).indices.sort().values


def _group_prune(model, config, kind: str, data, progress):
    from effml.compress.layers import count_nonzero, count_params, param_bytes
    from effml.compress.prune import PruneResult

    groups = [g for g in transformer_groups(model) if g.kind == kind]
    if not groups:
        raise ConfigError(f"{type(model).__name__} has no {'attention' if kind == 'heads' else 'MLP'} blocks that "
                          "effml's transformer rules recognise (BERT, GPT-2, Llama family, effml Transformer)")
    unknown = [e for e in config.exclude if e not in {g.name for g in groups}]
    if unknown:
        raise ConfigError(f"exclude names {unknown[0]!r}, not one of the {kind} groups: "
                          f"{', '.join(g.name for g in groups[:6])} ...")
    todo = [g for g in groups if g.name not in config.exclude]
    before, dense = count_params(model), param_bytes(model)
    progress(f"{config.name}: importance ({config.criterion})", 0.0)
    scores = IMPORTANCE.get(config.criterion)(model, todo, data)
    plan, layers = {}, {}
    for g in todo:
        keep = keep_channels(g, scores[g.name], config.ratio)
        if len(keep) < g.channels:
            plan[g.name] = (g, keep)
        layers[g.name] = {"kind": kind, "channels": g.channels, "kept": len(keep), "modules": g.modules()}
    cut(model, plan)
    progress(config.name, 1.0)
    skipped = [(g.name, "excluded by the config") for g in groups if g.name in config.exclude]
    return PruneResult(config.name, model, before, count_params(model), count_nonzero(model), dense,
                       param_bytes(model), layers, None, [], skipped)


def head_prune(model: nn.Module, config: HeadPrune, *, data=None, progress=None, **_):
    return _group_prune(model, config, "heads", data, progress or (lambda *a: None))


def ffn_prune(model: nn.Module, config: FFNPrune, *, data=None, progress=None, **_):
    return _group_prune(model, config, "mlp", data, progress or (lambda *a: None))


@torch.no_grad()
def block_scores(model: nn.Module, data: torch.Tensor, criterion: str = "cosine") -> list[float]:
    """Importance of every block on calibration token ids (n, T), each block fed the unpruned model's states."""
    if data is None:
        raise ConfigError("BlockPrune needs calibration data: prune(model, cfg, data=token_ids) with token ids "
                          "(samples, seq) from effml.eval.calibration_tokens(tokenizer)")
    _, blocks = find_blocks(model)
    was = model.training
    model.eval()
    try:
        inputs = block_inputs(model, blocks, data)
        fn, scores = BLOCK_IMPORTANCE.get(criterion), []
        for blk in blocks:
            outs = [run_block(blk, inp) for inp in inputs]
            h_in = torch.cat([hidden_of(i).reshape(-1, hidden_of(i).shape[-1]) for i in inputs])  # (N, C)
            h_out = torch.cat([o.reshape(-1, o.shape[-1]) for o in outs])  # (N, C)
            scores.append(fn(h_in.float(), h_out.float()))
            inputs = [next_input(i, o) for i, o in zip(inputs, outs)]
    finally:
        model.train(was)
    return scores


def drop_blocks(model: nn.Module, remove: list[int]) -> None:
    """Delete blocks by index and make the model's bookkeeping agree (layer counts, per-layer cache indices)."""
    prefix, blocks = find_blocks(model)
    kept = [b for i, b in enumerate(blocks) if i not in set(remove)]
    parent, _, attr = prefix.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.ModuleList(kept))
    args = getattr(model, "args", None)
    if args is not None and hasattr(args, "n_layers"):
        model.args = replace(args, n_layers=len(kept))  # effml Transformer: KV caches are sized from args
    cfg = getattr(model, "config", None)
    if cfg is not None:
        for key in ("num_hidden_layers", "n_layer"):
            if hasattr(cfg, key):
                setattr(cfg, key, len(kept))
        if isinstance(getattr(cfg, "layer_types", None), list):
            cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in set(remove)]
    for new, blk in enumerate(kept):  # HF caches index layers by layer_idx
        for m in blk.modules():
            if hasattr(m, "layer_idx") and isinstance(m.layer_idx, int):
                m.layer_idx = new


def block_prune(model: nn.Module, config: BlockPrune, *, data=None, progress=None, **_):
    from effml.compress.layers import count_nonzero, count_params, param_bytes
    from effml.compress.prune import PruneResult

    progress = progress or (lambda *a: None)
    _, blocks = find_blocks(model)
    n = config.n_blocks if config.n_blocks is not None else int(round(config.ratio * len(blocks)))
    if n >= len(blocks):
        raise ConfigError(f"BlockPrune would remove {n} of the model's {len(blocks)} blocks; keep at least one")
    before, dense = count_params(model), param_bytes(model)
    progress(f"blocks: importance ({config.criterion})", 0.0)
    scores = block_scores(model, data, config.criterion)
    remove = sorted(torch.topk(torch.tensor(scores), n, largest=False).indices.tolist()) if n else []
    drop_blocks(model, remove)
    progress("blocks", 1.0)
    layers = {f"block {i}": {"score": s, "removed": i in remove} for i, s in enumerate(scores)}
    notes = [f"removed blocks {remove} of {len(scores)} (lowest {config.criterion} importance)"]
    return PruneResult(config.name, model, before, count_params(model), count_nonzero(model), dense,
                       param_bytes(model), layers, None, notes, [])


def _register():
    from effml.compress.prune import PRUNERS

    PRUNERS.add(HeadPrune, head_prune)
    PRUNERS.add(FFNPrune, ffn_prune)
    PRUNERS.add(BlockPrune, block_prune)


_register()
