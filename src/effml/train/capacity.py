"""Does training fit on the device, and if not, what is the smallest change that makes it fit?

    report = fit_report(Estimator(model, inputs), cfg, target("h100"))
    report.fits, report.suggestion.flags      # e.g. False, "--checkpointing per-block"

Changes are tried in order of what they cost the run, and the first that fits is the suggestion:
1. a higher ZeRO stage at the same world size (1 and 2 add no communication over DDP; 3 adds 50%),
2. per-block activation checkpointing (recomputes the forward: about +1/3 compute), then with ZeRO,
3. a smaller micro-batch with more accumulation steps (same global batch, less parallel work per step):
   the largest divisor of the micro-batch that fits, alone and with checkpointing,
4. more devices with ZeRO-3 (the smallest power of two that fits).
"""

from __future__ import annotations

from dataclasses import dataclass

from effml.errors import ConfigError
from effml.train.config import TrainConfig, get_precision
from effml.train.memory import Estimator, MemoryEstimate
from effml.units import fmt_bytes


@dataclass(frozen=True)
class Target:
    """Where the run must fit: one device's memory, the dtypes it computes in, and how torch runs there."""

    name: str
    kind: str  # 'cpu' | 'gpu' | 'mcu'
    capacity_bytes: float
    dtypes: tuple[str, ...] | None = None  # None: this machine (checked by running, not by a table)
    local: bool = False

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "capacity_bytes": self.capacity_bytes, "local": self.local}


def target(hw: str | None = None) -> Target:
    """A catalog device (`effml hw list`), or this machine's RAM when hw is None."""
    if hw is None:
        import psutil

        return Target("this machine (cpu)", "cpu", float(psutil.virtual_memory().total), None, True)
    from effml.hardware import get_device

    dev = get_device(hw)
    return Target(dev.name, dev.kind, dev.capacity_bytes, dev.dtypes)


def check_target_precision(t: Target, precision: str) -> None:
    """ConfigError if the target cannot run the precision: fp16 + GradScaler off a GPU, or a compute dtype
    the device has no peak for (bf16 on a T4)."""
    p = get_precision(precision)
    if p.needs_gpu and t.kind != "gpu":
        raise ConfigError(f"precision {p.name!r} needs a CUDA GPU ({p.compute_dtype} autocast + GradScaler), "
                          f"but {t.name} is a {t.kind}: use bf16-mixed or fp32")
    if t.dtypes is not None and p.compute_dtype not in t.dtypes:
        raise ConfigError(f"precision {p.name!r} computes in {p.compute_dtype}, which {t.name} lacks "
                          f"(it has {', '.join(t.dtypes)}): use " +
                          ("fp16-mixed" if "fp16" in t.dtypes and t.kind == "gpu" else "fp32"))
    if t.local:
        from effml.train.recipes import check_precision

        check_precision(p, "cuda" if t.kind == "gpu" else "cpu")


@dataclass(frozen=True)
class Option:
    change: str  # what changes, in words
    flags: str  # the same as command-line flags
    config: TrainConfig
    peak_bytes: float
    fits: bool

    def to_dict(self) -> dict:
        return {"change": self.change, "flags": self.flags, "peak_bytes": self.peak_bytes, "fits": self.fits,
                "config": self.config.to_dict()}


@dataclass(frozen=True)
class FitReport:
    estimate: MemoryEstimate
    target: Target
    suggestion: Option | None  # the first option that fits (None: it fits already, or nothing found)
    tried: tuple[Option, ...]

    @property
    def fits(self) -> bool:
        return self.estimate.peak <= self.target.capacity_bytes

    @property
    def message(self) -> str:
        need, have = fmt_bytes(self.estimate.peak), fmt_bytes(self.target.capacity_bytes)
        if self.fits:
            return f"fits on {self.target.name}: {need} of {have} ({self.estimate.peak / self.target.capacity_bytes:.0%})"
        msg = f"does NOT fit on {self.target.name}: needs {need}, has {have}"
        if self.suggestion:
            return msg + f"; smallest change that fits: {self.suggestion.change} ({self.suggestion.flags}) -> " \
                         f"{fmt_bytes(self.suggestion.peak_bytes)}"
        return msg + "; no single change tried makes it fit"

    def to_dict(self) -> dict:
        return {"fits": self.fits, "target": self.target.to_dict(), "message": self.message,
                "suggestion": self.suggestion.to_dict() if self.suggestion else None,
                "tried": [o.to_dict() for o in self.tried]}


def _divisors_below(n: int) -> list[int]:
    return [d for d in range(n - 1, 0, -1) if n % d == 0]


def fit_report(est: Estimator, config: TrainConfig, tgt: Target, progress=None) -> FitReport:
    """Estimate config on tgt; if it does not fit, try the changes in the module docstring's order."""
    say = progress or (lambda msg: None)
    cap = tgt.capacity_bytes
    say(f"simulating {config.precision}, micro-batch {config.micro_batch}")
    base = est(config)
    tried: list[Option] = []
    if base.peak <= cap:
        return FitReport(base, tgt, None, ())

    def attempt(change: str, flags: str, c: TrainConfig) -> Option:
        say(f"trying {change}")
        e = est(c)
        opt = Option(change, flags, c, e.peak, e.peak <= cap)
        tried.append(opt)
        return opt

    def zero_options(c: TrainConfig, prefix: str, pflags: str):
        if c.world_size > 1:
            for s in range(c.zero_stage + 1, 4):
                yield f"{prefix}ZeRO stage {s}", f"{pflags}--zero {s}".strip(), c.replace(zero_stage=s)

    def micro_batch(c: TrainConfig, prefix: str, pflags: str) -> Option | None:
        """The largest divisor of the micro-batch that fits (accumulating more to keep the global batch)."""
        ladder = _divisors_below(c.micro_batch)
        if not ladder:
            return None

        def at(b):
            n = c.micro_batch // b
            return attempt(f"{prefix}micro-batch {b} x {c.grad_accum * n} accumulation steps",
                           f"{pflags}--batch {b} --grad-accum {c.grad_accum * n}".strip(),
                           c.replace(micro_batch=b, grad_accum=c.grad_accum * n))
        if not at(ladder[-1]).fits:  # even micro-batch 1 does not fit
            return None
        lo, hi = 0, len(ladder) - 1  # ladder[hi] fits; find the first (largest) that fits
        best = tried[-1]
        while lo < hi:
            mid = (lo + hi) // 2
            o = at(ladder[mid])
            if o.fits:
                best, hi = o, mid
            else:
                lo = mid + 1
        return best

    def first_fit(options):
        return next((o for o in (attempt(*z) for z in options) if o.fits), None)

    ck = config.checkpointing.enabled
    with_ck = config.replace(checkpointing="per-block")
    steps = [lambda: first_fit(zero_options(config, "", ""))]
    if not ck:
        steps.append(lambda: first_fit([("per-block checkpointing", "--checkpointing", with_ck)]))
        steps.append(lambda: first_fit(zero_options(with_ck, "per-block checkpointing + ", "--checkpointing ")))
    steps.append(lambda: micro_batch(config, "", ""))
    if not ck:
        steps.append(lambda: micro_batch(with_ck, "per-block checkpointing + ", "--checkpointing "))
    steps.append(lambda: _more_devices(attempt, with_ck))
    for step in steps:
        found = step()
        if found:
            return FitReport(base, tgt, found, tuple(tried))
    return FitReport(base, tgt, None, tuple(tried))


def _more_devices(attempt, c: TrainConfig, limit: int = 4096) -> Option | None:
    """ZeRO-3 with checkpointing over the smallest power-of-two world size that fits."""
    n = max(2, c.world_size * 2 if c.world_size > 1 else 2)
    while n <= limit:
        o = attempt(f"{n} devices with ZeRO-3 and per-block checkpointing",
                    f"--world-size {n} --zero 3 --checkpointing", c.replace(world_size=n, zero_stage=3))
        if o.fits:
            return o
        n *= 2
    return None


TASK_LOSS = {"causal-lm": "lm", "image-classification": "classification", "encoder": "mean-square"}


def estimator_for(spec, tgt: Target) -> Estimator:
    """An Estimator for a resolved model (effml.models.ModelSpec) aimed at `tgt`: the loss follows the
    config's task; causal LMs train without a KV cache; GPU targets use torch's CUDA default (foreach)
    optimizer kernels and a fused attention kernel; kernel workspace is measured only for this machine."""
    task = spec.config.task if spec.config is not None else None
    kwargs = dict(spec.kwargs)
    if task == "causal-lm":
        kwargs["use_cache"] = False
    return Estimator(spec.model, spec.args, loss=TASK_LOSS.get(task, "auto"), forward_kwargs=kwargs,
                     foreach=tgt.kind == "gpu", kernel_workspace=tgt.local, name=spec.name,
                     attention=attention_kernel(tgt))


def attention_kernel(tgt: Target) -> str:
    """The attention kernel a target trains with, by device kind: GPUs run SDPA as a fused kernel (flash or
    memory-efficient: no s x s tensor kept); CPUs (this machine included) as torch's CPU kernels do."""
    return "flash" if tgt.kind == "gpu" else "cpu"


__all__ = ["TASK_LOSS", "FitReport", "Option", "Target", "attention_kernel", "check_target_precision", "estimator_for",
           "fit_report", "target"]
