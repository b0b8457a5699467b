"""Recipes that apply to any model: precision (autocast, GradScaler), the optimizer, the loss, and one
training step with gradient accumulation. The memory estimator runs this same step on fake tensors, so
what it predicts is what `effml train` executes.

    step = TrainStep(model, TrainConfig(precision="bf16-mixed", grad_accum=4), loss="lm")
    loss = step.run(micro_batches)        # grad_accum forwards/backwards, then one optimizer step
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from effml.errors import ConfigError, ModelError
from effml.registries import Registry
from effml.train import core
from effml.train.config import Precision, TrainConfig, get_optimizer, get_precision
from effml.units import torch_dtype


# ---- what this machine can run ------------------------------------------------------------------------------
def cpu_bf16_support() -> dict:
    """Does this CPU have bf16 arithmetic in hardware? AVX512-BF16 or AMX say yes; AVX2 emulates bf16
    (converts to fp32 and back), so bf16 autocast is *slower* there (measured: bench_mixed_precision.py)."""
    cpu = torch.cpu
    avx512_bf16 = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    flags = ""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        pass
    avx512_bf16 = avx512_bf16 or " avx512_bf16" in flags
    amx = amx or " amx_bf16" in flags
    return {"capability": torch.backends.cpu.get_cpu_capability(), "avx512_bf16": avx512_bf16, "amx_bf16": amx,
            "bf16_hardware": avx512_bf16 or amx}


def check_precision(precision: Precision | str, device: str | torch.device = "cpu") -> Precision:
    """The precision, or a ConfigError if this device cannot run it (fp16 + GradScaler on a CPU, bf16 on a
    GPU without bf16). bf16 on a CPU without bf16 hardware runs (emulated, slower): see cpu_bf16_support()."""
    p = get_precision(precision) if isinstance(precision, str) else precision
    kind = torch.device(device).type
    if p.needs_gpu and kind != "cuda":
        raise ConfigError(f"precision {p.name!r} needs a CUDA GPU ({p.compute_dtype} autocast + GradScaler); "
                          f"this run is on {kind}: use bf16-mixed or fp32")
    if kind == "cuda" and p.compute_dtype == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision {p.name!r}: GPU {torch.cuda.get_device_name()} has no bf16 "
                          "(compute capability < 8.0): use fp16-mixed")
    return p


def autocast(precision: Precision, device_type: str):
    """torch.autocast for the precision's compute dtype, or a null context."""
    if precision.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch_dtype(precision.autocast))


def build_optimizer(model: nn.Module, config: TrainConfig, device_type: str = "cpu") -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters; foreach kernels where torch uses them by
    default (CUDA), the per-tensor loop elsewhere."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError(f"{type(model).__name__} has no trainable parameters")
    return get_optimizer(config.optimizer).build(params, config.lr, device_type == "cuda")


# ---- losses: a registry keyed by what the model outputs --------------------------------------------------------
LOSSES: Registry = Registry("loss")


def _logits(out) -> torch.Tensor:
    return core.logits_of(out, hidden_state=True)


@LOSSES.register("lm")
def _lm_loss(out, target: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits (B, T, V) upcast to fp32 (as HF does), target (B, T)."""
    logits = _logits(out)
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())  # (B*T, V) vs (B*T,)


@LOSSES.register("classification")
def _cls_loss(out, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits (B, C) against labels (B,)."""
    return F.cross_entropy(_logits(out).float(), target)


@LOSSES.register("mean-square")
def _ms_loss(out, target=None) -> torch.Tensor:
    """Mean square of the output (a stand-in objective for encoders without a head)."""
    return _logits(out).float().pow(2).mean()


@LOSSES.register("auto")
def _auto_loss(out, target=None) -> torch.Tensor:
    """lm for (B, T, V) logits with (B, T) targets, classification for (B, C) with (B,), else mean-square."""
    logits = _logits(out)
    if target is not None and logits.ndim == 3 and target.shape == logits.shape[:2]:
        return _lm_loss(logits, target)
    if target is not None and logits.ndim == 2 and target.shape == logits.shape[:1]:
        return _cls_loss(logits, target)
    return _ms_loss(logits)


def get_loss(name: str):
    return LOSSES.get(name)


# ---- one training step ------------------------------------------------------------------------------------
@dataclass
class Batch:
    """One micro-batch: model(*args, **kwargs) and the loss target."""

    args: tuple
    target: torch.Tensor | None = None
    kwargs: dict = field(default_factory=dict)


def _cast(x, dtype):
    return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


class TrainStep:
    """Forward + loss + backward per micro-batch (loss / grad_accum), then one optimizer step.

    `ddp` is the DDP-wrapped model when data parallel: gradients are all-reduced only on the last
    micro-batch (no_sync before it). `hooks.forward_end()` is called after each forward (the estimator
    marks the moment the saved activations are complete)."""

    def __init__(self, model: nn.Module, config: TrainConfig, loss: str, device_type: str = "cpu",
                 optimizer: torch.optim.Optimizer | None = None, ddp: nn.Module | None = None):
        self.model, self.config, self.device_type = model, config, device_type
        self.precision = get_precision(config.precision)
        self.param_dtype = torch_dtype(self.precision.param_dtype)
        if any(p.is_floating_point() and p.dtype != self.param_dtype for p in model.parameters()):
            model.to(self.param_dtype)  # bf16-true: weights (hence grads and states) in bf16
        self.loss_fn = get_loss(loss)
        self.ddp = ddp
        self.optimizer = optimizer
        self.scaler = torch.amp.GradScaler(device_type) if self.precision.grad_scaler else None

    def forward_backward(self, batch: Batch, last: bool = True, hooks=None) -> torch.Tensor:
        net = self.ddp if self.ddp is not None else self.model
        if self.param_dtype != torch.float32:
            batch = Batch(tuple(_cast(a, self.param_dtype) for a in batch.args), batch.target,
                          {k: _cast(v, self.param_dtype) for k, v in batch.kwargs.items()})
        sync = contextlib.nullcontext() if (last or self.ddp is None) else self.ddp.no_sync()
        with sync:
            with autocast(self.precision, self.device_type):
                out = net(*batch.args, **batch.kwargs)
                loss = self.loss_fn(out, batch.target) / self.config.grad_accum
            del out
            if hooks is not None:
                hooks.forward_end()
            core.backward(loss, self.scaler)
        return loss.detach()

    def optimizer_step(self) -> None:
        if self.optimizer is None:
            self.optimizer = build_optimizer(self.model, self.config, self.device_type)
        core.optimizer_step(self.optimizer, scaler=self.scaler)
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, micro_batches: list[Batch], before_step=None) -> float:
        """One optimizer step over len(micro_batches) == grad_accum micro-batches; the mean loss.
        `before_step()` runs when the gradients are complete, before the optimizer uses them."""
        if len(micro_batches) != self.config.grad_accum:
            raise ConfigError(f"TrainStep.run got {len(micro_batches)} micro-batches for "
                              f"grad_accum={self.config.grad_accum}")
        total = 0.0
        for i, b in enumerate(micro_batches):
            total += float(self.forward_backward(b, last=i == len(micro_batches) - 1))
        if before_step is not None:
            before_step()
        self.optimizer_step()
        return total  # each micro-loss was divided by grad_accum: their sum is the mean


__all__ = [
    "LOSSES",
    "Batch",
    "TrainStep",
    "autocast",
    "build_optimizer",
    "check_precision",
    "cpu_bf16_support",
    "get_loss",
]
