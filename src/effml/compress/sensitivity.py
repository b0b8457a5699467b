"""`sensitivity(model, data, metric)`: prune one layer at a time, see what it costs, propose per-layer ratios.

For each weight layer and each sparsity, the layer alone is magnitude-pruned (the rest untouched), the
metric measured, and the weights restored. The proposal for a layer is the largest scanned sparsity whose
metric stays within `tolerance` of the unpruned model's (0 when even the smallest costs more): the
per-layer dict `FinePrune(per_layer=...)` takes (`SensitivityResult.prune_config()`).
Layers are scanned independently, so the joint drop of the proposal is larger: fine-tune after pruning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from effml.compress.layers import check_fraction, select_layers
from effml.errors import ConfigError
from effml.progress import Progress

DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass
class SensitivityResult:
    base: float  # the metric of the unpruned model
    sparsities: list[float]
    curves: dict[str, list[float]]  # layer -> metric at each sparsity
    proposal: dict[str, float]
    tolerance: float
    params: dict[str, int] = field(default_factory=dict)  # layer -> weights

    def to_dict(self) -> dict:
        return {"base": self.base, "sparsities": self.sparsities, "curves": self.curves, "proposal": self.proposal,
                "tolerance": self.tolerance, "params": self.params, "proposed_sparsity": self.overall()}

    def overall(self) -> float:
        """Fraction of the scanned layers' weights the proposal removes."""
        total = sum(self.params.values())
        return sum(self.proposal[n] * self.params[n] for n in self.proposal) / total if total else 0.0

    def prune_config(self):
        from effml.compress.configs import FinePrune

        return FinePrune(sparsity=0.0, per_layer=self.proposal, scope="layer")


def _metric(data, metric, max_batches):
    if metric is not None:
        return metric
    from effml.train.classifier import evaluate

    loader = getattr(data, "test", data)
    return lambda m: evaluate(m, loader, max_batches=max_batches)


@torch.no_grad()
def sensitivity(model: nn.Module, data=None, metric: Callable[[nn.Module], float] | None = None, *,
                sparsities=DEFAULT_SPARSITIES, targets=("Linear", "Conv2d"), layers=None,
                tolerance: float = 0.01, max_batches: int | None = None,
                progress: Progress | None = None) -> SensitivityResult:
    """Scan metric vs sparsity per layer (default metric: top-1 accuracy on data.test, higher is better)."""
    if data is None and metric is None:
        raise ConfigError("sensitivity needs data (to measure accuracy) or a metric(model) -> float")
    sparsities = [check_fraction(s, "sensitivity sparsity") for s in sparsities]
    if not sparsities or sorted(sparsities) != sparsities:
        raise ConfigError(f"sensitivity sparsities must be a non-empty ascending list, got {sparsities}")
    if tolerance < 0:
        raise ConfigError(f"sensitivity tolerance must be >= 0, got {tolerance}")
    fn = _metric(data, metric, max_batches)
    chosen = select_layers(model, targets, layers)
    progress = progress or (lambda what, frac: None)
    base = float(fn(model))
    curves, proposal = {}, {}
    total = len(chosen) * len(sparsities)
    for i, (name, m) in enumerate(chosen.items()):
        orig = m.weight.detach().clone()
        curve = []
        for j, s in enumerate(sparsities):
            k = int(round(s * orig.numel()))
            if k > 0:
                thr = torch.kthvalue(orig.abs().reshape(-1), k).values
                m.weight.copy_(orig * (orig.abs() > thr))
            curve.append(float(fn(model)))
            m.weight.copy_(orig)
            progress(f"sensitivity: {name} at {s:.0%}", (i * len(sparsities) + j + 1) / total)
        curves[name] = curve
        best = 0.0  # the largest sparsity such that it and every smaller one stay within tolerance
        for s, v in zip(sparsities, curve):
            if base - v > tolerance:
                break
            best = s
        proposal[name] = best
    return SensitivityResult(base, sparsities, curves, proposal, tolerance,
                             {n: m.weight.numel() for n, m in chosen.items()})
