"""Kernel workspace: memory a CPU kernel allocates inside itself and frees before returning.

Fake tensors see each op's outputs, not its scratch. On this CPU, oneDNN convolutions reorder tensors into
channel-blocked layouts (channels padded to 8 or 16), the bf16 convolution path builds im2col columns, and
flash attention keeps per-thread buffers: scratch as large as an activation, alive only during the op.
For the ops registered here the estimator runs each distinct call (shapes, strides, dtypes, arguments) once
for real on zero-filled tensors under the allocator tracker: workspace = allocator peak - bytes of the
outputs. That costs about one real step of those ops, so calls whose inputs exceed a size limit are skipped
(and reported). Scaling from small batches does not work: oneDNN picks batch-dependent algorithms (LeNet-5's
first conv backward: 79 kB of scratch at batch 1, 182 kB at 2, 2.35 MB at 32, not the 3.3 MB a line predicts).
All calls are measured in one profiler session (its start-up costs seconds); results are cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils._pytree import tree_leaves

from effml.registries import Registry

# ops that allocate scratch through the PyTorch allocator on CPU (found with the profiler's memory events:
# allocations inside the op that are not its outputs), each with a predicate picking the calls that may
WORKSPACE_OPS: Registry[Callable[[tuple, dict], bool]] = Registry("workspace op")

_aten = torch.ops.aten
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _always(args, kwargs) -> bool:
    return True


def _low_precision(args, kwargs) -> bool:
    """Reduced-precision GEMMs. On CPUs with native bf16 (AVX-512 BF16 / AMX, get_cpu_capability() 'AVX512' or
    'AMX') the bf16 mm/addmm go to oneDNN, which allocates an fp32 accumulator and packed copies of the operands
    through the allocator: a (4, 32, 64) GPT's 128x64 @ 64x64 bf16 addmm measured 50,816 B of scratch here, its
    128x256 @ 256x64 one 99,968 B. Elsewhere the kernel may allocate nothing: measuring the call finds out."""
    return any(isinstance(a, torch.Tensor) and a.dtype in _LOW_PRECISION for a in args)


for _op in (_aten.convolution.default, _aten.convolution_backward.default,
            _aten._scaled_dot_product_flash_attention_for_cpu.default,
            _aten._scaled_dot_product_flash_attention_for_cpu_backward.default):
    WORKSPACE_OPS.add(_op, _always)
for _op in (_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default):
    WORKSPACE_OPS.add(_op, _low_precision)


def has_workspace(func, args, kwargs) -> bool:
    """Whether this call of `func` may allocate scratch, so the estimator measures it."""
    return func in WORKSPACE_OPS and WORKSPACE_OPS[func](args, kwargs)


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def span(self) -> int:
        return 1 + sum((s - 1) * st for s, st in zip(self.shape, self.stride)) if all(self.shape) else 0

    def real(self) -> torch.Tensor:
        return torch.zeros(max(1, self.span()), dtype=self.dtype).as_strided(self.shape, self.stride)


@dataclass(frozen=True)
class OpCall:
    """An op with its arguments as specs (hashable, replayable); positional args flattened."""

    func: object
    args: tuple
    kwargs: tuple  # sorted (name, value) pairs

    @classmethod
    def of(cls, func, args, kwargs) -> OpCall:
        def spec(x):
            if isinstance(x, torch.Tensor):
                return TensorSpec(tuple(x.shape), tuple(x.stride()), x.dtype)
            return tuple(x) if isinstance(x, list) else x
        return cls(func, tuple(spec(a) for a in args), tuple(sorted((k, spec(v)) for k, v in kwargs.items())))

    def input_bytes(self) -> int:
        return sum(a.span() * a.itemsize for a in self.args if isinstance(a, TensorSpec))

    def materialize(self) -> tuple[list, dict]:
        """Real zero-filled arguments (made before the measured window: inputs are not scratch)."""
        def real(x):
            if isinstance(x, TensorSpec):
                return x.real()
            return list(x) if isinstance(x, tuple) else x
        return [real(a) for a in self.args], {k: real(v) for k, v in self.kwargs}


_CACHE: dict[OpCall, int] = {}


def _measure(calls: list[OpCall]) -> None:
    """Fill the cache for `calls`: each run once, all in one profiler session (its start-up costs seconds)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function

    from effml.train.measured import native_stderr_muted

    out_bytes: dict[int, int] = {}
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with native_stderr_muted():
        prof.__enter__()
    try:
        with torch.no_grad():
            for i, call in enumerate(calls):
                args, kwargs = call.materialize()
                with record_function(f"effml_workspace_{i}"):
                    out = call.func(*args, **kwargs)
                out_bytes[i] = sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes()
                                    for t in tree_leaves(out) if isinstance(t, torch.Tensor)}.values())
                del out, args, kwargs
    finally:
        with native_stderr_muted():
            prof.__exit__(None, None, None)
    for node in _walk(prof.profiler.kineto_results.experimental_event_tree()):
        if node.name.startswith("effml_workspace_"):
            i = int(node.name.rsplit("_", 1)[1])
            allocs = [n for n in _walk(node.children) if n.tag == _EventType.Allocation]
            peak = 0
            if allocs:
                first = min(allocs, key=lambda n: n.start_time_ns).extra_fields
                base = first.total_allocated - first.alloc_size  # the allocator's total before the op
                peak = max(a.extra_fields.total_allocated for a in allocs) - base
            _CACHE[calls[i]] = max(0, int(peak) - out_bytes[i])


def _walk(nodes):
    todo = list(nodes)
    while todo:
        node = todo.pop()
        yield node
        todo.extend(node.children)


def workspace_bytes(calls: list[OpCall], max_input_bytes: float) -> list[int | None]:
    """Scratch bytes of each call, measured (cached); None for calls whose inputs exceed max_input_bytes."""
    todo = [c for c in dict.fromkeys(calls) if c not in _CACHE and c.input_bytes() <= max_input_bytes]
    if todo:
        _measure(todo)
    return [_CACHE.get(c) for c in calls]


__all__ = ["WORKSPACE_OPS", "OpCall", "TensorSpec", "has_workspace", "workspace_bytes"]
