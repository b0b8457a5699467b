"""What a training run is: `TrainConfig` and the registries its names refer to (precisions, optimizers,
checkpointing strategies). Pure data, no torch import, so the CLI can validate flags instantly.

    TrainConfig(optimizer="adamw", precision="bf16-mixed", checkpointing="per-block",
                micro_batch=8, grad_accum=4, world_size=8, zero_stage=3)

Memory layout of the mixed precisions (`layout`): "torch-amp" (default, what effml trains with) is PyTorch
AMP's (Lightning's "bf16-mixed"): fp32 weights that are also the master copy, fp32 gradients, low-precision
compute under autocast; with AdamW 4 + 4 + 8 = 16 B/param. "zero-paper" is the ZeRO paper's: fp16/bf16
weights and grads (2 + 2) + fp32 master, m, v (12): the same 16 B unsharded, but ZeRO-1/2 shard more of it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from effml.errors import ConfigError
from effml.registries import Registry


# ---- precisions -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """How weights are stored and compute runs: param dtype (grads and optimizer states follow it) and the
    autocast dtype (None: no autocast)."""

    name: str
    param_dtype: str  # 'fp32' | 'bf16'
    autocast: str | None  # 'bf16' | 'fp16' | None
    grad_scaler: bool = False  # dynamic loss scaling (fp16's narrow exponent needs it)
    needs_gpu: bool = False  # torch's GradScaler + fp16 autocast are a CUDA recipe
    description: str = ""

    @property
    def compute_dtype(self) -> str:
        return self.autocast or self.param_dtype

    def to_dict(self) -> dict:
        return asdict(self)


PRECISIONS: Registry[Precision] = Registry("precision")
for _p in (Precision("fp32", "fp32", None, description="fp32 weights, grads, states and compute"),
           Precision("bf16-mixed", "fp32", "bf16",
                     description="AMP: fp32 weights/grads/states, bf16 compute under autocast"),
           Precision("fp16-mixed", "fp32", "fp16", grad_scaler=True, needs_gpu=True,
                     description="AMP: fp32 weights/grads/states, fp16 autocast + GradScaler (GPU)"),
           Precision("bf16-true", "bf16", None,
                     description="bf16 weights, grads, optimizer states and compute (no master copy)")):
    PRECISIONS.add(_p.name, _p)


def get_precision(name: str) -> Precision:
    return PRECISIONS.get(name)


# ---- model-state layouts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StateLayout:
    """Where a mixed-precision run keeps its weights, gradients and master copy (fp32 and bf16-true runs have
    one copy of each: both layouts coincide there)."""

    name: str
    low_precision_weights: bool  # weights and gradients in the compute dtype, an fp32 master copy with the states
    description: str = ""


LAYOUTS: Registry[StateLayout] = Registry("model-state layout")
for _l in (StateLayout("torch-amp", False, "PyTorch AMP + ZeroRedundancyOptimizer/FSDP: fp32 weights (also the "
                                          "master copy) 4 B + fp32 grads 4 B + AdamW moments 8 B per param"),
           StateLayout("zero-paper", True, "ZeRO paper (Rajbhandari et al. 2020) / DeepSpeed: fp16/bf16 weights "
                                           "2 B + grads 2 B + fp32 master weights and Adam moments 12 B per param; "
                                           "stage 1 shards the 12 B, stage 2 also the grads")):
    LAYOUTS.add(_l.name, _l)


# ---- optimizers -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptimizerSpec:
    """A torch optimizer by name: `build(params, lr, foreach=None, *, weight_decay=None, momentum=None)`;
    None keeps the entry's default (AdamW's weight decay 0.01, sgd-momentum's 0.9). `momentum` is for the SGD
    entries (Adam's are its betas). Its state bytes are measured by the memory estimator, not declared."""

    name: str
    build: object  # Callable[..., torch.optim.Optimizer]
    description: str = ""


# the one optimizer registry: `effml train`, the memory estimator and train_classifier all build from it
OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")


def optimizer(name: str, description: str = ""):
    """Decorator: register the factory `fn(params, lr, foreach, *, weight_decay, momentum)` as `name`."""

    def wrap(fn):
        OPTIMIZERS.add(name, OptimizerSpec(name, fn, description))
        return fn
    return wrap


def _or(value, default):
    return default if value is None else value


@optimizer("adamw", "AdamW: exp_avg + exp_avg_sq per parameter (2 copies)")
def _adamw(params, lr, foreach=None, *, weight_decay=None, momentum=None):
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=_or(weight_decay, 0.01), foreach=foreach)


@optimizer("adam", "Adam: exp_avg + exp_avg_sq per parameter (2 copies)")
def _adam(params, lr, foreach=None, *, weight_decay=None, momentum=None):
    import torch

    return torch.optim.Adam(params, lr=lr, weight_decay=_or(weight_decay, 0.0), foreach=foreach)


@optimizer("sgd-momentum", "SGD with momentum 0.9: one momentum buffer per parameter")
def _sgd_momentum(params, lr, foreach=None, *, weight_decay=None, momentum=None):
    import torch

    return torch.optim.SGD(params, lr=lr, momentum=_or(momentum, 0.9), weight_decay=_or(weight_decay, 0.0),
                           foreach=foreach)


@optimizer("sgd", "plain SGD: no state (a momentum > 0 adds one buffer per parameter)")
def _sgd(params, lr, foreach=None, *, weight_decay=None, momentum=None):
    import torch

    return torch.optim.SGD(params, lr=lr, momentum=_or(momentum, 0.0), weight_decay=_or(weight_decay, 0.0),
                           foreach=foreach)


def get_optimizer(name: str) -> OptimizerSpec:
    return OPTIMIZERS.get(name)


# ---- checkpointing ----------------------------------------------------------------------------------------
CHECKPOINT_STRATEGIES = {
    "none": "no activation checkpointing",
    "every": "checkpoint every k-th block of the block container ('per-block' = every-1)",
    "sqrt": "Chen et al. 2016: segments of ceil(sqrt(n)) consecutive blocks, each recomputed as one",
    "budget": "the fewest blocks (chosen by the estimator) that bring the peak under a byte budget",
    "modules": "checkpoint the named modules (e.g. modules:blocks.0,blocks.5)",
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]i?[bB]|[bB])?\s*$")
_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(text: str | float, what: str = "size") -> float:
    """'80GB' -> 8e10, '512MiB' -> 536870912, 1e9 -> 1e9 (GB = 1e9 B, GiB = 2**30 B)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise ConfigError(f"{what} {text!r} is not a size like 80GB, 512MiB or 1e9")
        value = float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()]
    if value <= 0:
        raise ConfigError(f"{what} must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class Checkpointing:
    """Which activations to drop and recompute: `Checkpointing.parse('every-2')`, 'per-block', 'sqrt',
    'budget:2GB', 'modules:blocks.0,blocks.3'. `container` names the block list (default: found)."""

    strategy: str = "none"
    every: int = 1
    budget_bytes: float | None = None
    modules: tuple[str, ...] = ()
    container: str | None = None

    def __post_init__(self):
        if self.strategy not in CHECKPOINT_STRATEGIES:
            raise ConfigError(f"checkpointing strategy {self.strategy!r} is not one of "
                              f"{', '.join(CHECKPOINT_STRATEGIES)}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"checkpointing every-k needs k >= 1, got {self.every!r}")
        if self.strategy == "budget" and not (self.budget_bytes and self.budget_bytes > 0):
            raise ConfigError("checkpointing 'budget' needs a positive byte budget, e.g. budget:2GB")
        if self.strategy == "modules" and not self.modules:
            raise ConfigError("checkpointing 'modules' needs module names, e.g. modules:blocks.0,blocks.3")

    @property
    def enabled(self) -> bool:
        return self.strategy != "none"

    @classmethod
    def parse(cls, text: str | Checkpointing | bool | None) -> Checkpointing:
        if isinstance(text, Checkpointing):
            return text
        if text is None or text is False:
            return cls()
        if text is True:
            return cls("every", 1)
        spec, _, container = str(text).strip().partition("@")  # 'per-block@layers'
        container = container.strip() or None
        head, _, arg = spec.partition(":")
        head = head.strip().lower()
        if head in ("", "none", "off"):
            return cls(container=container)
        if head in ("per-block", "block", "blocks"):
            return cls("every", 1, container=container)
        if m := re.fullmatch(r"every-?(\d+)", head):
            return cls("every", int(m.group(1)), container=container)
        if head == "sqrt":
            return cls("sqrt", container=container)
        if head == "budget":
            return cls("budget", budget_bytes=parse_bytes(arg, "checkpointing budget"), container=container)
        if head == "modules":
            names = tuple(n.strip() for n in arg.split(",") if n.strip())
            return cls("modules", modules=names, container=container)
        raise ConfigError(f"checkpointing {text!r}: expected none, per-block, every-K, sqrt, budget:SIZE or "
                          "modules:NAME,NAME (optionally @CONTAINER, e.g. per-block@blocks)")

    def label(self) -> str:
        labels = {"none": lambda: "none", "sqrt": lambda: "sqrt",
                  "every": lambda: "per-block" if self.every == 1 else f"every-{self.every}",
                  "budget": lambda: f"budget:{self.budget_bytes:.4g}B",
                  "modules": lambda: "modules:" + ",".join(self.modules)}
        return labels[self.strategy]() + (f"@{self.container}" if self.container else "")

    def to_dict(self) -> dict:
        return {"label": self.label(), **asdict(self)}


# ---- the run --------------------------------------------------------------------------------------------
ZERO_STAGES = {0: "no sharding (plain data parallel)", 1: "optimizer states sharded",
               2: "optimizer states + gradients sharded", 3: "optimizer states + gradients + weights sharded"}


@dataclass(frozen=True)
class TrainConfig:
    """A training configuration. `micro_batch` is per device and per forward; the global batch is
    micro_batch x grad_accum x world_size."""

    optimizer: str = "adamw"
    precision: str = "fp32"
    checkpointing: Checkpointing = field(default_factory=Checkpointing)
    micro_batch: int = 1
    grad_accum: int = 1
    world_size: int = 1
    zero_stage: int = 0
    lr: float = 1e-3
    layout: str = "torch-amp"  # LAYOUTS: where mixed precision keeps weights, grads and the master copy

    def __post_init__(self):
        object.__setattr__(self, "checkpointing", Checkpointing.parse(self.checkpointing))
        get_optimizer(self.optimizer)
        get_precision(self.precision)
        LAYOUTS.get(self.layout)
        for name in ("micro_batch", "grad_accum", "world_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"TrainConfig.{name} must be an integer >= 1, got {v!r}")
        if self.zero_stage not in ZERO_STAGES:
            raise ConfigError(f"TrainConfig.zero_stage must be one of 0, 1, 2, 3, got {self.zero_stage!r}")
        if self.zero_stage and self.world_size == 1:
            raise ConfigError(f"TrainConfig.zero_stage={self.zero_stage} shards across devices: it needs "
                              "world_size > 1 (e.g. --world-size 8)")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"TrainConfig.lr must be positive, got {self.lr!r}")

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    def replace(self, **changes) -> TrainConfig:
        from dataclasses import replace

        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["checkpointing"] = self.checkpointing.to_dict()
        d["global_batch"] = self.global_batch
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of to_dict (JSON round trip)."""
        ck = {k: v for k, v in d["checkpointing"].items() if k != "label"}
        ck["modules"] = tuple(ck.get("modules", ()))
        keep = {k: d[k] for k in ("optimizer", "precision", "micro_batch", "grad_accum", "world_size",
                                  "zero_stage", "lr")}
        return cls(checkpointing=Checkpointing(**ck), layout=d.get("layout", "torch-amp"), **keep)


__all__ = [
    "CHECKPOINT_STRATEGIES",
    "LAYOUTS",
    "OPTIMIZERS",
    "PRECISIONS",
    "ZERO_STAGES",
    "Checkpointing",
    "OptimizerSpec",
    "Precision",
    "StateLayout",
    "TrainConfig",
    "get_optimizer",
    "get_precision",
    "optimizer",
    "parse_bytes",
]
