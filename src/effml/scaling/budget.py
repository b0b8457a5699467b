"""Budgets in FLOPs, dollars or GPU-hours, and the compute-optimal plan they buy.

The only place `effml.scaling` touches hardware, through exactly this API of `effml.hardware`:
`get_device(name)` -> an object with `.name`, `.peak_flops(dtype)` (dense FLOP/s) and `.price_per_hour`
(USD per GPU-hour, or None). Conversions, at a model FLOPs utilisation (MFU) the user states:

    FLOPs = GPU-hours · 3600 s/h · peak_flops(dtype) · MFU,    GPU-hours = USD / price_per_hour

e.g. 1 H100-hour at 989 TFLOP/s bf16 and MFU 0.4 buys 3600 · 989e12 · 0.4 = 1.42e18 training FLOPs.
A device object (anything with those three attributes) can be passed instead of a catalog name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from effml.errors import ConfigError
from effml.scaling.laws import (CHINCHILLA_TOKENS_PER_PARAM, Allocation, ScalingLaw, compute_optimal, get_law,
                                optimal_for_params, tokens_per_param_allocation)

SECONDS_PER_HOUR = 3600.0


def resolve_device(hw: Any):
    """A catalog name -> effml.hardware device; a device-like object is returned as is."""
    if not isinstance(hw, str):
        for attr in ("name", "peak_flops", "price_per_hour"):
            if not hasattr(hw, attr):
                raise ConfigError(f"a device object needs .name, .peak_flops(dtype) and .price_per_hour; "
                                  f"{type(hw).__name__} has no .{attr}")
        return hw
    try:
        from effml.hardware import get_device
    except ImportError as exc:
        raise ConfigError(f"a $ or GPU-hour budget on {hw!r} needs the device catalog effml.hardware, which "
                          f"is not available in this install ({exc}); give the budget in FLOPs instead") from None
    return get_device(hw)


@dataclass(frozen=True)
class Budget:
    """Exactly one of flops, usd or gpu_hours; usd and gpu_hours need hw (a catalog device) and an MFU."""

    flops: float | None = None
    usd: float | None = None
    gpu_hours: float | None = None
    hw: Any = None  # catalog name ("h100") or a device object
    mfu: float = 0.4  # model FLOPs utilisation: achieved / peak dense FLOP/s
    dtype: str = "bf16"
    price_per_hour: float | None = None  # overrides the catalog's USD per GPU-hour

    def __post_init__(self):
        given = [k for k in ("flops", "usd", "gpu_hours") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"Budget needs exactly one of flops, usd, gpu_hours; got {given or 'none'}")
        value = getattr(self, given[0])
        if not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise ConfigError(f"Budget.{given[0]} must be a finite number > 0, got {value!r}")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"Budget.mfu must be in (0, 1], got {self.mfu!r} (typical LLM training: 0.3–0.5)")
        if self.price_per_hour is not None and not self.price_per_hour > 0:
            raise ConfigError(f"Budget.price_per_hour must be > 0, got {self.price_per_hour!r}")
        if self.flops is None and self.hw is None:
            raise ConfigError(f"a Budget in {given[0]} needs hw (a catalog device such as 'h100') to turn it "
                              "into FLOPs")


@dataclass(frozen=True)
class Conversion:
    """One budget in all three currencies (gpu_hours and usd are None where no device or price is known)."""

    flops: float
    gpu_hours: float | None = None
    usd: float | None = None
    device: str | None = None
    dtype: str | None = None
    mfu: float | None = None
    peak_flops: float | None = None  # dense FLOP/s of one device at dtype
    price_per_hour: float | None = None

    @property
    def flops_per_gpu_hour(self) -> float | None:
        return None if self.peak_flops is None else self.peak_flops * self.mfu * SECONDS_PER_HOUR

    def to_dict(self) -> dict:
        return {**asdict(self), "flops_per_gpu_hour": self.flops_per_gpu_hour}


def _price(device, override: float | None) -> float | None:
    price = override if override is not None else getattr(device, "price_per_hour", None)
    return None if price is None else float(price)


def cost_of(flops: float, hw: Any = None, mfu: float = 0.4, dtype: str = "bf16",
            price_per_hour: float | None = None) -> Conversion:
    """FLOPs -> GPU-hours and $ on hw at mfu (FLOPs only when hw is None)."""
    return convert(Budget(flops=flops, hw=hw, mfu=mfu, dtype=dtype, price_per_hour=price_per_hour))


def convert(budget: Budget) -> Conversion:
    if budget.hw is None:
        return Conversion(float(budget.flops))
    device = resolve_device(budget.hw)
    peak = float(device.peak_flops(budget.dtype))
    if not peak > 0:
        raise ConfigError(f"device {device.name!r} reports peak_flops({budget.dtype!r}) = {peak}; need > 0")
    per_hour = peak * budget.mfu * SECONDS_PER_HOUR  # FLOPs one GPU-hour buys
    price = _price(device, budget.price_per_hour)
    if budget.usd is not None:
        if price is None:
            raise ConfigError(f"device {device.name!r} has no price_per_hour in the catalog; give "
                              "price_per_hour (--price-per-hour) or the budget in GPU-hours")
        hours = budget.usd / price
    elif budget.gpu_hours is not None:
        hours = float(budget.gpu_hours)
    else:
        hours = budget.flops / per_hour
    flops = hours * per_hour
    return Conversion(flops, hours, None if price is None else hours * price, device.name, budget.dtype,
                      budget.mfu, peak, price)


@dataclass(frozen=True)
class Plan:
    """What a budget buys: the law's compute-optimal (N, D), the 20-tokens/param rule beside it, and costs."""

    budget: Conversion  # the compute of `optimal` in FLOPs, GPU-hours, $
    optimal: Allocation
    rule_of_thumb: Allocation
    rule_of_thumb_cost: Conversion  # equal to budget when both spend the same compute

    def to_dict(self) -> dict:
        return {"budget": self.budget.to_dict(), "optimal": self.optimal.to_dict(),
                "rule_of_thumb": self.rule_of_thumb.to_dict(),
                "rule_of_thumb_cost": self.rule_of_thumb_cost.to_dict()}


def allocate(budget: Budget | float, law: str | ScalingLaw = "chinchilla",
             ratio: float = CHINCHILLA_TOKENS_PER_PARAM) -> Plan:
    """Compute-optimal (N, D) for a budget (a Budget, or plain training FLOPs)."""
    budget = budget if isinstance(budget, Budget) else Budget(flops=budget)
    conv = convert(budget)
    law = get_law(law)
    return Plan(conv, compute_optimal(conv.flops, law),
                tokens_per_param_allocation(conv.flops, ratio=ratio, law=law), conv)


def plan_for_params(N: float, law: str | ScalingLaw = "chinchilla", hw: Any = None, mfu: float = 0.4,
                    dtype: str = "bf16", price_per_hour: float | None = None,
                    ratio: float = CHINCHILLA_TOKENS_PER_PARAM) -> Plan:
    """Reverse: the tokens that make N compute-optimal under the law, what that costs, and the 20·N rule."""
    law = get_law(law)
    opt = optimal_for_params(N, law)
    rule = tokens_per_param_allocation(params=N, ratio=ratio, law=law)
    return Plan(cost_of(opt.compute, hw, mfu, dtype, price_per_hour), opt, rule,
                cost_of(rule.compute, hw, mfu, dtype, price_per_hour))
