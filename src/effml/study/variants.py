"""The variants a study produces: plans (named technique chains) and the steps that apply them.

A plan is data: `Plan("prune-channel-50+int8", (("prune", {...}), ("quantize", {...})))`. Each technique
is a registered step `(model, config, ctx) -> StepOut`: it applies the technique, fine-tunes where the
technique needs it (pruning, QAT, distillation), and reports the bytes the model takes as stored.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from effml.errors import ConfigError
from effml.registries import Registry, registrar


@dataclass(frozen=True)
class Plan:
    name: str
    steps: tuple[tuple[str, dict], ...]

    @property
    def key(self) -> str:
        """Identity in the store: the name plus a hash of the exact steps (a changed config is a new run)."""
        digest = hashlib.sha1(json.dumps(self.steps, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.name}#{digest}"

    def chain(self) -> list[dict]:
        return [{"technique": t, "config": dict(c)} for t, c in self.steps]


@dataclass
class StudyContext:
    """What steps need: the data, example inputs, the fine-tuning recipe, the teacher, a progress hook."""

    data: Any  # effml.zoo.data.DataBundle
    example_inputs: tuple
    finetune_epochs: float
    student: Callable[[], nn.Module]
    teacher: nn.Module | None = None
    progress: Callable[[str, float], None] = lambda what, frac: None
    seed: int = 0


@dataclass
class StepOut:
    model: nn.Module
    stored_bytes: int
    notes: list[str] = field(default_factory=list)


STEPS: Registry = Registry("study technique")


step = registrar(STEPS)


def _finetune(model: nn.Module, ctx: StudyContext, what: str) -> None:
    from effml.zoo.training import TrainLoopConfig, train_classifier

    train_classifier(model, ctx.data.train, TrainLoopConfig(epochs=ctx.finetune_epochs, lr=5e-4, seed=ctx.seed),
        progress=lambda msg, frac: ctx.progress(f"{what}: {msg}", frac), evaluate_after=False)


@step("prune")
def _prune(model: nn.Module, cfg: dict, ctx: StudyContext) -> StepOut:
    from effml.compress.prune import PruneConfig, prune

    res = prune(model, PruneConfig(**cfg), example_inputs=ctx.example_inputs, data=ctx.data.train)
    _finetune(res.model, ctx, f"fine-tuning after {cfg.get('kind', 'fine')} pruning")  # masks stay attached
    if res.masks is not None:
        res.masks.apply()
    return StepOut(res.model, res.stored_bytes, list(res.notes))


@step("quantize")
def _quantize(model: nn.Module, cfg: dict, ctx: StudyContext) -> StepOut:
    from effml.compress.quantize import QuantConfig, freeze, quantize

    qc = QuantConfig(**cfg)
    res = quantize(model, qc, calibration=[(ctx.data.calibration(256), None)],
                   example_inputs=ctx.example_inputs)
    if qc.qat:
        _finetune(res.model, ctx, f"QAT {qc.method} {qc.bits}-bit")
        freeze(res.model)
    return StepOut(res.model, res.stored_bytes, list(res.notes))


@step("distill")
def _distill(model: nn.Module, cfg: dict, ctx: StudyContext) -> StepOut:
    from effml.compress.distill import DistillConfig, distill
    from effml.compress.layers import param_bytes

    student = ctx.student()
    epochs = cfg.get("epochs", max(1, round(2 * ctx.finetune_epochs)))
    dc = DistillConfig(**{**cfg, "epochs": epochs, "seed": ctx.seed})
    total = epochs * len(ctx.data.train)
    distill(ctx.teacher or model, student, ctx.data.train, dc,
            callback=lambda ep, st, loss: ctx.progress(f"distilling: loss {loss:.3f}", st / total))
    return StepOut(student, param_bytes(student))


def apply(plan: Plan, baseline: nn.Module, ctx: StudyContext) -> StepOut:
    """Run the plan's steps on a deep copy of the baseline."""
    model = copy.deepcopy(baseline)
    out = StepOut(model, 0)
    notes: list[str] = []
    for technique, cfg in plan.steps:
        if technique not in STEPS:
            raise ConfigError(f"plan {plan.name!r}: unknown technique {technique!r}; known: {', '.join(STEPS)}")
        out = STEPS[technique](out.model, dict(cfg), ctx)
        notes += out.notes
    out.notes = notes
    out.model.eval()
    return out


def _q(method: str, bits: int, **kw) -> tuple[str, dict]:
    return ("quantize", {"method": method, "bits": bits, **kw})


DEFAULT_PLANS: tuple[Plan, ...] = (
    Plan("prune-fine-50%", (("prune", {"kind": "fine", "sparsity": 0.5}),)),
    Plan("prune-fine-80%", (("prune", {"kind": "fine", "sparsity": 0.8}),)),
    Plan("prune-fine-90%", (("prune", {"kind": "fine", "sparsity": 0.9}),)),
    Plan("prune-channel-30%", (("prune", {"kind": "channel", "sparsity": 0.3}),)),
    Plan("prune-channel-50%", (("prune", {"kind": "channel", "sparsity": 0.5}),)),
    Plan("linear-8b", (_q("linear", 8),)),
    Plan("linear-4b", (_q("linear", 4),)),
    Plan("linear-2b", (_q("linear", 2),)),
    Plan("kmeans-8b", (_q("kmeans", 8),)),
    Plan("kmeans-4b", (_q("kmeans", 4),)),
    Plan("kmeans-2b", (_q("kmeans", 2),)),
    Plan("kmeans-2b-qat", (_q("kmeans", 2, qat=True),)),
    Plan("int8", (_q("int8", 8, mode="static"),)),
    Plan("distill", (("distill", {"temperature": 4.0, "alpha": 0.7}),)),
    Plan("prune-channel-30%+linear-8b", (("prune", {"kind": "channel", "sparsity": 0.3}), _q("linear", 8))),
    Plan("prune-channel-40%+linear-8b", (("prune", {"kind": "channel", "sparsity": 0.4}), _q("linear", 8))),
    Plan("prune-channel-50%+linear-8b", (("prune", {"kind": "channel", "sparsity": 0.5}), _q("linear", 8))),
    Plan("prune-channel-50%+int8", (("prune", {"kind": "channel", "sparsity": 0.5}), _q("int8", 8, mode="static"))),
    Plan("distill+int8", (("distill", {"temperature": 4.0, "alpha": 0.7}), _q("int8", 8, mode="static"))),
)
PLANS: dict[str, Plan] = {p.name: p for p in DEFAULT_PLANS}
