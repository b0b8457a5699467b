"""Plans for a study of the user's own model: what each applies to, what it needs, and how it is applied.

A `UserPlan` is data, like the default study's `Plan`, plus two declarations:

    UserPlan("prune-channel-30%+int8", (("prune", {"method": "channel", "sparsity": 0.3}),
             ("quantize", {"method": "int8-static"})), applies_to=("conv",), needs=("calibration",))

`applies_to`: the model kinds the plan can change (any one is enough): "conv" (nn.Conv1d/2d/3d), "linear"
(nn.Linear or transformers' Conv1D), "heads" (a transformer with attention heads), "blocks" (a stack of
transformer blocks), "decoder" (a causal LM). `needs`: "train" (a fine-tuning function), "calibration"
(calibration batches). `select` keeps the plans that fit the model and what the user gave, and names the
reason for every other one. Users add their own with `add_plan(UserPlan(...))` (the USER_PLANS registry).

Each step runs one library verb (`effml.compress.prune` / `quantize`) on a copy of the baseline. With a
`train(model, steps)` function, a pruning step is fine-tuned with its masks held (their gradient hooks zero
the pruned weights' gradients; the masks are re-applied after), and a `qat=True` step trains through its
fake-quantization before it is frozen: the same prepare -> apply -> fine-tune -> finalize order as
`effml.compress.workflow.compress`, with the user's training loop in place of effml's classifier recipe.
With `train_quantized=True` a post-training quantization step is fine-tuned too (the user's loop trains
what stays float after it, e.g. re-fits a classification head on the quantized features); off by default,
since a loop that backpropagates through int8 kernels fails there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from effml.errors import ConfigError
from effml.registries import Registry
from effml.study.variants import Plan

KINDS = ("conv", "linear", "heads", "blocks", "decoder")
KIND_TEXT = {"conv": "convolutions", "linear": "linear layers", "heads": "attention heads",
             "blocks": "transformer blocks", "decoder": "a causal LM (decoder)"}
NEEDS = ("train", "calibration")


@dataclass(frozen=True)
class UserPlan(Plan):
    """A default-study Plan (name, steps: ("prune" | "quantize", a config_from_dict-able dict); its store key and
    chain) plus what it applies to and what it needs."""

    applies_to: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"a study plan needs a name, got {self.name!r}")
        bad = [k for k in self.applies_to if k not in KINDS]
        if bad or not self.applies_to:
            raise ConfigError(f"plan {self.name!r}: applies_to {list(self.applies_to)!r}; each must be one of "
                              f"{', '.join(KINDS)}")
        bad = [n for n in self.needs if n not in NEEDS]
        if bad:
            raise ConfigError(f"plan {self.name!r}: needs {bad!r}; each must be one of {', '.join(NEEDS)}")
        if not self.steps:
            raise ConfigError(f"plan {self.name!r} has no steps")
        from effml.compress.configs import config_from_dict
        from effml.compress.workflow import verb_of

        for technique, cfg in self.steps:
            if technique not in ("prune", "quantize"):
                raise ConfigError(f"plan {self.name!r}: step technique {technique!r}; expected prune or quantize")
            config = config_from_dict(cfg)  # refuses unknown methods and fields by name
            if verb_of(config) != technique:
                raise ConfigError(f"plan {self.name!r}: step {technique!r} got a {verb_of(config)} config {cfg!r}")


USER_PLANS: Registry = Registry("study plan")


def add_plan(plan: UserPlan) -> UserPlan:
    """Register a plan under its name (a second plan with the same name is refused)."""
    return USER_PLANS.add(plan.name, plan)


def _p(method: str, **kw) -> tuple[str, dict]:
    return ("prune", {"method": method, **kw})


def _q(method: str, **kw) -> tuple[str, dict]:
    return ("quantize", {"method": method, **kw})


for _plan in (
    UserPlan("prune-fine-50%", (_p("fine", sparsity=0.5),), ("conv", "linear")),
    UserPlan("prune-channel-30%", (_p("channel", sparsity=0.3),), ("conv",)),
    UserPlan("prune-channel-50%", (_p("channel", sparsity=0.5),), ("conv",)),
    UserPlan("linear-8b", (_q("linear", bits=8),), ("conv", "linear")),
    UserPlan("kmeans-4b", (_q("kmeans", bits=4),), ("conv", "linear")),
    UserPlan("kmeans-2b-qat", (_q("kmeans", bits=2, qat=True),), ("conv", "linear"), ("train",)),
    UserPlan("int8-static", (_q("int8-static"),), ("conv",), ("calibration",)),
    UserPlan("int8-dynamic", (_q("int8-dynamic"),), ("linear",)),
    UserPlan("smoothquant-int8", (_q("int8-dynamic", smooth_alpha=0.5),), ("linear",), ("calibration",)),
    UserPlan("weight-only-int8", (_q("weight-only", bits=8),), ("linear",)),
    UserPlan("weight-only-int4", (_q("weight-only", bits=4, group_size=32),), ("decoder",)),
    # group 64: fp32 scale + zero cost 1 bit per weight instead of 2 (group 32); 64 divides d=576 (SmolLM2)
    UserPlan("weight-only-int4-g64", (_q("weight-only", bits=4, group_size=64),), ("decoder",)),
    # the tied embedding/head pair (the largest matrix of a small LM) as one int8 table too
    UserPlan("weight-only-int8+tied", (_q("weight-only", bits=8, tied="int8"),), ("decoder",)),
    UserPlan("weight-only-int4+tied-int8", (_q("weight-only", bits=4, group_size=32, tied="int8"),), ("decoder",)),
    UserPlan("prune-channel-30%+int8", (_p("channel", sparsity=0.3), _q("int8-static")), ("conv",),
             ("calibration",)),
    UserPlan("prune-channel-50%+int8", (_p("channel", sparsity=0.5), _q("int8-static")), ("conv",),
             ("calibration",)),
):
    add_plan(_plan)


def _register_transformer_plans() -> None:
    """Plans on H8's transformer methods (heads/FFN/blocks pruning, GPTQ, AWQ), when those modules import."""
    try:
        import effml.compress.awq  # noqa: F401 - registers "awq"
        import effml.compress.gptq  # noqa: F401 - registers "gptq"
        import effml.compress.transformer_prune  # noqa: F401 - registers "heads", "ffn", "blocks"
    except ImportError:  # an older tree without them: the plans below are simply not offered
        return
    for plan in (
        UserPlan("prune-heads-25%", (_p("heads", ratio=0.25),), ("heads",)),
        UserPlan("prune-ffn-25%", (_p("ffn", ratio=0.25),), ("heads",)),
        UserPlan("prune-heads-25%+int8-dynamic", (_p("heads", ratio=0.25), _q("int8-dynamic")), ("heads",)),
        UserPlan("prune-blocks-1", (_p("blocks", n_blocks=1),), ("blocks",), ("calibration",)),
        UserPlan("gptq-4b", (_q("gptq", bits=4, group_size=32),), ("decoder",), ("calibration",)),
        UserPlan("awq-4b", (_q("awq", group_size=32),), ("decoder",), ("calibration",)),
    ):
        try:
            add_plan(plan)
        except ConfigError:  # a field renamed by its owner: leave the plan out rather than break the study
            continue


_register_transformer_plans()


def model_kinds(model: nn.Module) -> set[str]:
    """The kinds of layers and structure `model` has (see KINDS)."""
    kinds: set[str] = set()
    blocks = 0
    for m in model.modules():
        cls = type(m).__name__
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            kinds.add("conv")
        elif isinstance(m, nn.Linear) or cls == "Conv1D":  # transformers' GPT-2 Conv1D is a transposed Linear
            kinds.add("linear")
        if isinstance(m, nn.MultiheadAttention) or (cls.endswith("Attention") and any(
                hasattr(m, a) for a in ("num_heads", "num_attention_heads", "n_head", "n_heads"))):
            kinds.add("heads")
        if isinstance(m, nn.ModuleList) and len(m) > 1 and any("Attention" in type(c).__name__
                                                              for x in m for c in x.modules()):
            blocks = max(blocks, len(m))
    if blocks:
        kinds.add("blocks")
    config = getattr(model, "config", None)
    archs = getattr(config, "architectures", None) or []
    if type(model).__name__.endswith("ForCausalLM") or any(str(a).endswith("ForCausalLM") for a in archs) \
            or getattr(config, "is_decoder", False) or hasattr(model, "generate") and "heads" in kinds \
            and not getattr(config, "is_encoder_decoder", False) and hasattr(config, "vocab_size") \
            and "lm_head" in dict(model.named_modules()):
        kinds.add("decoder")
    return kinds


@dataclass
class Selection:
    plans: list[UserPlan]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (plan name, reason)


def select(model: nn.Module, names: list[str] | None, *, have: set[str]) -> Selection:
    """The plans (all registered, or `names`) that apply to `model` and need only what is in `have`."""
    kinds = model_kinds(model)
    chosen = [USER_PLANS.get(n) for n in names] if names is not None else list(USER_PLANS.values())
    out = Selection([])
    for plan in chosen:
        if not kinds & set(plan.applies_to):
            has = ", ".join(KIND_TEXT[k] for k in KINDS if k in kinds) or "none of these"
            out.skipped.append((plan.name, f"applies to {' or '.join(KIND_TEXT[k] for k in plan.applies_to)}; "
                                           f"the model has {has}"))
        elif missing := [n for n in plan.needs if n not in have]:
            out.skipped.append((plan.name, f"needs {' and '.join(missing)}: pass "
                                           f"{' and '.join(f'{n}=' for n in missing)} to effml.study (or set "
                                           "them in the spec file)"))
        else:
            out.plans.append(plan)
    return out


def _calibration_for(config, calibration):
    """Token ids given as one (samples, tokens) tensor (what GPTQ, AWQ and block pruning take) become (1, tokens)
    batches for the methods that run calibration batches through the model (static int8, SmoothQuant)."""
    import torch

    if config.name in ("int8-dynamic", "int8-static") and isinstance(calibration, torch.Tensor) \
            and calibration.ndim == 2 and not calibration.is_floating_point():
        return [calibration[i:i + 1] for i in range(calibration.shape[0])]  # (1, T) each
    return calibration


@dataclass
class Applied:
    model: nn.Module
    stored_bytes: int
    notes: list[str]


def apply_plan(plan: UserPlan, baseline: nn.Module, *, example_inputs: tuple, calibration=None,
               train: Callable | None = None, train_steps: int = 100, train_quantized: bool = False,
               progress: Callable[[str, float], None] = lambda what, frac: None) -> Applied:
    """Run the plan's steps on a deep copy of `baseline` (the baseline itself is not touched)."""
    from effml.compress.configs import config_from_dict
    from effml.compress.prune import prune
    from effml.compress.quantize import freeze, quantize

    model = copy.deepcopy(baseline)
    notes: list[str] = []
    stored = 0
    n = len(plan.steps)
    for i, (technique, cfg) in enumerate(plan.steps):
        config = config_from_dict(cfg)
        hook = (lambda what, frac, i=i: progress(f"{technique} {config.name}: {what}", (i + frac) / n))
        if technique == "prune":
            res = prune(model, config, example_inputs=example_inputs, data=calibration, progress=hook)
        else:
            res = quantize(model, config, calibration=_calibration_for(config, calibration),
                           example_inputs=example_inputs, progress=hook)
        qat = getattr(config, "qat", False)
        if train is not None and (technique == "prune" or qat or train_quantized):
            model.train()
            train(model, train_steps)  # the masks' gradient hooks keep pruned weights at zero
        masks = getattr(res, "masks", None)
        if masks is not None:
            masks.detach()
            masks.apply()
        if qat:
            freeze(model)
        model.eval()
        stored = res.stored_bytes
        notes += list(res.notes) + [f"skipped {name}: {why}" for name, why in res.skipped]
    return Applied(model, stored, notes)
