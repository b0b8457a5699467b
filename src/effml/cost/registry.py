"""The per-op formula registry, keyed by aten overload packet, and the byte accounting every op shares.

A formula receives the op's (args, kwargs, out) and returns an `OpCost`. Bytes default to the generic
rule: every tensor argument is read once and every tensor output written once, at its own dtype, counting
the distinct elements a tensor addresses (a broadcast bias with stride 0 is read once, not per row).
A formula overrides bytes only where that rule is wrong (embedding reads the gathered rows, not the table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from effml.errors import CountError
from effml.registries import Registry

aten = torch.ops.aten


@dataclass(frozen=True)
class OpCost:
    flops: int
    macs: int = 0
    bytes_read: int | None = None  # None: generic rule
    bytes_written: int | None = None
    dtype: str | None = None  # the dtype the op computes in, when not its tensors' (e.g. dynamic int8)


Formula = Callable[[tuple, dict, Any], OpCost]


@dataclass(frozen=True)
class Entry:
    formula: Formula
    category: str


# aten ops by overload packet; ops of other libraries' namespaces by qualified name "namespace.op" (their
# packets exist only once the library is imported, e.g. "transformers.grouped_mm_fallback")
FORMULAS: Registry[Entry] = Registry("op formula")
FREE = OpCost(0, 0, 0, 0)  # metadata-only ops: views, aliases, shape queries


def _packets(names_or_packets) -> list:
    out = []
    for item in names_or_packets:
        if isinstance(item, str):
            found = [getattr(aten, n, None) for n in (item, item + "_")]  # in-place is its own packet
            if not any(found):
                raise CountError(f"no aten op named {item!r} (nor {item + '_'!r}) in this torch")
            out.extend(pkt for pkt in found if pkt is not None)
        else:
            out.append(item)
    return out


def formula(*ops, category: str):
    """Register `fn(args, kwargs, out) -> OpCost` for aten ops (packets, or names: 'relu' adds 'relu_')."""

    def wrap(fn: Formula) -> Formula:
        for pkt in _packets(ops):
            _add(pkt, Entry(fn, category))
        return fn

    return wrap


def _add(key, entry: Entry) -> None:
    if key in FORMULAS:
        raise CountError(f"two formulas registered for {key}")
    FORMULAS.add(key, entry)


def named_formula(*names: str, category: str):
    """Register `fn(args, kwargs, out) -> OpCost` for ops named "namespace.op" (not aten)."""

    def wrap(fn: Formula) -> Formula:
        for name in names:
            _add(name, Entry(fn, category))
        return fn

    return wrap


def lookup(func) -> Entry | None:
    pkt = func.overloadpacket
    if pkt in FORMULAS:
        return FORMULAS[pkt]
    name = str(pkt)
    return FORMULAS[name] if not name.startswith("aten.") and name in FORMULAS else None


# ---- tensors and bytes -----------------------------------------------------------------------------
def tensors(tree) -> list[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts (op arguments, module outputs), in order."""
    out: list[torch.Tensor] = []
    _collect(tree, out)
    return out


def _collect(x, out: list) -> None:
    # a hand-rolled flatten: torch's pytree costs ~15% of a counted 7B forward
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            _collect(y, out)
    elif isinstance(x, dict):
        for y in x.values():
            _collect(y, out)


def first_tensor(tree) -> torch.Tensor:
    for t in tensors(tree):
        return t
    raise CountError("op returned no tensor")


def distinct_elems(t: torch.Tensor) -> int:
    """Elements a tensor addresses in memory: broadcast (stride-0) dimensions count once."""
    if t.layout != torch.strided:
        return t.numel()
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n


def nbytes(t: torch.Tensor) -> int:
    return distinct_elems(t) * t.element_size()


def bytes_of(tree) -> int:
    return sum(nbytes(t) for t in tensors(tree))


def numel(t: torch.Tensor) -> int:
    return t.numel()


def out_numel(out) -> int:
    return first_tensor(out).numel()


def prod(xs) -> int:
    return math.prod(int(x) for x in xs)


def bind(func, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Arguments by schema name, defaults filled: robust to the positional layout of each overload."""
    bound: dict[str, Any] = {}
    for i, arg in enumerate(func._schema.arguments):
        if i < len(args) and not arg.kwarg_only:
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
        else:
            bound[arg.name] = None
    return bound


# ---- registration helpers for the simple families --------------------------------------------------
def per_output_element(table: dict[str, int], category: str) -> None:
    """Ops costing a fixed number of FLOPs per output element (the count sits in the table)."""
    for name, k in table.items():
        formula(name, category=category)(lambda a, kw, out, k=k: OpCost(k * out_numel(out)))


def per_input_element(table: dict[str, int], category: str) -> None:
    """Reductions: a fixed number of FLOPs per element of the (first) input."""
    for name, k in table.items():
        formula(name, category=category)(lambda a, kw, out, k=k: OpCost(k * numel(first_tensor(a))))


def zero_flops(names, category: str, free: bool = False) -> None:
    """Data movement (bytes, no FLOPs) or, with free=True, metadata-only ops (no bytes either)."""
    cost = FREE if free else OpCost(0)
    for pkt in _packets(names):
        formula(pkt, category=category)(lambda a, kw, out, c=cost: c)
