"""Training memory of any model: weights, gradients, optimizer states, activations saved for backward and
the temporary peak, from one simulated step on fake tensors (see simulate.py), per device under ZeRO.

    est = train_memory(model, (x,), TrainConfig(optimizer="adamw", precision="bf16-mixed", micro_batch=8))
    est.peak, est.to_dict()["rows"]

What is counted: the bytes of every storage PyTorch allocates, at the moment of the step's peak. Weights,
buffers and optimizer states are persistent; gradients, activations (alive when the forward ends) and
temporaries (gradient buffers, recomputed blocks, casts, kernel scratch) come from the simulated step;
the optimizer's own temporaries from stepping it on fake proxies. Two moments compete for the peak: the
forward/backward and the optimizer step (all gradients + its temporaries). ZeRO stage s over N devices
divides states (s >= 1), gradients (s >= 2) and weights (s = 3, plus the largest layer gathered) by N.

Deep stacks of identical blocks (LLMs) are simulated with 3, 4 and 5 blocks and extrapolated to n: every
quantity is affine in the number of identical blocks, which the three points verify (else: full run).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from effml.errors import ConfigError
from effml.train import checkpoint as ckpt
from effml.train.config import LAYOUTS, TrainConfig, get_precision
from effml.train.recipes import Batch
from effml.train.simulate import ATTENTION_KERNELS, Trace, identical_blocks, simulate, truncated
from effml.units import DTYPE_BYTES, fmt_bytes

ROWS = ("weights", "gradients", "optimizer_states", "activations", "temporary")
STEP_PARTS = ("gradients", "activations", "temporary")
WORKSPACE_MAX_BYTES = 64e6  # run a kernel for real to measure its scratch only if its inputs fit in this
EXTRAPOLATE_MIN_BLOCKS = 8  # below this a full simulation is cheap enough
PROBE_BLOCKS = (3, 4, 5)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device. `full`: each part's size; `phases`: what of the step parts is alive at each
    candidate peak ('step' = forward/backward, 'optimizer'); `at_peak` sums to `peak`."""

    model: str
    params: int
    config: TrainConfig
    full: dict[str, float]
    phases: dict[str, dict[str, float]]
    step_peak_phase: str  # 'forward' | 'backward': where the forward/backward peak falls
    cast_weight_bytes: float  # autocast copies of the weights, inside 'activations'
    unsharded: dict[str, float]  # weights/gradients/states of one full replica
    checkpoint: ckpt.CheckpointPlan = ckpt.NO_PLAN
    block_bytes: dict[str, int] = field(default_factory=dict)  # bytes each block keeps until backward
    notes: tuple[str, ...] = ()

    @property
    def peak_phase(self) -> str:
        return "optimizer" if sum(self.phases["optimizer"].values()) > sum(self.phases["step"].values()) \
            else self.step_peak_phase

    @property
    def at_peak(self) -> dict[str, float]:
        step = self.phases["optimizer" if self.peak_phase == "optimizer" else "step"]
        return {"weights": self.full["weights"], "gradients": step["gradients"],
                "optimizer_states": self.full["optimizer_states"], "activations": step["activations"],
                "temporary": step["temporary"]}

    @property
    def peak(self) -> float:
        return sum(self.at_peak.values())

    @property
    def model_states(self) -> float:
        return self.full["weights"] + self.full["gradients"] + self.full["optimizer_states"]

    def bytes_per_param(self, part: str) -> float:
        return self.unsharded[part] / self.params

    def to_dict(self) -> dict:
        at = self.at_peak
        rows = [{"part": r, "bytes": self.full[r], "at_peak_bytes": at[r]} for r in ROWS]
        return {"model": self.model, "params": self.params, "config": self.config.to_dict(), "rows": rows,
                "peak_bytes": self.peak, "peak_phase": self.peak_phase, "model_state_bytes": self.model_states,
                "cast_weight_bytes": self.cast_weight_bytes, "phases": self.phases, "unsharded": self.unsharded,
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


def _peak_moment(trace: Trace, weight) -> tuple[float, int, float]:
    """(bytes, clock, kernel scratch) of the step's largest moment, each lifetime counted x weight(life):
    the live bytes after every birth, or the live bytes plus a kernel's scratch while it runs."""
    events = sorted([(life.born, weight(life) * life.nbytes) for life in trace.log.all]
                    + [(life.died, -weight(life) * life.nbytes) for life in trace.log.all if life.died is not None])
    scratch_at = {t: ws for t, _, ws in trace.workspace}
    best, best_t, best_ws, cur = 0.0, 0, 0.0, 0.0
    for t, delta in events:  # the clock ticks once per birth/death: times are distinct
        cur += delta
        ws = scratch_at.get(t, 0)
        if cur + ws > best:
            best, best_t, best_ws = cur + ws, t, ws
    return best, best_t, best_ws


def _layout_scale(cfg: TrainConfig) -> float:
    """Bytes of a weight/gradient element in cfg's layout over the simulated one's (fp32 under AMP): 0.5 for the
    ZeRO paper's fp16/bf16 weights and grads of a mixed-precision run (its fp32 master copy joins the states)."""
    precision = get_precision(cfg.precision)
    paper = LAYOUTS.get(cfg.layout).low_precision_weights
    if paper and precision.autocast is not None and precision.param_dtype == "fp32":
        return DTYPE_BYTES[precision.autocast] / DTYPE_BYTES["fp32"]
    return 1.0


def from_trace(trace: Trace, config: TrainConfig, name: str, plan: ckpt.CheckpointPlan) -> MemoryEstimate:
    log = trace.log
    t_fwd = log.marks["forward_end"]
    fw, fg, fs = _shard(config)
    stage3 = config.zero_stage == 3
    lp = _layout_scale(config)  # 1.0 (torch-amp, or no mixed precision) | 0.5 (zero-paper, bf16/fp16-mixed)
    master = trace.grad_bytes if lp < 1 else 0  # zero-paper: fp32 master weights, sharded with the states
    pre_grads = trace.grad_bytes * lp if config.grad_accum > 1 else 0  # allocated before this micro-step
    grads = {id(log.live[k]) for k in trace.grad_keys if k in log.live}

    def weight(life) -> float:
        if id(life) in grads:
            return fg * lp  # ZeRO-2/3: each device keeps its shard of the gradients
        # ZeRO-3 gathers layer by layer: no cast cache; zero-paper: weights already in the compute dtype
        return 0.0 if ((stage3 or lp < 1) and life.cast) else 1.0

    acts = [life for life in log.all if life.alive_at(t_fwd) and id(life) not in grads]
    _, peak_t, scratch = _peak_moment(trace, weight)
    step = {"gradients": pre_grads * fg, "activations": 0.0, "temporary": float(scratch)}
    for life in log.all:
        if life.alive_at(peak_t):
            kind = "gradients" if id(life) in grads else "activations" if life.alive_at(t_fwd) else "temporary"
            step[kind] += weight(life) * life.nbytes
    leftover = log.marks_current["backward_end"] + pre_grads / lp - trace.grad_bytes  # loss scalars etc.
    optimizer = {"gradients": trace.grad_bytes * lp * fg, "activations": 0.0,
                 "temporary": leftover + trace.optimizer_temp_bytes * (fs if trace.foreach else 1.0)}
    gather = float(trace.largest_module_param_bytes) if stage3 else 0.0
    step["temporary"] += gather
    optimizer["temporary"] += gather
    full = {"weights": trace.param_bytes * lp * fw + trace.buffer_bytes, "gradients": trace.grad_bytes * lp * fg,
            "optimizer_states": (trace.optimizer_state_bytes + master) * fs,
            "activations": float(sum(weight(life) * life.nbytes for life in acts)),
            "temporary": max(step["temporary"], optimizer["temporary"])}
    notes = [f"layout {config.layout}: {LAYOUTS.get(config.layout).description}"] \
        if get_precision(config.precision).autocast else []
    if config.grad_accum > 1:
        notes.append(f"grad_accum={config.grad_accum}: every gradient is allocated during later micro-batches")
    if gather:
        notes.append(f"ZeRO-3: weights gathered layer by layer (largest {fmt_bytes(gather)}); "
                     "no autocast cast cache")
    if scratch:
        notes.append(f"peak includes {fmt_bytes(scratch)} of kernel workspace measured on this CPU")
    if trace.workspace_skipped:
        notes.append(f"kernel workspace of {trace.workspace_skipped} large op call(s) not measured")
    if trace.attention_calls:
        notes.append(f"attention kernel: {trace.attention}, {ATTENTION_KERNELS[trace.attention]}")
    cast = float(sum(weight(life) * life.nbytes for life in acts if life.cast))
    return MemoryEstimate(
        model=name, params=trace.params, config=config, full=full, phases={"step": step, "optimizer": optimizer},
        step_peak_phase="forward" if peak_t <= t_fwd else "backward", cast_weight_bytes=cast,
        unsharded={"weights": float(trace.param_bytes * lp), "gradients": float(trace.grad_bytes * lp),
                   "optimizer_states": float(trace.optimizer_state_bytes + master)},
        checkpoint=plan, block_bytes=dict(trace.block_bytes), notes=tuple(notes))


# ---- inputs -------------------------------------------------------------------------------------------------
def make_batch(example_inputs, micro_batch: int, target=None, forward_kwargs=None) -> Batch:
    """A Batch whose leading (batch) dimension is `micro_batch`: the example gives shapes only (the
    simulation uses fake tensors), so any tensor whose dim 0 equals the example's batch size is resized.
    Default target: token ids' shape for integer inputs (next-token loss), (B,) class ids otherwise."""
    args = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
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
    kwargs = {k: resize(v) for k, v in (forward_kwargs or {}).items()}
    return Batch(tuple(resize(a) for a in args), resize(target), kwargs)


# ---- the estimator ------------------------------------------------------------------------------------------
def train_memory(model: nn.Module, example_inputs, config: TrainConfig | None = None, *, target=None,
                 loss: str = "auto", forward_kwargs: dict | None = None, foreach: bool = False,
                 kernel_workspace: bool = True, extrapolate: bool = True, name: str | None = None,
                 attention: str = "cpu") -> MemoryEstimate:
    """Estimate the per-device peak memory of training `model` with `config` (one micro-batch of
    config.micro_batch examples shaped like `example_inputs`). The model is not run for real and may live on
    meta. `foreach=True` models torch's CUDA default optimizer kernels; `kernel_workspace` measures the
    scratch of convolution/attention kernels on this CPU (turn it off for other targets)."""
    return Estimator(model, example_inputs, target=target, loss=loss, forward_kwargs=forward_kwargs,
                     foreach=foreach, kernel_workspace=kernel_workspace, extrapolate=extrapolate,
                     name=name, attention=attention)(config or TrainConfig())


class Estimator:
    """Estimates of one model under many configs. Simulations are cached by what changes them (precision,
    optimizer, micro-batch, accumulation, checkpointing); ZeRO stage and world size only re-weigh a
    cached simulation, so trying them costs nothing."""

    def __init__(self, model: nn.Module, example_inputs, *, target=None, loss: str = "auto",
                 forward_kwargs: dict | None = None, foreach: bool = False, kernel_workspace: bool = True,
                 extrapolate: bool = True, name: str | None = None, attention: str = "cpu"):
        self.model, self.example, self.target, self.loss = model, example_inputs, target, loss
        self.attention = attention  # 'cpu' | 'flash': the attention kernel of the target (ATTENTION_KERNELS)
        self.forward_kwargs, self.foreach, self.extrapolate = forward_kwargs, foreach, extrapolate
        self.ws = WORKSPACE_MAX_BYTES if kernel_workspace else 0
        self.name = name or type(model).__name__
        self._cache: dict = {}
        self.simulations = 0

    def __call__(self, cfg: TrainConfig) -> MemoryEstimate:
        batch = make_batch(self.example, cfg.micro_batch, self.target, self.forward_kwargs)
        if cfg.checkpointing.strategy == "budget":
            return plan_for_budget(self.model, batch, cfg, self.loss, self.foreach, self.name, self.ws,
                                   self.attention)
        plan = ckpt.plan(self.model, cfg.checkpointing)
        key = (cfg.precision, cfg.optimizer, cfg.micro_batch, cfg.grad_accum > 1, cfg.checkpointing)
        if key not in self._cache:
            self._cache[key] = self._simulate(batch, cfg, plan)
        traces, probes = self._cache[key]
        if probes:
            est = _extrapolate([from_trace(t, cfg, self.name, p) for t, p in traces], *probes)
            if est is not None:
                return replace(est, checkpoint=plan)
            self._cache[key] = self._simulate(batch, cfg, plan, extrapolate=False)
            traces, _ = self._cache[key]
        return from_trace(traces[0][0], cfg, self.name, plan)

    def _simulate(self, batch, cfg, plan, extrapolate: bool = True):
        """([(trace, plan)], None) for a full run, or the 3 probe runs and (container, n) to extrapolate."""
        spec = cfg.checkpointing
        per_block = spec.strategy == "none" or (spec.strategy == "every" and spec.every == 1)
        stack = identical_blocks(self.model, spec.container) if (self.extrapolate and extrapolate) else None
        if stack and stack[1] >= EXTRAPOLATE_MIN_BLOCKS and per_block:
            runs = []
            for k in PROBE_BLOCKS:
                with truncated(self.model, stack[0], k):
                    p = ckpt.plan(self.model, spec)
                    runs.append((self._run(batch, cfg, p, False), p))
            return runs, stack
        watch = spec.container if plan.container is not None else False
        return [(self._run(batch, cfg, plan, watch), plan)], None

    def _run(self, batch, cfg, plan, watch):
        self.simulations += 1
        return simulate(self.model, batch, cfg, self.loss, plan, self.foreach, watch, self.ws, self.attention)


def _extrapolate(probes: list[MemoryEstimate], container: str, n: int) -> MemoryEstimate | None:
    """Estimates of the first 3, 4, 5 blocks -> the estimate for n, if every number is affine in the
    block count (else None)."""
    a, b, c = probes
    if len({p.step_peak_phase for p in probes}) > 1:
        return None

    def ext(x3: float, x4: float, x5: float) -> float:
        d1, d2 = x4 - x3, x5 - x4
        if abs(d1 - d2) > 1e-6 * max(1.0, abs(x5)) + 64:  # not affine (64 B: rounding of per-tensor parts)
            raise _NotAffine
        return x5 + (n - PROBE_BLOCKS[-1]) * d2

    try:
        full = {k: ext(a.full[k], b.full[k], c.full[k]) for k in c.full if k != "temporary"}
        phases = {ph: {k: ext(a.phases[ph][k], b.phases[ph][k], c.phases[ph][k]) for k in STEP_PARTS}
                  for ph in c.phases}
        full["temporary"] = max(ph["temporary"] for ph in phases.values())  # a max is not affine: after
        unsharded = {k: ext(a.unsharded[k], b.unsharded[k], c.unsharded[k]) for k in c.unsharded}
        params = round(ext(a.params, b.params, c.params))
        cast = ext(a.cast_weight_bytes, b.cast_weight_bytes, c.cast_weight_bytes)
    except _NotAffine:
        return None
    note = f"simulated with {', '.join(map(str, PROBE_BLOCKS))} of the {n} identical blocks of '{container}' " \
           "and extrapolated (every part is affine in the block count)"
    return replace(c, params=params, full=full, phases=phases, unsharded=unsharded, cast_weight_bytes=cast,
                   block_bytes={}, notes=(*c.notes, note))


class _NotAffine(Exception):
    pass


def plan_for_budget(model: nn.Module, batch: Batch, config: TrainConfig, loss: str, foreach: bool,
                    name: str, workspace_max_bytes: float = 0, attention: str = "cpu") -> MemoryEstimate:
    """Checkpoint the fewest blocks that bring the peak under config's budget: estimate with none and with
    every block checkpointed, take blocks in order of bytes saved until the predicted peak fits, then
    re-estimate to confirm (adding blocks while it does not). If even every block is not enough, the
    sqrt(n) segments of Chen et al. are tried; the estimate says whether the budget was met."""
    spec = config.checkpointing
    budget = float(spec.budget_bytes)
    container = spec.container

    def run(plan):
        trace = simulate(model, batch, config, loss, plan, foreach, container or None, workspace_max_bytes, attention)
        return from_trace(trace, config, name, plan)

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
    saving = {blk: base.block_bytes.get(blk, 0) - every.block_bytes.get(blk, 0) for blk in all_plan.checkpointed}
    order = sorted(saving, key=lambda blk: -saving[blk])
    need, chosen, got = base.peak - budget, [], 0.0
    for blk in order:
        if got >= need:
            break
        chosen.append(blk)
        got += saving[blk]
    while True:
        est = run(ckpt.select(all_plan.container, all_plan.blocks, chosen))
        if est.peak <= budget or len(chosen) == len(order):
            break
        avg = max(1.0, got / max(1, len(chosen)))
        extra = max(1, int((est.peak - budget) // avg) + 1)  # enough blocks for the remaining excess
        chosen += order[len(chosen):len(chosen) + extra]
    return _with_note(est, f"budget {fmt_bytes(budget)}: {len(chosen)} of {len(order)} blocks checkpointed")


def _with_note(est: MemoryEstimate, note: str) -> MemoryEstimate:
    return replace(est, notes=(*est.notes, note))


__all__ = ["ROWS", "Estimator", "MemoryEstimate", "from_trace", "make_batch", "plan_for_budget", "train_memory"]
