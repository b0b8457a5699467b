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


def test_backward_flops_belong_to_the_modules_whose_forward_made_them():
    # BERT-base, seq 512, --backward: every backward op runs under an autograd node that the forward of one
    # module created, so the per-module rows add up: the top-level children sum to the total (291 GFLOPs), the
    # 12 identical layers cost the same (the last one was 8.09 G against 24.2 G when backward was attributed by
    # gradient arrival), and a layer's backward matmuls are twice its forward ones (grad input + grad weight).
    from effml.models import resolve

    spec = resolve(config="bert-base", seq=512)
    p = effml.profile(spec.model, *spec.args, forward_kwargs=spec.kwargs, backward=True)
    rows = p.by_module(depth=3)
    total = p.total().flops
    assert sum(r.flops for name, r in rows.items() if name and "." not in name) == total
    assert rows["encoder"].flops == pytest.approx(total, rel=1e-4)  # embeddings: gathers and one LayerNorm
    layers = {rows[f"encoder.layer.{i}"].flops for i in range(12)}
    assert len(layers) == 1 and abs(layers.pop() / 24.24e9 - 1) < 0.001
    fwd, bwd = p.by_module("forward"), p.by_module("backward")
    for i in (0, 11):
        name = f"encoder.layer.{i}.intermediate.dense"
        assert bwd[name].macs == 2 * fwd[name].macs == 2 * 512 * 768 * 3072


def test_lm_head_backward_is_attributed_to_lm_head():
    from effml.models import resolve

    spec = resolve(config="gpt2", seq=64)
    p = effml.profile(spec.model, *spec.args, forward_kwargs=spec.kwargs, backward=True)
    fwd, bwd = p.by_module("forward", depth=1), p.by_module("backward", depth=1)
    # lm_head (64 x 768) @ (768 x 50257): backward = grad input + grad weight = 2 x the forward MACs
    assert fwd["lm_head"].macs == 64 * 768 * 50257 and bwd["lm_head"].macs == 2 * fwd["lm_head"].macs
