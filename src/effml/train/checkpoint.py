"""Activation checkpointing for any model: find its block list, plan which blocks to drop, patch them.

A *block container* is an `nn.ModuleList`/`nn.Sequential` of repeated blocks (GPT.blocks, ResNet.stages,
HF `model.layers`); found automatically or named (`per-block@layers`). A plan is a tuple of *segments*:
each segment is run under one non-reentrant `torch.utils.checkpoint` call, so only its input is kept and
everything inside is recomputed in backward.

- every-k: segments (block_i,) for i % k == 0 (k=1: per-block; every block input kept, one block recomputed
  at a time).
- sqrt (Chen et al. 2016): ceil(sqrt(n)) consecutive blocks per segment, so ~sqrt(n) segment inputs are
  kept and one segment's activations live during its recompute: O(sqrt(n)) memory for O(n) blocks. A
  multi-block segment needs the blocks to be called as a chain (block i's output is block i+1's only
  input), as `nn.Sequential` and `for blk in self.blocks: x = blk(x)` do; that is checked at run time.
- modules: the named modules, each its own segment.
- budget: chosen by the estimator (`effml.train.memory.plan_for_budget`).
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from dataclasses import asdict, dataclass

from torch import nn
from torch.utils.checkpoint import checkpoint

from effml.errors import ConfigError, ModelError
from effml.train.config import Checkpointing


@dataclass(frozen=True)
class CheckpointPlan:
    strategy: str
    container: str | None
    blocks: tuple[str, ...]  # every block of the container, in order
    segments: tuple[tuple[str, ...], ...]  # each run under one checkpoint call

    @property
    def checkpointed(self) -> tuple[str, ...]:
        return tuple(name for seg in self.segments for name in seg)

    def to_dict(self) -> dict:
        return {**asdict(self), "n_blocks": len(self.blocks), "n_segments": len(self.segments),
                "n_checkpointed": len(self.checkpointed)}


NO_PLAN = CheckpointPlan("none", None, (), ())


def _score(name: str, mod: nn.Module) -> tuple:
    kids = list(mod.children())
    types = Counter(type(k) for k in kids if any(True for _ in k.children()))  # non-leaf blocks only
    repeated = max(types.values()) if types else 0
    return repeated, len(kids)


def find_container(model: nn.Module, name: str | None = None) -> tuple[str, list[tuple[str, nn.Module]]]:
    """(container name, [(block name, block)]): the named container, or the ModuleList/Sequential with the
    most repeated non-leaf blocks (then the most children; the first in module order on a tie)."""
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            raise ConfigError(f"checkpointing container {name!r} is not a module of {type(model).__name__}"
                              + _did_you_mean(name, modules))
        cont = modules[name]
    else:
        candidates = [(n, m) for n, m in modules.items()
                      if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) >= 2]
        if not candidates:
            raise ConfigError(f"{type(model).__name__} has no nn.ModuleList/nn.Sequential of blocks to checkpoint; "
                              "name modules instead (modules:NAME,NAME)")
        name, cont = max(candidates, key=lambda nm: _score(*nm))  # max keeps the first of equal scores
    prefix = f"{name}." if name else ""
    blocks = [(prefix + n, m) for n, m in cont.named_children()]
    if len(blocks) < 2:
        raise ConfigError(f"checkpointing container {name!r} has {len(blocks)} child module(s); it needs >= 2")
    return name, blocks


def _did_you_mean(name: str, modules) -> str:
    close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
    return f"; did you mean {', '.join(close)}?" if close else " (see model.named_modules())"


def plan(model: nn.Module, spec: Checkpointing | str | None) -> CheckpointPlan:
    """The segments `spec` asks for (budget plans come from the estimator, not from here)."""
    spec = Checkpointing.parse(spec)
    if not spec.enabled:
        return NO_PLAN
    if spec.strategy == "modules":
        modules = dict(model.named_modules())
        names = tuple(dict.fromkeys(spec.modules))  # each once, in the given order
        for n in names:
            if n not in modules or n == "":
                raise ConfigError(f"checkpointing target {n!r} is not a module name of {type(model).__name__}"
                                  + _did_you_mean(n, modules))
        return CheckpointPlan("modules", None, names, tuple((n,) for n in names))
    container, blocks = find_container(model, spec.container)
    names = tuple(n for n, _ in blocks)
    inplace = {n for n, m in blocks if getattr(m, "inplace", False) is True}  # e.g. nn.ReLU(inplace=True)
    if spec.strategy == "every":  # an in-place layer would overwrite the input its checkpoint keeps: skip it
        return CheckpointPlan(spec.label(), container, names,
                              tuple((n,) for i, n in enumerate(names) if i % spec.every == 0 and n not in inplace))
    if spec.strategy == "sqrt":
        return CheckpointPlan("sqrt", container, names, _segments(names, math.ceil(math.sqrt(len(names))), inplace))
    raise ConfigError(f"checkpointing {spec.label()!r} is chosen by the memory estimator: "
                      "use effml.train.memory.plan_for_budget (the CLI does this for you)")


def _segments(names: tuple[str, ...], size: int, inplace: set[str]) -> tuple[tuple[str, ...], ...]:
    """Chunks of `size` blocks; a chunk never starts with an in-place layer (it joins the chunk before),
    since it would overwrite the segment input that checkpointing keeps for the recompute."""
    segs: list[list[str]] = []
    for n in names:
        if not segs or (len(segs[-1]) >= size and n not in inplace):
            segs.append([n])
        else:
            segs[-1].append(n)
    return tuple(tuple(s) for s in segs)


def select(container: str | None, blocks: tuple[str, ...], chosen) -> CheckpointPlan:
    """A per-block plan over `chosen` blocks (used by the budget planner)."""
    keep = set(chosen)
    return CheckpointPlan("budget", container, blocks, tuple((n,) for n in blocks if n in keep))


class applied:
    """`with applied(model, plan): train...` patches the forwards of the planned segments, restores on exit."""

    def __init__(self, model: nn.Module, plan: CheckpointPlan, preserve_rng_state: bool = True):
        self.model, self.plan, self.preserve = model, plan, preserve_rng_state
        self._patched: list[tuple[nn.Module, object]] = []  # (module, its own instance forward or None)
        self._state: dict[tuple[str, ...], object] = {}  # segment -> the output its blocks must chain through

    def __enter__(self):
        modules = dict(self.model.named_modules())
        for seg in self.plan.segments:
            mods = [modules[n] for n in seg]
            self._patch(mods[0], self._head(seg, mods))
            for name, mod in zip(seg[1:], mods[1:]):
                self._patch(mod, self._passthrough(seg, name))
        return self

    def __exit__(self, *exc) -> None:
        for mod, own in reversed(self._patched):
            if own is None:
                del mod.forward
            else:
                mod.forward = own
        self._patched.clear()

    def _patch(self, mod: nn.Module, fn) -> None:
        self._patched.append((mod, mod.__dict__.get("forward")))
        mod.forward = fn

    def _head(self, seg: tuple[str, ...], mods: list[nn.Module]):
        fwds = [m.forward for m in mods]  # bound before any of them is patched
        preserve, state = self.preserve, self._state

        if len(mods) == 1:
            def one(*args, **kwargs):
                return checkpoint(fwds[0], *args, use_reentrant=False, preserve_rng_state=preserve, **kwargs)
            return one

        def chain(x):
            for f in fwds:
                x = f(x)  # (B, ...) -> (B, ...)
            return x

        def head(*args, **kwargs):
            if kwargs or len(args) != 1:
                raise ModelError(f"sqrt checkpointing runs {seg[0]}..{seg[-1]} as one segment, so each block must "
                                 "take one tensor and return one; use per-block checkpointing for this model")
            out = checkpoint(chain, args[0], use_reentrant=False, preserve_rng_state=preserve)
            state[seg] = out
            return out
        return head

    def _passthrough(self, seg: tuple[str, ...], name: str):
        state = self._state

        def passthrough(*args, **kwargs):
            expected = state.get(seg)
            if kwargs or len(args) != 1 or args[0] is not expected:
                raise ModelError(f"sqrt checkpointing: block {name!r} was not called on the output of the block "
                                 f"before it (segment {seg[0]}..{seg[-1]}); its blocks do not form a chain, "
                                 "use per-block checkpointing")
            state[seg] = args[0]
            return args[0]  # already computed inside the segment's checkpoint
        return passthrough


__all__ = ["NO_PLAN", "CheckpointPlan", "applied", "find_container", "plan", "select"]
