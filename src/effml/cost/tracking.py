"""What is running and what is alive: the module call stack (forward and backward) and live tensor bytes."""

from __future__ import annotations

import weakref
from collections import Counter

import torch
from torch import nn
from torch.autograd.graph import register_multi_grad_hook

from effml.cost.profile import ModuleInfo
from effml.cost.registry import tensors


def packed_weights(model: nn.Module) -> list[torch.Tensor]:
    """Weights and biases hidden in the packed parameters of quantized modules (torch.ao int8)."""
    from effml.cost.formulas.quantized import unpack

    out = []
    for mod in model.modules():
        packed = getattr(mod, "_packed_params", None)
        if packed is not None and not isinstance(packed, nn.Module):  # the ScriptObject itself, once
            out.extend(t for t in unpack(packed) if t is not None)
    return out


def weights(model: nn.Module) -> tuple[int, int]:
    """(count, bytes) of a module's parameters, each tensor once, plus quantized packed weights."""
    tensors_ = list(model.parameters()) + packed_weights(model)
    return sum(t.numel() for t in tensors_), sum(t.numel() * t.element_size() for t in tensors_)


def embedding_params(model: nn.Module) -> int:
    """Parameters of the nn.Embedding modules and of the output head (transformers' get_output_embeddings),
    each tensor once (a tied head is the input embedding): what weight-only quantizers leave unquantized."""
    seen: dict[int, int] = {}
    for mod in model.modules():
        if isinstance(mod, nn.Embedding):
            seen.update((id(p), p.numel()) for p in mod.parameters())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, nn.Module):
        seen.update((id(p), p.numel()) for p in head.parameters())
    return sum(seen.values())


class ModuleTracker:
    """Names of the modules active at each op: a stack in forward; in backward, the modules whose output
    gradients have arrived and whose input gradients have not (found with multi-grad hooks, as
    torch.utils.module_tracker does). Names are the first name `named_modules()` gives a module."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.names: dict[int, str] = {}
        self.info: dict[str, ModuleInfo] = {}
        for name, mod in model.named_modules():
            self.names[id(mod)] = name
            self.info[name] = ModuleInfo(type(mod).__name__, weights(mod)[0])
        self.param_modules: dict[int, tuple[str, ...]] = {}  # id(parameter) -> its module's stack (first name)
        for name, prm in model.named_parameters():
            parts = name.split(".")[:-1]
            self.param_modules.setdefault(id(prm), tuple(".".join(parts[:i + 1]) for i in range(len(parts))))
        self.stack: list[str] = []
        self.backward_active: Counter[str] = Counter()
        self._handles: list = []

    def __enter__(self) -> "ModuleTracker":
        for mod in self.model.modules():
            self._handles.append(mod.register_forward_pre_hook(self._pre))
            self._handles.append(mod.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def current(self, backward: bool) -> tuple[str, ...]:
        if backward:
            names = [n for n, c in self.backward_active.items() if c > 0 and n]
            return tuple(sorted(names, key=lambda n: n.count(".")))
        return tuple(n for n in self.stack if n)

    def innermost(self) -> str | None:
        return self.stack[-1] if self.stack else None

    def _pre(self, mod, inputs):
        name = self.names[id(mod)]
        self.stack.append(name)
        self.info[name].calls += 1
        grads = [t for t in tensors(inputs) if t.requires_grad]
        if grads and torch.is_grad_enabled():  # backward leaves this module when its input grads are done
            self._handles.append(register_multi_grad_hook(grads, lambda _g, n=name: self._bw_leave(n)))

    def _post(self, mod, inputs, output):
        name = self.stack.pop()
        grads = [t for t in tensors(output) if t.requires_grad]
        if grads and torch.is_grad_enabled():  # backward enters this module when its output grads arrive
            self._handles.append(register_multi_grad_hook(grads, lambda _g, n=name: self._bw_enter(n)))

    def _bw_enter(self, name: str) -> None:
        self.backward_active[name] += 1

    def _bw_leave(self, name: str) -> None:
        if self.backward_active[name] > 0:
            self.backward_active[name] -= 1


class LiveMemory:
    """Bytes of the tensors created during the run that are still alive, and the peak of that sum.

    Storages are counted once however many views share them; storages that existed before the run
    (parameters, buffers, example inputs) are excluded. A storage leaves when Python frees it.
    """

    def __init__(self, preexisting: list[torch.Tensor]):
        self.excluded = {t.untyped_storage()._cdata for t in preexisting}
        self.live: dict[int, tuple[int, weakref.ref]] = {}
        self.current = 0
        self.peak = 0
        self.active = True

    def track(self, tree) -> None:
        for t in tensors(tree):
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # sparse, nested or subclass without storage
                continue
            key = storage._cdata
            if key in self.excluded or key in self.live:
                continue
            size = storage.nbytes()
            self.live[key] = (size, weakref.ref(storage, lambda _r, k=key: self._free(k)))
            self.current += size
            self.peak = max(self.peak, self.current)

    def _free(self, key: int) -> None:
        if self.active:
            size, _ = self.live.pop(key, (0, None))
            self.current -= size

    def close(self) -> None:
        self.active = False
        self.live.clear()
