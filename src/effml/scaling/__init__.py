"""Compute-optimal planning: Chinchilla-style scaling laws, allocation of a budget, fitting your own runs.

    from effml.scaling import loss, compute_optimal, allocate, Budget, fit_law, read_runs
    loss(70e9, 1.4e12)                       # 1.937 nats/token with Chinchilla's rounded eq.-10 constants
    compute_optimal(5.76e23)                 # N, D, loss at Gopher's budget (closed form, C = 6ND)
    allocate(Budget(usd=1e6, hw="h100", mfu=0.4))
    fit_law(read_runs("runs.csv"))           # Huber + L-BFGS from a grid, bootstrap intervals

Hardware ($, GPU-hours) is reached only through `effml.hardware.get_device` (see budget.py).
"""

from effml.scaling.budget import Budget, Conversion, Plan, allocate, convert, cost_of, plan_for_params
from effml.scaling.curvefit import CurveFitConfig, CurveFitError, CurveFitResult, Interval, Runs, fit_law, read_runs
from effml.scaling.laws import (CHINCHILLA_TOKENS_PER_PARAM, FLOPS_PER_PARAM_TOKEN, LAWS, Allocation, IsoFlopCurve,
                                ScalingLaw, compute_optimal, get_law, isoflop, loss, optimal_for_params,
                                tokens_per_param_allocation)

__all__ = [
    "Allocation", "Budget", "CHINCHILLA_TOKENS_PER_PARAM", "Conversion", "CurveFitConfig", "CurveFitError",
    "CurveFitResult", "FLOPS_PER_PARAM_TOKEN", "Interval", "IsoFlopCurve", "LAWS", "Plan", "Runs", "ScalingLaw",
    "allocate", "compute_optimal", "convert", "cost_of", "fit_law", "get_law", "isoflop", "loss",
    "optimal_for_params", "plan_for_params", "read_runs", "tokens_per_param_allocation",
]
