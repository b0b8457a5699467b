"""Train and evaluate a classifier: the loop compression fine-tuning, QAT and the study pipeline share.

    res = train_classifier(model, data, epochs=3, lr=1e-3, seed=0)  # data: a DataBundle or any iterable of (x, y)
    acc = evaluate(model, data.test)                        # top-1 accuracy in [0, 1]

`step_hook()` runs after every optimizer step (e.g. re-apply pruning masks); `progress(what, frac)` reports
progress (the CLI draws a bar with it). The model's output may be logits or an object with `.logits`.
`seed` seeds torch's RNG and restarts the shuffling of a `BatchLoader`, so a seeded run is reproducible.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from effml.errors import ConfigError
from effml.train import core
from effml.train.config import OPTIMIZERS
from effml.progress import Progress
from effml.train.core import logits_of

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainLoopConfig:
    epochs: float = 1.0  # fractions allowed: 0.5 = half an epoch
    lr: float = 1e-3
    optimizer: str = "adam"  # a name in effml.train.config.OPTIMIZERS
    weight_decay: float = 0.0
    momentum: float = 0.9  # the SGD entries only
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    max_steps: int | None = None
    seed: int = 0

    def __post_init__(self):
        if not self.epochs > 0:
            raise ConfigError(f"TrainLoopConfig.epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"TrainLoopConfig.lr must be > 0, got {self.lr}")
        try:
            OPTIMIZERS.get(self.optimizer)
        except ConfigError as exc:
            raise ConfigError(f"TrainLoopConfig.optimizer: {exc}") from None
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"TrainLoopConfig.schedule {self.schedule!r} unknown; expected one of {SCHEDULES}")
        if self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("TrainLoopConfig needs weight_decay >= 0 and 0 <= label_smoothing < 1")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"TrainLoopConfig.max_steps must be positive, got {self.max_steps}")


@dataclass
class TrainLoopResult:
    steps: int
    epochs: float
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch (or partial epoch)
    train_accuracy: float | None = None  # running accuracy over the last epoch's batches
    test_accuracy: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _split(data) -> tuple[Iterable, Iterable | None]:
    train = getattr(data, "train", data)
    return train, getattr(data, "test", None)


def _optimizer(model: nn.Module, cfg: TrainLoopConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("train_classifier: the model has no trainable parameters")
    return OPTIMIZERS.get(cfg.optimizer).build(params, cfg.lr, weight_decay=cfg.weight_decay,
                                               momentum=cfg.momentum)


def train_classifier(model: nn.Module, data, config: TrainLoopConfig | None = None, *,
                     step_hook: Callable[[], None] | None = None, progress: Progress | None = None,
                     loss_fn: Callable | None = None, evaluate_after: bool = True, **overrides) -> TrainLoopResult:
    """Train `model` in place with cross-entropy (or `loss_fn(logits, y)`); TrainLoopConfig fields as keywords work.

    data: a DataBundle (train on .train, report accuracy on .test) or an iterable of (x, y) batches.
    """
    cfg = config or TrainLoopConfig(**overrides)
    if config is not None and overrides:
        from dataclasses import replace

        cfg = replace(config, **overrides)
    train, test = _split(data)
    per_epoch = core.steps_per_epoch(train, "train_classifier")
    total = core.total_steps(per_epoch, cfg.epochs, cfg.max_steps)
    torch.manual_seed(cfg.seed)
    steps = core.iterate(train, total, seed=cfg.seed)  # a BatchLoader's shuffles follow this run's seed
    opt = _optimizer(model, cfg)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total) if cfg.schedule == "cosine" else None)
    loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing))
    report = progress or core.no_progress
    model.train()
    t0, log, step = time.perf_counter(), core.LossLog(), 0
    correct = seen = 0
    for s in steps:
        x, y = s.batch
        if s.first_in_epoch:
            correct = seen = 0  # the running accuracy is over the last epoch's batches
        logits = logits_of(model(x))  # (B, classes)
        loss = loss_fn(logits, y)
        core.update(loss, opt, scheduler=sched, step_hook=step_hook)
        log.add(s.epoch, loss.item())
        correct += int((logits.argmax(-1) == y).sum())
        seen += len(y)
        step = s.index + 1
        report(f"training: loss {log.running():.3f}", step / total)
    model.eval()
    res = TrainLoopResult(step, step / per_epoch, time.perf_counter() - t0, log.epoch_means(),
                          correct / seen if seen else None)
    if evaluate_after and test is not None:
        res.test_accuracy = evaluate(model, test)
    return res


def evaluate(model: nn.Module, loader: Iterable, max_batches: int | None = None) -> float:
    """Top-1 accuracy in [0, 1] of `model` on (x, y) batches, in eval mode (restores the previous mode)."""
    correct = seen = 0
    with core.evaluating(model):
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            correct += int((logits_of(model(x)).argmax(-1) == y).sum())
            seen += len(y)
    if seen == 0:
        raise ConfigError("evaluate: the data gave no batches")
    return correct / seen


@torch.no_grad()
def predictions(model: nn.Module, loader: Iterable) -> torch.Tensor:
    """(N,) predicted classes over the loader (agreement between a model and its compressed copy)."""
    model.eval()
    return torch.cat([logits_of(model(x)).argmax(-1) for x, _ in loader])


def cache_dir() -> Path:
    """Where trained weights are cached: $EFFML_CACHE/trained or the user cache dir."""
    import os
    from pathlib import Path

    import platformdirs

    root = os.environ.get("EFFML_CACHE") or platformdirs.user_cache_dir("effml")
    return Path(root) / "trained"


def train_cached(model: nn.Module, data, key: str, config: TrainLoopConfig | None = None,
                 **kwargs) -> tuple[TrainLoopResult | None, str]:
    """Train once and reuse: weights cached as <cache_dir>/<key>.safetensors. Returns (TrainLoopResult or None when
    loaded, path). The key must name everything that changes the weights (model, data, epochs, seed)."""
    from safetensors.torch import load_model, save_model

    path = cache_dir() / f"{key}.safetensors"
    if path.is_file():
        load_model(model, str(path))
        model.eval()
        return None, str(path)
    res = train_classifier(model, data, config, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path))
    return res, str(path)
