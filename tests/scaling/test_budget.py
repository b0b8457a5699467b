"""Budgets: $ / GPU-hours <-> FLOPs through effml.hardware's device API, and the plans they buy."""

import sys
from types import SimpleNamespace

import pytest

from effml.errors import ConfigError, EffmlError
from effml.scaling import Budget, allocate, compute_optimal, convert, cost_of, plan_for_params
from effml.scaling.budget import resolve_device

# A test double with exactly the API effml.hardware devices have (name, peak_flops(dtype), price_per_hour):
# 1 PFLOP/s dense bf16, $2 per GPU-hour. Not a catalog entry: round numbers make the arithmetic checkable.
TOY = SimpleNamespace(name="toy", peak_flops=lambda dtype: {"bf16": 1e15, "fp32": 1e14}[dtype], price_per_hour=2.0)
UNPRICED = SimpleNamespace(name="unpriced", peak_flops=lambda dtype: 1e15, price_per_hour=None)


def test_usd_to_flops():
    # $1000 / $2 per hour = 500 GPU-hours; 500 h · 3600 s · 1e15 FLOP/s · 0.5 MFU = 9e20 FLOPs
    conv = convert(Budget(usd=1000, hw=TOY, mfu=0.5))
    assert conv.gpu_hours == pytest.approx(500) and conv.flops == pytest.approx(9e20) and conv.usd == pytest.approx(1000)
    assert conv.flops_per_gpu_hour == pytest.approx(1.8e18)


def test_gpu_hours_and_flops_round_trip():
    # 10 GPU-hours at MFU 0.5 = 10 · 3600 · 1e15 · 0.5 = 1.8e19 FLOPs, costing $20; and back
    a = convert(Budget(gpu_hours=10, hw=TOY, mfu=0.5))
    assert a.flops == pytest.approx(1.8e19) and a.usd == pytest.approx(20)
    b = cost_of(1.8e19, TOY, mfu=0.5)
    assert b.gpu_hours == pytest.approx(10) and b.usd == pytest.approx(20)
    # fp32 peak is 10× lower -> 10× the hours for the same FLOPs
    assert cost_of(1.8e19, TOY, mfu=0.5, dtype="fp32").gpu_hours == pytest.approx(100)


def test_flops_only_budget_needs_no_device():
    conv = convert(Budget(flops=5.76e23))
    assert conv.flops == 5.76e23 and conv.gpu_hours is None and conv.usd is None


def test_missing_price_is_a_clear_error_and_can_be_overridden():
    with pytest.raises(ConfigError, match="'unpriced' has no price_per_hour"):
        convert(Budget(usd=100, hw=UNPRICED))
    # $100 at an overridden $4/h = 25 h -> 25 · 3600 · 1e15 · 0.4 = 3.6e19 FLOPs
    assert convert(Budget(usd=100, hw=UNPRICED, price_per_hour=4.0)).flops == pytest.approx(3.6e19)
    # hours still work without a price (and report no $)
    conv = convert(Budget(gpu_hours=1, hw=UNPRICED))
    assert conv.usd is None and conv.flops == pytest.approx(3600 * 1e15 * 0.4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(flops=1e20, usd=5.0), "exactly one of flops, usd, gpu_hours"),
    (dict(), "exactly one"),
    (dict(flops=0), r"Budget\.flops must be a finite number > 0"),
    (dict(flops=-5.76e23), r"Budget\.flops must be a finite number > 0"),
    (dict(usd=-1, hw=TOY), r"Budget\.usd must be"),
    (dict(usd=1e6), "needs hw"),
    (dict(gpu_hours=10, hw=TOY, mfu=0), r"Budget\.mfu must be in \(0, 1\]"),
    (dict(gpu_hours=10, hw=TOY, mfu=1.5), r"Budget\.mfu"),
])
def test_budget_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Budget(**kwargs)


def test_device_object_must_have_the_api():
    with pytest.raises(ConfigError, match="no .price_per_hour"):
        resolve_device(SimpleNamespace(name="x", peak_flops=lambda d: 1.0))


def test_allocate_spends_the_converted_budget():
    plan = allocate(Budget(gpu_hours=10, hw=TOY, mfu=0.5))
    assert plan.optimal == compute_optimal(1.8e19)
    assert plan.rule_of_thumb.compute == pytest.approx(1.8e19, rel=1e-12)
    assert plan.to_dict()["budget"]["device"] == "toy"
    assert allocate(5.76e23).optimal.params == pytest.approx(compute_optimal(5.76e23).params)


def test_plan_for_params_costs_both_allocations():
    plan = plan_for_params(7e9, hw=TOY, mfu=0.5)
    # law: C = 1.964e22 -> 1.964e22 / 1.8e18 = 10912 GPU-hours; 20·N rule: C = 120·(7e9)² = 5.88e21 -> 3267 h
    assert plan.budget.gpu_hours == pytest.approx(1.964e22 / 1.8e18, rel=1e-3)
    assert plan.rule_of_thumb_cost.gpu_hours == pytest.approx(5.88e21 / 1.8e18, rel=1e-12)
    assert plan.rule_of_thumb_cost.usd == pytest.approx(2 * 5.88e21 / 1.8e18, rel=1e-12)


def test_without_effml_hardware_a_catalog_name_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "effml.hardware", None)  # import now raises ImportError
    with pytest.raises(EffmlError, match="needs the device catalog effml.hardware"):
        convert(Budget(usd=1e6, hw="h100"))


def test_h100_from_the_catalog():
    from effml import hardware  # part of effml: broken means failed, never skipped

    dev = hardware.get_device("h100")
    peak, price = dev.peak_flops("bf16"), dev.price_per_hour
    # NVIDIA H100 datasheet: H100 SXM dense bf16 989 TFLOP/s (the datasheet's 989.4–989.5)
    assert peak == pytest.approx(989e12, rel=1e-3)
    plan = allocate(Budget(usd=1e6, hw="h100", mfu=0.4))
    # $1e6 / price $/h · 3600 s · peak · 0.4; at $2.99/h and 989.5e12: 334,448 h · 1.4249e18 = 4.77e23 FLOPs
    assert plan.budget.flops == pytest.approx(1e6 / price * 3600 * peak * 0.4, rel=1e-12)
    assert plan.budget.device == dev.name
    assert plan.optimal.compute == pytest.approx(plan.budget.flops)
