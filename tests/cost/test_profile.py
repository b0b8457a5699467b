"""The Profile result: JSON round trip and the queries derived from its events."""

import json

import pytest
import torch

import effml
from effml.cost.profile import Profile
from effml.zoo import ZOO


def test_json_round_trip_preserves_every_view():
    p = effml.profile(ZOO["resnet"].build(), torch.randn(2, 3, 32, 32), backward=True)
    q = Profile.from_dict(json.loads(json.dumps(p.to_dict(events=True))))
    assert q.to_dict() == p.to_dict()
    assert q.total("backward").macs == p.total("backward").macs


def test_from_dict_needs_events():
    p = effml.profile(ZOO["mlp"].build(), torch.randn(1, 784))
    with pytest.raises(ValueError, match="to_dict\\(events=True\\)"):
        Profile.from_dict(p.to_dict())


def test_phases_partition_the_total():
    p = effml.profile(ZOO["lenet5"].build(), torch.randn(4, 1, 28, 28), backward=True)
    assert p.total("forward").flops + p.total("backward").flops == p.total().flops
    assert sum(s.flops for s in p.by_op().values()) == p.total().flops
    assert sum(s.flops for s in p.by_category().values()) == p.total().flops
    with pytest.raises(ValueError, match="phase must be one of"):
        p.total("sideways")


def test_intensity_is_flops_per_byte():
    p = effml.profile(torch.nn.Linear(64, 64, bias=False), torch.randn(64, 64))
    s = p.total()
    # one mm: 2·64³ FLOPs over three 64x64 fp32 matrices (x, W read; y written): 524288 / 49152
    assert s.flops == 2 * 64**3 and s.bytes == 3 * 64 * 64 * 4
    assert s.intensity == pytest.approx(2 * 64**3 / (3 * 64 * 64 * 4))
