"""Sensitivity scan: one layer at a time, weights restored, proposal = largest sparsity within tolerance."""

import pytest
import torch
from torch import nn

from effml.compress import sensitivity
from effml.errors import ConfigError


def test_scan_restores_weights_and_proposes_by_tolerance():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    before = [p.detach().clone() for p in m.parameters()]

    def metric(model):  # fraction of non-zero weights in layer "1": only pruning "1" costs anything
        return float((model[1].weight != 0).float().mean())

    res = sensitivity(m, metric=metric, sparsities=(0.1, 0.3, 0.5), tolerance=0.25)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert res.base == 1.0 and res.curves["0"] == [1.0, 1.0, 1.0]
    assert res.curves["1"] == pytest.approx([0.9, 0.7, 0.5])
    # layer 0 never costs anything -> the largest scanned 0.5; layer 1 loses 0.1, 0.3, 0.5 > 0.25 at 0.3 -> 0.1
    assert res.proposal == {"0": 0.5, "1": 0.1}
    assert res.overall() == pytest.approx((0.5 * 100 + 0.1 * 100) / 200)
    assert res.prune_config().per_layer == {"0": 0.5, "1": 0.1}


def test_needs_data_or_metric_and_sane_sparsities():
    m = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="needs data"):
        sensitivity(m)
    with pytest.raises(ConfigError, match="ascending"):
        sensitivity(m, metric=lambda _: 1.0, sparsities=(0.5, 0.3))
    with pytest.raises(ConfigError, match=r"fraction in \[0, 1\)"):
        sensitivity(m, metric=lambda _: 1.0, sparsities=(0.5, 1.0))
