"""The step/epoch core every effml training loop shares: seeded iteration, one optimizer update, loss book-keeping.

    for s in iterate(loader, total_steps, seed=0):     # Step(epoch, index, batch, first_in_epoch)
        loss = loss_fn(model(s.batch[0]), s.batch[1])
        update(loss, opt, scheduler=sched, clip_norm=1.0, step_hook=masks.apply)
        log.add(s.epoch, loss.item())
        progress(f"training: loss {log.running():.3f}", (s.index + 1) / total_steps)

The loops that use it differ only in what a batch is and how the loss is made: the classifier trainer
(`effml.train.classifier.train_classifier`), knowledge distillation (`effml.compress.distill`), the scaling-law
runs (`effml.scaling.demo`) and `effml train` (`effml.train.loop`, whose `TrainStep` adds gradient accumulation,
mixed precision and DDP around `backward` and `optimizer_step`).

The progress hook has one signature project-wide: `progress(what: str, fraction_done: float)`.
Order inside `update` (zero_grad, backward, clip, step, scheduler, hook) is the order the loops had, so a seeded
run gives the same losses as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from effml.errors import ConfigError, ModelError
from effml.progress import Progress, no_progress  # noqa: F401 (the loops here take the one hook)



# ---- iteration ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    epoch: int  # 0-based pass over the data (always 0 for a sampler, which has no epochs)
    index: int  # 0-based optimizer step
    batch: object
    first_in_epoch: bool


def steps_per_epoch(data, what: str = "training") -> int:
    """Batches per epoch of a sized iterable; a ConfigError naming `what` otherwise."""
    try:
        return len(data)
    except TypeError:
        raise ConfigError(f"{what}: the training data must have a length (batches per epoch)") from None


def total_steps(per_epoch: int, epochs: float, max_steps: int | None = None) -> int:
    """ceil(per_epoch x epochs) steps (fractional epochs allowed), at least 1, at most max_steps."""
    import math

    total = max(1, math.ceil(per_epoch * epochs))
    return total if max_steps is None else min(total, max_steps)


def iterate(data, total: int | None = None, *, epochs: int | None = None,
            seed: int | None = None) -> Iterator[Step]:
    """`total` steps over `data` (passed over as many, possibly partial, epochs as needed), or `epochs` full
    passes over it (any iterable: no length needed). `data` is an iterable of batches, or a sampler (a callable
    returning one batch per call; `total` only). A loader with `reset(seed)` (effml's BatchLoader) restarts its
    seeded shuffles first, so a seeded run is reproducible."""
    if (total is None) == (epochs is None):
        raise ValueError("iterate() takes exactly one of total and epochs")
    if seed is not None and hasattr(data, "reset"):
        data.reset(seed)
    if callable(data) and not hasattr(data, "__len__"):  # a sampler (zoo.text.BatchSampler is also iterable)
        if total is None:
            raise ConfigError("training: a sampler has no epochs; give a number of steps")
        for i in range(total):
            yield Step(0, i, data(), i == 0)
        return
    index, epoch = 0, 0
    while (index < total) if total is not None else (epoch < epochs):
        first, empty = True, True
        for batch in data:
            empty = False
            yield Step(epoch, index, batch, first)
            first, index = False, index + 1
            if total is not None and index >= total:
                return
        if empty:
            raise ConfigError("training: the data gave no batches")
        epoch += 1


# ---- one update ---------------------------------------------------------------------------------------------
def backward(loss: torch.Tensor, scaler=None) -> None:
    """loss.backward(), through the GradScaler when there is one (fp16)."""
    (scaler.scale(loss) if scaler is not None else loss).backward()


def optimizer_step(optimizer: torch.optim.Optimizer, *, scaler=None, clip_norm: float | None = None,
                   clip_params: Iterable[torch.Tensor] | None = None, scheduler=None,
                   step_hook: Callable[[], None] | None = None) -> None:
    """Clip the gradient norm (of `clip_params`, default the optimizer's parameters), step, advance the
    scheduler, then run `step_hook()` (e.g. re-apply pruning masks)."""
    if clip_norm is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        params = clip_params if clip_params is not None else [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if step_hook is not None:
        step_hook()


def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, **step_kwargs) -> None:
    """One optimizer update from a fresh loss: zero_grad, backward, then `optimizer_step(**step_kwargs)`."""
    optimizer.zero_grad(set_to_none=True)
    backward(loss, step_kwargs.get("scaler"))
    optimizer_step(optimizer, **step_kwargs)


def logits_of(out, *, hidden_state: bool = False) -> torch.Tensor:
    """A model's output -> its tensor: the tensor itself, `.logits` (an HF output), or the first item of a
    tuple/list; with `hidden_state`, `.last_hidden_state` too (an encoder without a head)."""
    if isinstance(out, torch.Tensor):
        return out
    for attr in ("logits", "last_hidden_state") if hidden_state else ("logits",):
        if getattr(out, attr, None) is not None:
            return getattr(out, attr)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ModelError(f"cannot read logits from a model output of type {type(out).__name__}")


# ---- book-keeping and evaluation ------------------------------------------------------------------------------
@dataclass
class LossLog:
    """Losses by epoch: `epoch_means()` (mean per epoch, partial epochs included) and `running()` (this epoch's
    mean so far). Sums are plain Python floats added in step order."""

    sums: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # every step's loss

    def add(self, epoch: int, value: float) -> None:
        while len(self.sums) <= epoch:
            self.sums.append(0.0)
            self.counts.append(0)
        self.sums[epoch] += value
        self.counts[epoch] += 1
        self.values.append(value)

    def running(self) -> float:
        return self.sums[-1] / max(self.counts[-1], 1) if self.sums else float("nan")

    def epoch_means(self) -> list[float]:
        return [s / max(n, 1) for s, n in zip(self.sums, self.counts)]


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Eval mode under no_grad for the block; the model's previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


__all__ = ["LossLog", "Progress", "Step", "backward", "evaluating", "iterate", "logits_of", "no_progress",
           "optimizer_step", "steps_per_epoch", "total_steps", "update"]
