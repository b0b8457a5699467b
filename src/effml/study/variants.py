"""The variants a study produces: plans (named technique chains) and the steps that apply them.

A plan is data: `Plan("prune-channel-50%+int8", (("prune", {"method": "channel", "sparsity": 0.5}),
("quantize", {"method": "int8-static"})))`; every prune/quantize dict is `config_from_dict`-able
(effml.compress.configs). Each technique is a registered step `(model, config, ctx) -> StepOut`: prune and
quantize run the library's one workflow, `effml.compress.workflow.compress` (the same code `effml prune` /
`effml quantize` run: fine-tuning after pruning and for QAT, masks detached, QAT frozen); distill trains a
student. Each reports the bytes the model takes as stored.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from effml.errors import ConfigError
from effml.registries import Registry


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


def _compress(verb: str, model: nn.Module, cfg: dict, ctx: StudyContext) -> StepOut:
    """A pruning or quantization step: the library's one workflow (effml.compress.workflow.compress), with the
    study's fine-tuning recipe (after pruning and for QAT) and its calibration batch."""
    from effml.compress.configs import config_from_dict
    from effml.compress.workflow import compress, verb_of
    from effml.train.classifier import TrainLoopConfig

    config = config_from_dict(cfg)
    if verb_of(config) != verb:
        raise ConfigError(f"plan step {verb!r} got a {verb_of(config)} config {cfg!r}")
    rep = compress(model, [config], data=ctx.data.train, example_inputs=ctx.example_inputs,
                   finetune=TrainLoopConfig(epochs=ctx.finetune_epochs, lr=5e-4, seed=ctx.seed),
                   calibration=[(ctx.data.calibration(256), None)], progress=ctx.progress)
    return StepOut(rep.model, rep.stored_bytes, list(rep.notes) + [f"skipped {n}: {why}" for n, why in rep.skipped])


@STEPS.register("prune")
def _prune(model: nn.Module, cfg: dict, ctx: StudyContext) -> StepOut:
    return _compress("prune", model, cfg, ctx)


@STEPS.register("quantize")
def _quantize(model: nn.Module, cfg: dict, ctx: StudyContext) -> StepOut:
    return _compress("quantize", model, cfg, ctx)


@STEPS.register("distill")
def _distill(model: nn.Module, cfg: dict, ctx: StudyContext) -> StepOut:
    from effml.compress.distill import DistillConfig, distill
    from effml.compress.layers import param_bytes

    student = ctx.student()
    epochs = cfg.get("epochs", max(1, round(2 * ctx.finetune_epochs)))
    dc = DistillConfig(**{**cfg, "epochs": epochs, "seed": ctx.seed})
    distill(ctx.teacher or model, student, ctx.data.train, dc, progress=ctx.progress)
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


def _q(method: str, **kw) -> tuple[str, dict]:
    return ("quantize", {"method": method, **kw})


def _p(method: str, **kw) -> tuple[str, dict]:
    return ("prune", {"method": method, **kw})


# every step's dict is `config_from_dict`-able: {"method": <a name in effml.compress.configs.CONFIGS>, **fields}
DEFAULT_PLANS: tuple[Plan, ...] = (
    Plan("prune-fine-50%", (_p("fine", sparsity=0.5),)),
    Plan("prune-fine-80%", (_p("fine", sparsity=0.8),)),
    Plan("prune-fine-90%", (_p("fine", sparsity=0.9),)),
    Plan("prune-channel-30%", (_p("channel", sparsity=0.3),)),
    Plan("prune-channel-50%", (_p("channel", sparsity=0.5),)),
    Plan("linear-8b", (_q("linear", bits=8),)),
    Plan("linear-4b", (_q("linear", bits=4),)),
    Plan("linear-2b", (_q("linear", bits=2),)),
    Plan("kmeans-8b", (_q("kmeans", bits=8),)),
    Plan("kmeans-4b", (_q("kmeans", bits=4),)),
    Plan("kmeans-2b", (_q("kmeans", bits=2),)),
    Plan("kmeans-2b-qat", (_q("kmeans", bits=2, qat=True),)),
    Plan("int8", (_q("int8-static"),)),
    Plan("distill", (("distill", {"temperature": 4.0, "alpha": 0.7}),)),
    Plan("prune-channel-30%+linear-8b", (_p("channel", sparsity=0.3), _q("linear", bits=8))),
    Plan("prune-channel-40%+linear-8b", (_p("channel", sparsity=0.4), _q("linear", bits=8))),
    Plan("prune-channel-50%+linear-8b", (_p("channel", sparsity=0.5), _q("linear", bits=8))),
    Plan("prune-channel-30%+int8", (_p("channel", sparsity=0.3), _q("int8-static"))),
    Plan("prune-channel-50%+int8", (_p("channel", sparsity=0.5), _q("int8-static"))),
    Plan("distill+int8", (("distill", {"temperature": 4.0, "alpha": 0.7}), _q("int8-static"))),
)
PLANS: dict[str, Plan] = {p.name: p for p in DEFAULT_PLANS}
