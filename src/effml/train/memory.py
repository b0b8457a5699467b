"""Training memory of any model: weights, gradients, optimizer states, activations saved for backward and
the temporary peak, from one simulated step on fake tensors (see simulate.py), per device under ZeRO.

    est = train_memory(model, (x,), TrainConfig(optimizer="adamw", precision="bf16-mixed", micro_batch=8))
    est.peak, est.to_dict()["rows"]

What is counted: the bytes of every storage PyTorch allocates, at the moment of the step's peak. Weights,
buffers and optimizer states are persistent; gradients, activations (alive when the forward ends) and
temporaries (gradient buffers, recomputed blocks, casts) come from the simulated step; the optimizer's
own temporaries from stepping it on fake copies. ZeRO stage s over N devices divides states (s >= 1),
gradients (s >= 2) and weights (s = 3, plus the largest layer gathered whole) by N.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from effml.errors import ConfigError
from effml.train import checkpoint as ckpt
from effml.train.config import TrainConfig
from effml.train.recipes import Batch
from effml.train.simulate import Trace, simulate
from effml.units import fmt_bytes

WORKSPACE_MAX_BYTES = 64e6  # run a kernel for real to measure its scratch only if its inputs fit in this
ROWS = ("weights", "gradients", "optimizer_states", "activations", "temporary")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device. `full` is each part's size; `at_peak` what of it is alive at the peak (sums to peak)."""

    model: str
    params: int
    config: TrainConfig
    full: dict[str, float]
    at_peak: dict[str, float]
    peak: float
    peak_phase: str  # 'forward' | 'backward' | 'optimizer'
    cast_weight_bytes: float  # autocast copies of the weights, inside 'activations'
    checkpoint: ckpt.CheckpointPlan = ckpt.NO_PLAN
    block_bytes: dict[str, int] = field(default_factory=dict)  # bytes each block keeps until backward
    unsharded: dict[str, float] = field(default_factory=dict)  # weights/gradients/states of one full replica
    notes: tuple[str, ...] = ()

    @property
    def model_states(self) -> float:
        return self.full["weights"] + self.full["gradients"] + self.full["optimizer_states"]

    def bytes_per_param(self, part: str, unsharded: bool = True) -> float:
        src = self.unsharded if unsharded else self.full
        return src[part] / self.params

    def to_dict(self) -> dict:
        rows = [{"part": r, "bytes": self.full[r], "at_peak_bytes": self.at_peak[r]} for r in ROWS]
        return {"model": self.model, "params": self.params, "config": self.config.to_dict(), "rows": rows,
                "peak_bytes": self.peak, "peak_phase": self.peak_phase, "model_state_bytes": self.model_states,
                "cast_weight_bytes": self.cast_weight_bytes, "unsharded": self.unsharded,
                "bytes_per_param": {k: v / self.params for k, v in self.unsharded.items()},
                "checkpoint": self.checkpoint.to_dict(), "block_bytes": self.block_bytes, "notes": list(self.notes)}

    def summary(self) -> str:
        return (f"{self.model}: peak {fmt_bytes(self.peak)} per device (weights {fmt_bytes(self.full['weights'])}, "
                f"grads {fmt_bytes(self.full['gradients'])}, states {fmt_bytes(self.full['optimizer_states'])}, "
                f"activations {fmt_bytes(self.full['activations'])})")


def _shard(cfg: TrainConfig) -> tuple[float, float, float]:
    """Fractions of (weights, gradients, optimizer states) a device holds under cfg's ZeRO stage."""
    n, s = cfg.world_size, cfg.zero_stage
    return (1 / n if s >= 3 else 1.0), (1 / n if s >= 2 else 1.0), (1 / n if s >= 1 else 1.0)


def from_trace(trace: Trace, cfg: TrainConfig, name: str, plan: ckpt.CheckpointPlan) -> MemoryEstimate:
    log = trace.log
    t_fwd = log.marks["forward_end"]
    pre_grads = trace.grad_bytes if cfg.grad_accum > 1 else 0  # allocated before this micro-step
    grads = {id(log.live[k]) for k in trace.grad_keys if k in log.live}
    acts = [life for life in log.all if life.alive_at(t_fwd) and id(life) not in grads]
    cast = sum(life.nbytes for life in acts if life.cast)
    # the peak: of the live bytes, or of the live bytes plus a kernel's scratch while it runs
    peak, peak_t, scratch = log.peak, log.peak_t, 0
    for t, live, ws in trace.workspace:
        if live + ws > peak:
            peak, peak_t, scratch = live + ws, t, ws
    parts = {"gradients": pre_grads, "activations": 0, "temporary": scratch}
    for life in log.all:
        if life.alive_at(peak_t):
            kind = "gradients" if id(life) in grads else "activations" if life.alive_at(t_fwd) else "temporary"
            parts[kind] += life.nbytes
    fwd_bwd_peak = peak + pre_grads
    phase = "forward" if peak_t <= t_fwd else "backward"
    after_bwd = log.marks_current["backward_end"] + pre_grads
    if after_bwd + trace.optimizer_temp_bytes > fwd_bwd_peak:  # the optimizer step is the peak
        phase = "optimizer"
        parts = {"gradients": trace.grad_bytes, "activations": 0,
                 "temporary": after_bwd - trace.grad_bytes + trace.optimizer_temp_bytes}

    fw, fg, fs = _shard(cfg)
    weights = trace.param_bytes * fw + trace.buffer_bytes
    states = trace.optimizer_state_bytes * fs
    gather = trace.largest_module_param_bytes if cfg.zero_stage == 3 else 0
    full = {"weights": weights, "gradients": trace.grad_bytes * fg, "optimizer_states": states,
            "activations": float(sum(life.nbytes for life in acts)), "temporary": parts["temporary"] + gather}
    at_peak = {"weights": weights, "optimizer_states": states, "gradients": parts["gradients"] * fg,
               "activations": float(parts["activations"]), "temporary": parts["temporary"] + gather}
    notes = []
    if cfg.grad_accum > 1:
        notes.append(f"grad_accum={cfg.grad_accum}: every gradient is allocated during later micro-batches")
    if gather:
        notes.append(f"ZeRO-3: the largest layer's weights ({fmt_bytes(gather)}) are gathered whole for compute")
    if scratch:
        notes.append(f"peak includes {fmt_bytes(scratch)} of kernel workspace measured on this CPU")
    if trace.workspace_skipped:
        notes.append(f"kernel workspace of {trace.workspace_skipped} large op call(s) not measured")
    if trace.buffer_bytes:
        notes.append(f"weights include {fmt_bytes(trace.buffer_bytes)} of buffers (never sharded)")
    return MemoryEstimate(
        model=name, params=trace.params, config=cfg, full=full, at_peak=at_peak, peak=sum(at_peak.values()),
        peak_phase=phase, cast_weight_bytes=float(cast), checkpoint=plan, block_bytes=dict(trace.block_bytes),
        unsharded={"weights": float(trace.param_bytes), "gradients": float(trace.grad_bytes),
                   "optimizer_states": float(trace.optimizer_state_bytes)},
        notes=tuple(notes))


# ---- inputs -------------------------------------------------------------------------------------------------
def make_batch(example_inputs, micro_batch: int, target=None, forward_kwargs=None) -> Batch:
    """A Batch whose leading (batch) dimension is `micro_batch`: the example gives shapes only (the
    simulation uses fake tensors), so any tensor whose dim 0 equals the example's batch size is resized.
    Default target: token ids' shape for integer inputs (next-token loss), (B,) class ids otherwise."""
    args = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    kwargs = dict(forward_kwargs or {})
    first = next((a for a in args if isinstance(a, torch.Tensor) and a.ndim > 0), None)
    if first is None:
        raise ConfigError("example_inputs must contain a tensor with a batch dimension, e.g. (x,) with x (B, ...)")
    b0 = first.shape[0]

    def resize(t):
        if isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] == b0:
            return torch.empty((micro_batch, *t.shape[1:]), dtype=t.dtype, device="meta")
        return t
    if target is None:
        target = (torch.empty(first.shape, dtype=torch.long, device="meta") if not first.is_floating_point()
                  else torch.empty((b0,), dtype=torch.long, device="meta"))
    return Batch(tuple(resize(a) for a in args), resize(target), {k: resize(v) for k, v in kwargs.items()})


# ---- the estimator ------------------------------------------------------------------------------------------
def train_memory(model: nn.Module, example_inputs, cfg: TrainConfig | None = None, *, target=None,
                 loss: str = "auto", forward_kwargs: dict | None = None, foreach: bool = False,
                 kernel_workspace: bool = True, name: str | None = None) -> MemoryEstimate:
    """Estimate the per-device peak memory of training `model` with `cfg` (one micro-batch of
    cfg.micro_batch examples shaped like `example_inputs`). The model is not modified or run for real;
    it may live on meta. `foreach=True` models torch's CUDA default optimizer kernels;
    `kernel_workspace` measures the scratch of convolution/attention kernels on this CPU (off for other
    targets, whose kernels differ)."""
    cfg = cfg or TrainConfig()
    batch = make_batch(example_inputs, cfg.micro_batch, target, forward_kwargs)
    name = name or type(model).__name__
    ws = WORKSPACE_MAX_BYTES if kernel_workspace else 0
    if cfg.checkpointing.strategy == "budget":
        return plan_for_budget(model, batch, cfg, loss, foreach, name, ws)
    plan = ckpt.plan(model, cfg.checkpointing)
    watch = cfg.checkpointing.container if plan.container is not None else False
    return from_trace(simulate(model, batch, cfg, loss, plan, foreach, watch, ws), cfg, name, plan)


def plan_for_budget(model: nn.Module, batch: Batch, cfg: TrainConfig, loss: str, foreach: bool,
                    name: str, workspace_max_bytes: float = 0) -> MemoryEstimate:
    """Checkpoint the fewest blocks that bring the peak under cfg's budget: estimate with none and with
    every block checkpointed, take blocks in order of bytes saved until the predicted peak fits, then
    re-estimate to confirm (adding blocks while it does not). If even every block is not enough, the
    sqrt(n) segments of Chen et al. are tried; the estimate says whether the budget was met."""
    spec = cfg.checkpointing
    budget = float(spec.budget_bytes)
    container = spec.container

    def run(plan):
        c = cfg.replace(checkpointing=spec)
        trace = simulate(model, batch, c, loss, plan, foreach, container or None, workspace_max_bytes)
        return from_trace(trace, c, name, plan)

    base = run(ckpt.NO_PLAN)
    if base.peak <= budget:
        return _with_note(base, f"budget {fmt_bytes(budget)} met without checkpointing")
    all_plan = ckpt.plan(model, f"per-block@{container}" if container else "per-block")
    every = run(all_plan)
    if every.peak > budget:
        sq = run(ckpt.plan(model, f"sqrt@{container}" if container else "sqrt"))
        best = min((every, sq), key=lambda e: e.peak)
        return _with_note(best, f"budget {fmt_bytes(budget)} NOT met: checkpointing alone reaches "
                                f"{fmt_bytes(best.peak)} ({best.checkpoint.strategy}); also shrink the micro-batch")
    saving = {b: base.block_bytes.get(b, 0) - every.block_bytes.get(b, 0) for b in all_plan.blocks}
    order = sorted(all_plan.blocks, key=lambda b: -saving[b])
    need, chosen, got = base.peak - budget, [], 0.0
    for b in order:
        if got >= need:
            break
        chosen.append(b)
        got += saving[b]
    while True:
        est = run(ckpt.select(all_plan.container, all_plan.blocks, chosen))
        if est.peak <= budget or len(chosen) == len(order):
            break
        avg = max(1.0, got / max(1, len(chosen)))
        extra = max(1, int((est.peak - budget) // avg) + 1)  # add enough blocks for the remaining excess
        chosen += order[len(chosen):len(chosen) + extra]
    return _with_note(est, f"budget {fmt_bytes(budget)}: {len(chosen)} of {len(order)} blocks checkpointed")


def _with_note(est: MemoryEstimate, note: str) -> MemoryEstimate:
    from dataclasses import replace

    return replace(est, notes=(*est.notes, note))


__all__ = ["MemoryEstimate", "ROWS", "from_trace", "make_batch", "plan_for_budget", "train_memory"]
