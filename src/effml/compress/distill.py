"""Knowledge distillation (Hinton et al. 2015): a small student learns the teacher's softened outputs.

loss = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(z_s, y)  [+ β · hint loss]

The T² keeps the soft term's gradient scale independent of T. The optional hint loss (FitNets, Romero et
al. 2015) matches intermediate features: MSE between a student module's output, passed through a learned
1x1 adapter when widths differ, and a teacher module's output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from effml.errors import ConfigError
from effml.train import core
from effml.progress import Progress


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft-target term; 1 - alpha on the hard labels
    epochs: int = 3
    lr: float = 2e-3
    weight_decay: float = 0.0
    hint_weight: float = 0.0  # β: 0 disables the feature (hint) loss
    hints: tuple[tuple[str, str], ...] = ()  # (teacher module name, student module name) pairs
    seed: int = 0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ConfigError(f"DistillConfig.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"DistillConfig.alpha must be in [0, 1], got {self.alpha}")
        if self.epochs < 1:
            raise ConfigError(f"DistillConfig.epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"DistillConfig.lr must be > 0, got {self.lr}")
        if self.hint_weight < 0 or (self.hint_weight > 0 and not self.hints):
            raise ConfigError("DistillConfig.hint_weight > 0 needs hints=((teacher_module, student_module), ...)")


@dataclass
class DistillResult:
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    steps: int = 0
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """α·T²·KL(p_t ‖ p_s) at temperature T, batch-mean, plus (1 − α)·cross-entropy on the labels."""
    T = temperature
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.log_softmax(teacher_logits / T, dim=-1),
                    reduction="batchmean", log_target=True) * T * T
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


class _Features:
    """Captures named modules' outputs during a forward."""

    def __init__(self, model: nn.Module, names: list[str], role: str):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ConfigError(f"{role} has no module named {', '.join(map(repr, missing))} for a distillation hint")
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(mod, inp, out):
            self.out[name] = out
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _adapter(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> nn.Module:
    """Identity when shapes match, else a learned 1x1 projection of the channel (dim 1) or last dim."""
    if student_feat.shape == teacher_feat.shape:
        return nn.Identity()
    if student_feat.dim() == 4:
        return nn.Conv2d(student_feat.shape[1], teacher_feat.shape[1], 1, bias=False)
    return nn.Linear(student_feat.shape[-1], teacher_feat.shape[-1], bias=False)


def distill(teacher: nn.Module, student: nn.Module, data: Iterable, config: DistillConfig = DistillConfig(),
            *, progress: Progress | None = None) -> DistillResult:
    """Train `student` in place on (x, y) batches from `data` against the frozen `teacher`.

    `progress(what, frac)` after every step: what = "distilling: loss 0.123", frac = steps / (epochs x
    len(data)) (for data without a length, the fraction of epochs done).
    """
    torch.manual_seed(config.seed)
    teacher.eval()
    student.train()
    t_feats = _Features(teacher, [t for t, _ in config.hints], "teacher") if config.hint_weight else None
    s_feats = _Features(student, [s for _, s in config.hints], "student") if config.hint_weight else None
    adapters: nn.ModuleDict | None = None
    result = DistillResult(config=asdict(config))
    per_epoch = len(data) if hasattr(data, "__len__") else None
    report = progress or core.no_progress
    log = core.LossLog()
    try:
        opt = None
        for step in core.iterate(data, epochs=config.epochs):
            x, y = step.batch
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            loss = kd_loss(s_logits, t_logits, y, config.temperature, config.alpha)
            if config.hint_weight:
                if adapters is None:  # built on the first batch, once the feature shapes are known
                    adapters = nn.ModuleDict({f"h{i}": _adapter(s_feats.out[s], t_feats.out[t])
                                              for i, (t, s) in enumerate(config.hints)})
                loss = loss + config.hint_weight * sum(
                    F.mse_loss(adapters[f"h{i}"](s_feats.out[s]), t_feats.out[t])
                    for i, (t, s) in enumerate(config.hints))
            if opt is None:
                params = list(student.parameters()) + (list(adapters.parameters()) if adapters else [])
                opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
            core.update(loss, opt)
            value = loss.item()
            log.add(step.epoch, value)
            result.steps += 1
            frac = result.steps / (per_epoch * config.epochs) if per_epoch else step.epoch / config.epochs
            report(f"distilling: loss {value:.3f}", frac)
        result.losses = log.epoch_means()
    finally:
        for feats in (t_feats, s_feats):
            if feats:
                feats.remove()
    student.eval()
    return result
