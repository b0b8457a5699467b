"""Run one training step on fake tensors and log every storage it creates: the estimator's raw material.

The model is cloned onto a `FakeTensorMode` whose tensors claim to be on the CPU but hold no data (meta
storage underneath). So dispatch is the CPU's: autocast applies, SDPA picks the CPU flash kernel (which
saves out + logsumexp, not the T x T scores), checkpointing recomputes, autograd saves and frees exactly
as in a real run, at zero memory cost. A TorchDispatchMode logs each new storage's bytes and the op
counter at which it appears and dies (weakref on the storage); module hooks log each block's bytes.
Nothing here is specific to an architecture.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from effml.cost.formulas.linalg import grouped_mm_output, shape_only_grouped_mm
from effml.errors import ConfigError, EffmlError, ModelError
from effml.train import checkpoint as ckpt
from effml.train.config import TrainConfig, get_optimizer, get_precision
from effml.train.recipes import Batch, TrainStep
from effml.train.workspace import OpCall, has_workspace, workspace_bytes
from effml.units import torch_dtype


@dataclass
class Lifetime:
    nbytes: int
    born: int  # event clock when created
    died: int | None = None  # event clock when freed; None: alive at the end
    cast: bool = False  # an autocast copy of a parameter

    def alive_at(self, t: int) -> bool:
        return self.born <= t and (self.died is None or self.died > t)


class StorageLog(TorchDispatchMode):
    """Every storage created under it, with birth and death times; `current`/`peak` of their bytes."""

    def __init__(self, preexisting, params=(), record_workspace: bool = False):
        super().__init__()
        self.calls: list[tuple[int, int, OpCall]] | None = [] if record_workspace else None  # (t, live, call)
        self.excluded = {_key(t) for t in preexisting}
        self.param_keys = {_key(p) for p in params}
        self.live: dict[int, Lifetime] = {}
        self.all: list[Lifetime] = []
        self.t = 0
        self.current = self.peak = self.peak_t = 0
        self.marks: dict[str, int] = {}  # name -> event clock
        self.marks_current: dict[str, int] = {}  # name -> live bytes then
        self.active = True

    def __enter__(self):
        # checkpointing saves the CPU RNG state (5 KB) per segment with torch.get_rng_state(), which is not a
        # dispatched op: wrap it so those tensors are logged too
        self._get_rng_state = torch.get_rng_state

        def get_rng_state():
            state = self._get_rng_state()
            self._track(state, False)
            return state
        torch.get_rng_state = get_rng_state
        return super().__enter__()

    def __exit__(self, *exc):
        torch.get_rng_state = self._get_rng_state
        return super().__exit__(*exc)

    def mark(self, name: str) -> None:
        self.marks[name] = self.t
        self.marks_current[name] = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if shape_only_grouped_mm(func, args, kwargs or {}):  # MoE experts in fp32: the fake kernel refuses them
            out = grouped_mm_output(args, kwargs or {}, "cpu")  # made under the fake mode below: a fake tensor
        else:
            out = func(*args, **(kwargs or {}))
        cast = func is torch.ops.aten._to_copy.default and _key(args[0]) in self.param_keys
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, cast)
        if self.calls is not None and has_workspace(func, args, kwargs or {}):
            self.calls.append((self.t, self.current, OpCall.of(func, args, kwargs or {})))
        return out

    def _track(self, t: torch.Tensor, cast: bool) -> None:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        k = st._cdata
        if k in self.excluded or k in self.live:
            return
        self.t += 1  # the clock ticks at every birth and death
        life = Lifetime(st.nbytes(), self.t, cast=cast)
        self.live[k] = life
        self.all.append(life)
        weakref.finalize(st, self._free, k)
        self.current += life.nbytes
        if self.current > self.peak:
            self.peak, self.peak_t = self.current, self.t

    def _free(self, k: int) -> None:
        if self.active and k in self.live:
            life = self.live.pop(k)
            self.t += 1
            life.died = self.t
            self.current -= life.nbytes


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


@dataclass
class Trace:
    """What one simulated step left behind."""

    log: StorageLog
    grad_keys: set[int]
    param_bytes: int
    buffer_bytes: int
    grad_bytes: int  # all gradients of one replica
    params: int
    largest_module_param_bytes: int  # biggest leaf module's weights in the compute dtype (ZeRO-3 gather)
    block_bytes: dict[str, int] = field(default_factory=dict)  # bytes each block keeps alive after its forward
    block_order: tuple[str, ...] = ()
    container: str | None = None
    optimizer_state_bytes: int = 0
    optimizer_temp_bytes: int = 0
    workspace: list[tuple[int, int, int]] = field(default_factory=list)  # (t, live bytes after the op, scratch)
    workspace_skipped: int = 0  # ops too large to measure their scratch here
    foreach: bool = False  # the optimizer's temporaries span all parameters (sharded with its states)
    attention: str = "cpu"  # the attention kernel simulated (ATTENTION_KERNELS)
    attention_calls: int = 0  # SDPA calls seen


def _fake_like(fm: FakeTensorMode, t: torch.Tensor, dtype=None) -> torch.Tensor:
    with fm:
        return torch.empty(t.shape, dtype=dtype or t.dtype, device="cpu")


def fake_clone(model: nn.Module, fm: FakeTensorMode, param_dtype: torch.dtype) -> nn.Module:
    """A deep copy of `model` whose float parameters are fake tensors in `param_dtype` (tied weights stay
    tied; the original is untouched, whatever device it is on)."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        if id(p) not in memo:
            dt = param_dtype if p.is_floating_point() else p.dtype
            memo[id(p)] = nn.Parameter(_fake_like(fm, p, dt), requires_grad=p.requires_grad)
    for b in model.buffers():
        if id(b) not in memo:
            dt = param_dtype if (b.is_floating_point() and param_dtype != torch.float32) else b.dtype
            memo[id(b)] = _fake_like(fm, b, dt)
    return copy.deepcopy(model, memo).train()


def fake_batch(fm: FakeTensorMode, batch: Batch, float_dtype: torch.dtype | None) -> Batch:
    def conv(x):
        if not isinstance(x, torch.Tensor):
            return x
        return _fake_like(fm, x, float_dtype if (float_dtype and x.is_floating_point()) else None)
    return Batch(tuple(conv(a) for a in batch.args), conv(batch.target), {k: conv(v) for k, v in batch.kwargs.items()})


def optimizer_profile(config: TrainConfig, params: list[torch.Tensor], fm: FakeTensorMode,
                      foreach: bool) -> tuple[int, int]:
    """(state bytes for all `params`, temporary bytes of one step), measured by stepping the real torch
    optimizer twice on fake proxies. Per-tensor loop: the proxy is the largest parameter, whose step has
    the largest temporaries. foreach: the temporaries span the whole list, so two proxies of 4096
    elements each are stepped and their temporaries scaled per element to all parameters. States =
    per-element bytes x numel + per-tensor bytes (step counters), per parameter."""
    big = max(params, key=lambda p: p.numel())
    shapes = [(4096,), (4096,)] if foreach else [tuple(big.shape)]
    proxies = [nn.Parameter(_fake_like(fm, torch.empty(sh, device="meta", dtype=big.dtype))) for sh in shapes]
    with fm:
        for p in proxies:
            p.grad = torch.empty_like(p)
    opt = get_optimizer(config.optimizer).build(proxies, config.lr, foreach)
    with fm:
        opt.step()  # creates the state
        states = [s for st in opt.state.values() for s in st.values() if isinstance(s, torch.Tensor)]
        log = StorageLog([*proxies, *[p.grad for p in proxies], *states])
        with log:
            opt.step()  # steady state: only temporaries are new
    log.active = False
    per_elem = per_tensor = 0.0
    p0 = proxies[0]
    for st in opt.state[p0].values():
        if isinstance(st, torch.Tensor):
            if st.numel() == p0.numel():
                per_elem += st.numel() * st.element_size() / p0.numel()
            else:
                per_tensor += st.numel() * st.element_size()
    total = sum(int(per_elem * p.numel() + per_tensor) for p in params)
    if foreach:
        temp = log.peak / sum(p.numel() for p in proxies) * sum(p.numel() for p in params)
    else:
        temp = log.peak
    return total, int(temp)


def identical_blocks(model: nn.Module, container: str | None = None) -> tuple[str, int] | None:
    """(container name, n) if the block container holds n >= 2 blocks of one type with equal parameter
    shapes (a stack whose step memory is affine in n), else None."""
    try:
        name, blocks = ckpt.find_container(model, container)
    except EffmlError:
        return None
    sig = {(type(m), tuple((k, tuple(p.shape), p.dtype) for k, p in m.named_parameters())) for _, m in blocks}
    return (name, len(blocks)) if len(sig) == 1 and name else None


class truncated:
    """`with truncated(model, 'layers', k):` the container holds only its first k blocks (restored on exit)."""

    def __init__(self, model: nn.Module, container: str, k: int):
        parent, _, attr = container.rpartition(".")
        self.owner = model.get_submodule(parent) if parent else model
        self.attr, self.k = attr, k

    def __enter__(self):
        self.full = getattr(self.owner, self.attr)
        head = list(self.full)[:self.k]
        setattr(self.owner, self.attr, nn.Sequential(*head) if isinstance(self.full, nn.Sequential)
                else nn.ModuleList(head))
        return self

    def __exit__(self, *exc):
        setattr(self.owner, self.attr, self.full)


ATTENTION_KERNELS = {
    "cpu": "as torch runs it on this CPU: the flash kernel, or with attention dropout the math path, which keeps "
           "the s x s scores, softmax, dropout mask and output (Korthikanti et al. 2022: 5·a·s²·b bytes per layer)",
    "flash": "a fused GPU kernel (FlashAttention-2 / memory-efficient SDPA): out + logsumexp + the dropout RNG "
             "seed per layer, no s x s tensor (Korthikanti et al. 2022: 34·s·b·h per layer, no 5·a·s²·b)",
}


class AttentionKernel:
    """Counts SDPA calls; with fused=True runs them as a fused GPU kernel does: dropout is applied inside the
    kernel from a saved RNG seed, so the step is simulated with the CPU flash kernel (the same saved tensors:
    out + logsumexp) and dropout_p = 0. `F.scaled_dot_product_attention` is swapped for the step (a function
    mode would not see checkpointing's recomputation in backward), as StorageLog swaps torch.get_rng_state."""

    def __init__(self, fused: bool):
        self.fused = fused
        self.calls = 0

    def __enter__(self):
        self._sdpa = F.scaled_dot_product_attention

        def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, *args, **kwargs):
            self.calls += 1
            return self._sdpa(query, key, value, attn_mask, 0.0 if self.fused else dropout_p, *args, **kwargs)
        F.scaled_dot_product_attention = sdpa
        return self

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self._sdpa


def simulate(model: nn.Module, batch: Batch, config: TrainConfig, loss: str,
             plan: ckpt.CheckpointPlan = ckpt.NO_PLAN, foreach: bool = False,
             watch_container: str | None | bool = False, workspace_max_bytes: float = 0,
             attention: str = "cpu") -> Trace:
    """Run one micro-step (forward, loss, backward) of `config` on a fake clone of `model` and log it.
    workspace_max_bytes > 0: measure the scratch of workspace ops whose inputs are at most that large.
    attention: 'cpu' (this CPU's SDPA kernels) or 'flash' (a GPU target's fused kernel), see ATTENTION_KERNELS."""
    if attention not in ATTENTION_KERNELS:
        raise ConfigError(f"attention kernel {attention!r} is not one of {', '.join(ATTENTION_KERNELS)}")
    precision = get_precision(config.precision)
    fm = FakeTensorMode()
    clone = fake_clone(model, fm, torch_dtype(precision.param_dtype))
    fb = fake_batch(fm, batch, torch_dtype(precision.param_dtype) if precision.param_dtype != "fp32" else None)
    params = list(dict.fromkeys(p for p in clone.parameters()))
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ModelError(f"{type(model).__name__} has no trainable parameters")
    if config.grad_accum > 1:  # later micro-steps start with every gradient allocated: the worst case
        with fm:
            for p in trainable:
                p.grad = torch.zeros_like(p)
    inputs = [t for t in tree_leaves((fb.args, fb.kwargs, fb.target)) if isinstance(t, torch.Tensor)]
    pre = [*params, *clone.buffers(), *inputs, *[p.grad for p in trainable if p.grad is not None]]
    log = StorageLog(pre, params, record_workspace=workspace_max_bytes > 0)
    step = TrainStep(clone, config, loss, "cpu")
    block_bytes, order, container = {}, (), None
    handles = []
    if watch_container is not False:
        container, blocks = ckpt.find_container(clone, watch_container or None)
        order = tuple(n for n, _ in blocks)
        for name, mod in blocks:
            handles += _watch(mod, name, log, block_bytes)

    class Hooks:
        def forward_end(self):
            log.mark("forward_end")

    try:
        kernel = AttentionKernel(fused=attention == "flash")
        with fm, ckpt.applied(clone, plan), log, kernel:
            step.forward_backward(fb, hooks=Hooks())
    except EffmlError:
        raise
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(f"simulating a training step of {type(model).__name__} failed: "
                         f"{type(exc).__name__}: {detail}") from exc
    finally:
        for h in handles:
            h.remove()
    log.mark("backward_end")
    grad_keys = {_key(p.grad) for p in trainable if p.grad is not None}
    states, temp = optimizer_profile(config, trainable, fm, foreach)
    log.active = False
    calls = log.calls or []
    sizes = workspace_bytes([c for _, _, c in calls], workspace_max_bytes) if calls else []
    scratch = [(t, live, ws) for (t, live, _), ws in zip(calls, sizes) if ws]
    skipped = sum(ws is None for ws in sizes)
    cdt = torch_dtype(precision.compute_dtype)
    leaf_bytes = [sum(p.numel() for p in m.parameters(recurse=False)) * torch.empty((), dtype=cdt).element_size()
                  for m in clone.modules()]
    return Trace(
        log=log, grad_keys=grad_keys,
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        buffer_bytes=sum(b.numel() * b.element_size() for b in dict.fromkeys(clone.buffers())),
        grad_bytes=sum(p.numel() * p.element_size() for p in trainable),
        params=sum(p.numel() for p in params), largest_module_param_bytes=max(leaf_bytes, default=0),
        block_bytes=block_bytes, block_order=order, container=container,
        optimizer_state_bytes=states, optimizer_temp_bytes=temp, workspace=scratch, workspace_skipped=skipped,
        foreach=foreach, attention=attention, attention_calls=kernel.calls)


def _watch(mod: nn.Module, name: str, log: StorageLog, out: dict) -> list:
    """Bytes a block keeps alive after its (first, forward-phase) call."""
    before: list[int] = []

    def pre(_m, _a):
        before.append(log.current)

    def post(_m, _a, _o):
        start = before.pop()
        if "forward_end" not in log.marks and name not in out:
            out[name] = log.current - start
    return [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]


__all__ = ["ATTENTION_KERNELS", "AttentionKernel", "Lifetime", "StorageLog", "Trace", "fake_batch", "fake_clone",
           "optimizer_profile", "simulate"]
