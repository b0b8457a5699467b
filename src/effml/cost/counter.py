"""`effml.profile`: count every aten op a model runs, at the PyTorch dispatch level.

A TorchDispatchMode sees each aten op after autograd and after composite ops were decomposed, whatever
module or functional made it, on any device (meta included: huge models cost no memory). Attention is the
one exception: `F.scaled_dot_product_attention` is counted where it is called, by a TorchFunctionMode,
before the dispatcher picks a backend (flash, efficient, or the math decomposition that meta and some CPU
paths use and that would otherwise be seen as bmm over the full L x S square). Its forward and backward
kernels are then treated as fused: the ops they decompose into are neither counted again nor tracked
as live memory, except their outputs.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from effml.cost import formulas  # noqa: F401  (registers the formulas)
from effml.cost.formulas.linalg import AttentionShape, grouped_mm_output, shape_only_grouped_mm
from effml.cost.masks import Shadows
from effml.cost.profile import OpEvent, Profile
from effml.cost.registry import OpCost, bytes_of, lookup, tensors
from effml.cost.tracking import LiveMemory, ModuleTracker, embedding_params, weights
from effml.errors import EffmlError, ModelError
from effml.units import dtype_name

SDPA = torch.nn.functional.scaled_dot_product_attention
SDPA_OP = "aten.scaled_dot_product_attention"
MODULES_TAG = "effml_modules"
GROUPED_MM_OPS = ("aten._grouped_mm", "transformers.grouped_mm_fallback")  # (routed rows, expert weights (G, ., .))  # autograd node metadata: the module stack whose forward created the node


_QUANTIZED = {torch.quint8: "int8", torch.qint8: "int8", torch.qint32: "int32", torch.quint4x2: "int4"}


def _dtype_label(tree) -> str:
    """The dtype an op computes in: its first floating tensor's, else a quantized one's, else the first's."""
    ts = tensors(tree)
    for t in ts:
        if t.is_floating_point():
            return dtype_name(t.dtype)
    for t in ts:
        if t.dtype in _QUANTIZED:
            return _QUANTIZED[t.dtype]
    return str(ts[0].dtype).removeprefix("torch.") if ts else "none"


def _arg_meta(a):
    if isinstance(a, torch.Tensor):
        return tuple(a.shape)
    if isinstance(a, (bool, int, float)):
        return a
    if isinstance(a, (list, tuple)) and all(isinstance(x, int) for x in a):
        return tuple(a)
    return None


def _args_meta(args) -> tuple:
    """Positional args in compact form (OpEvent.args): tensors as shapes, numbers and int lists as-is."""
    return tuple(_arg_meta(a) for a in args)


class _Counter:
    """Shared state of one counted run: events, unsupported ops, phase, suppression depth."""

    def __init__(self, tracker: ModuleTracker, memory: LiveMemory):
        self.tracker, self.memory = tracker, memory
        self.events: list[OpEvent] = []
        self.unsupported: Counter[str] = Counter()
        self.phase = "forward"
        self.suppress = 0  # > 0 inside a fused attention kernel
        self.shadows = Shadows()  # CPU values of meta index tensors: attention masks built on meta
        self.routed: dict[int, list] = {}  # expert weight storage -> [numel, experts, forward rows routed to them]
        self._hooks: list = []

    def add(self, op: str, category: str, cost: OpCost | None, read: int, written: int, dtype: str,
            args: tuple | None = None, modules: tuple[str, ...] | None = None) -> None:
        if modules is None:
            modules = self._backward_modules() if self.phase == "backward" else self.tracker.current(False)
        self.events.append(OpEvent(
            op=op, category=category, phase=self.phase, modules=modules,
            flops=None if cost is None else cost.flops, macs=0 if cost is None else cost.macs,
            bytes_read=read, bytes_written=written, dtype=dtype, args=args))

    def record(self, func, args, kwargs, out) -> None:
        if self.phase == "forward" and str(func.overloadpacket) in GROUPED_MM_OPS and args[1].dim() == 3:
            self._route(args[0], args[1])
        entry = lookup(func)
        op = str(func.overloadpacket)
        if entry is None:
            self.unsupported[op] += 1
            self.add(op, "unsupported", None, bytes_of((args, kwargs)), bytes_of(out), _dtype_label((args, out)))
        else:
            cost = entry.formula(args, kwargs, out)
            read = bytes_of((args, kwargs)) if cost.bytes_read is None else cost.bytes_read
            written = bytes_of(out) if cost.bytes_written is None else cost.bytes_written
            self.add(op, entry.category, cost, read, written, cost.dtype or _dtype_label((args, out)),
                     _args_meta(args))
        self.memory.track(out)

    # ---- backward attribution ------------------------------------------------------------------------
    def tag(self, out) -> None:
        """Label the autograd nodes a forward call created with the module stack that called it, walking back
        from its outputs to nodes already labelled (a composite call such as cross_entropy makes several)."""
        modules = self.tracker.current(False)
        todo = [t.grad_fn for t in tensors(out) if t.grad_fn is not None]
        while todo:
            node = todo.pop()
            if node is None or MODULES_TAG in node.metadata or "AccumulateGrad" in node.name():
                continue
            node.metadata[MODULES_TAG] = modules
            todo.extend(nxt for nxt, _ in node.next_functions)

    def _backward_modules(self) -> tuple[str, ...]:
        """The modules a backward op belongs to: those whose forward created the autograd node running it;
        a parameter's gradient accumulation belongs to the parameter's module."""
        node = torch._C._current_autograd_node()
        if node is not None:
            tag = node.metadata.get(MODULES_TAG)
            if tag is not None:
                return tag
            leaf = getattr(node, "variable", None)
            if leaf is not None and id(leaf) in self.tracker.param_modules:
                return self.tracker.param_modules[id(leaf)]
        return self.tracker.current(True)

    def _route(self, rows: torch.Tensor, experts: torch.Tensor) -> None:
        """A grouped matmul of routed rows (M, k) against stacked expert weights (G, k, n): remember how many rows
        reached the weight, to count the parameters a token uses (`Profile.active_params`)."""
        key = experts.untyped_storage()._cdata
        entry = self.routed.setdefault(key, [experts.numel(), experts.shape[0], 0])
        entry[2] += rows.shape[0]

    def active_params(self, model: nn.Module, params: int, tokens: int) -> int | None:
        """params less the unused share of each expert weight: a weight of G experts that saw M routed rows
        from `tokens` tokens serves each token with M / (G · tokens) of its experts (Mixtral: top-2 of 8)."""
        if not self.routed or tokens <= 0:
            return None
        by_key = {p.untyped_storage()._cdata: p for p in model.parameters()}
        idle = 0.0
        for key, (numel, groups, rows) in self.routed.items():
            if key in by_key:
                idle += numel * (1 - min(1.0, rows / (groups * tokens)))
        return params - int(round(idle)) if idle else None

    # ---- fused attention ---------------------------------------------------------------------------
    def attention(self, func, args, kwargs):
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
        b = {**dict(zip(names, args)), **kwargs}
        q, k, v, mask = b["query"], b["key"], b["value"], b.get("attn_mask")
        dropout = bool(b.get("dropout_p", 0.0))
        counted = self.shadows.scores(mask, q, k) if isinstance(mask, torch.Tensor) else None
        kept, keys = counted if counted is not None else (None, 1.0)
        shape = AttentionShape.of(q, k, v, bool(b.get("is_causal", False)), kept)
        self.suppress += 1
        try:
            out = func(*args, **kwargs)
        finally:
            self.suppress -= 1
        read = bytes_of([q, mask]) + round(bytes_of([k, v]) * keys)  # only the keys some query attends
        self.add(SDPA_OP, "attention", shape.forward(mask is not None, dropout), read, bytes_of(out), _dtype_label(q))
        self.memory.track(out)
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            self._fuse_backward(out, [q, k, v, mask], shape.backward(dropout), bytes_of([q, k, v, out, out]),
                                bytes_of([q, k, v]), _dtype_label(q))
        return out

    def _fuse_backward(self, out, inputs, cost, read, written, dtype) -> None:
        """Count attention's backward once, when its first node runs, and mute the nodes it is made of."""
        stop = {t.grad_fn for t in inputs if isinstance(t, torch.Tensor) and t.grad_fn is not None}
        root = out.grad_fn
        region: dict = {}  # the autograd nodes the attention call created, in discovery order
        todo = [root]
        while todo:
            node = todo.pop()
            if node is None or node in stop or node in region or "AccumulateGrad" in node.name():
                continue
            region[node] = None
            todo.extend(nxt for nxt, _ in node.next_functions)

        modules = self.tracker.current(False)  # the backward belongs where the forward call was made

        def pre(node):
            def hook(grad_outputs):
                if node is root:
                    self.add(SDPA_OP, "attention", cost, read, written, dtype, modules=modules)
                self.suppress += 1
            return hook

        def post(node):
            exits = [i for i, (nxt, _) in enumerate(node.next_functions) if nxt is not None and nxt not in region]

            def hook(grad_inputs, grad_outputs):
                self.suppress -= 1
                self.memory.track([grad_inputs[i] for i in exits if grad_inputs[i] is not None])
            return hook

        for node in region:
            self._hooks.append(node.register_prehook(pre(node)))
            self._hooks.append(node.register_hook(post(node)))

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.memory.close()


class _DispatchMode(TorchDispatchMode):
    def __init__(self, counter: _Counter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.counter.suppress and lookup(func) is None:
            # A composite op reaches the mode undecomposed under inference_mode (no autograd key):
            # decompose it here so its parts are counted by their own formulas.
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        if shape_only_grouped_mm(func, args, kwargs):
            out = grouped_mm_output(args, kwargs, "meta")  # its meta kernel refuses fp32, which CPUs run
        else:
            out = func(*args, **kwargs)
        if not self.counter.suppress:
            self.counter.record(func, args, kwargs, out)
            self.counter.shadows.record(func, args, kwargs, out)
        return out


class _AttentionMode(TorchFunctionMode):
    def __init__(self, counter: _Counter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is SDPA and not self.counter.suppress:
            return self.counter.attention(func, args, kwargs)
        out = func(*args, **kwargs)
        if self.counter.phase == "forward" and torch.is_grad_enabled():
            self.counter.tag(out)
        return out


def profile(model: nn.Module, *example_inputs, backward: bool = False, forward_kwargs: dict | None = None,
            name: str | None = None) -> Profile:
    """Count FLOPs, MACs, bytes and live memory of one forward (and, with backward=True, backward) pass.

    Runs `model(*example_inputs, **forward_kwargs)` once, on whatever device the model and inputs are on
    (`meta` costs no memory). Forward-only runs under `torch.no_grad()`, as inference does; backward=True
    back-propagates ones from the first differentiable output, leaving the model's `.grad`s as they were.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"profile() needs an nn.Module, got {type(model).__name__}")
    forward_kwargs = dict(forward_kwargs or {})
    params = list(model.parameters())
    buffers = list(model.buffers())
    inputs = tensors((example_inputs, forward_kwargs))
    tracker = ModuleTracker(model)
    counter = _Counter(tracker, LiveMemory(params + buffers + inputs))
    saved_grads = [p.grad for p in params]
    try:
        with torch.set_grad_enabled(backward), tracker, _AttentionMode(counter), _DispatchMode(counter):
            out = _forward(model, example_inputs, forward_kwargs, tracker)
            if backward:
                _backward(out, counter)
                del out
        peak = counter.memory.peak
    finally:
        counter.close()
        if backward:
            for p, g in zip(params, saved_grads):
                p.grad = g
    tokens = next((t.numel() for t in inputs if not t.is_floating_point()), 0)  # token ids: B x T
    return Profile(
        active_params=counter.active_params(model, weights(model)[0], tokens),
        events=counter.events,
        params=weights(model)[0],
        modules=tracker.info,
        peak_activation_bytes=peak,
        unsupported=dict(counter.unsupported),
        param_bytes=weights(model)[1],
        buffer_bytes=sum(b.numel() * b.element_size() for b in buffers),
        meta={
            "model": name or type(model).__name__,
            "inputs": [list(t.shape) for t in inputs],
            "dtype": _dtype_label(params) if params else _dtype_label(inputs),
            "device": str((params or inputs)[0].device) if (params or inputs) else "cpu",
            "backward": backward,
            "torch": torch.__version__,
            "unknown_masks": counter.shadows.unknown,  # explicit attention masks of unknown values: all pairs
            "embedding_params": embedding_params(model),  # stay fp16 in an int4/int8 checkpoint
        },
    )


def _forward(model, args, kwargs, tracker: ModuleTracker):
    try:
        return model(*args, **kwargs)
    except EffmlError:
        raise
    except Exception as exc:
        where = tracker.innermost()
        module = f"module '{where}' ({tracker.info[where].type})" if where else "the model"
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors((args, kwargs))) or "no tensors"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"{module} raised {type(exc).__name__} on the example input [{shapes}]: {detail}") from exc


def _backward(out, counter: _Counter) -> None:
    roots = out.to_tuple() if hasattr(out, "to_tuple") else out
    root = next((t for t in tensors(roots) if t.is_floating_point() and t.requires_grad), None)
    if root is None:
        raise ModelError("backward=True, but no floating-point output of the model requires grad "
                         "(are the parameters frozen, or the model run under no_grad?)")
    counter.suppress += 1  # the seed gradient is not part of the model's cost
    seed = torch.ones_like(root)
    counter.suppress -= 1
    counter.phase = "backward"
    torch.autograd.backward([root], [seed])
