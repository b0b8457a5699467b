"""Quantization: error bounded by scale/2, k-means codebook size, STE gradients, int8 agreement, weight-only
kernels against their dequantized reference, bad input."""

import pytest
import torch
from torch import nn

from effml.compress import (DynamicInt8Config, KMeansConfig, LinearQuantConfig, StaticInt8Config,
                            WeightOnlyConfig, config_from_dict, freeze, quantize)
from effml.compress.weight_only import WeightOnlyLinear
from effml.compress.kmeans import kmeans_1d, nearest
from effml.compress.qlinear import QSpec, dequantize, grouped, qparams
from effml.compress.qlinear import quantize as qcodes
from effml.errors import ConfigError
from effml.zoo import lenet5, mlp
from effml.zoo.data import load
from effml.train.classifier import train_classifier, predictions


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("spec", [QSpec(8, True, "tensor"), QSpec(4, True, "channel"), QSpec(2, True, "channel"),
                                  QSpec(3, False, "channel"), QSpec(4, False, "group", 8), QSpec(1, False, "tensor")])
def test_quantize_dequantize_error_at_most_half_a_step(spec):
    torch.manual_seed(0)
    w = torch.randn(16, 32) * torch.linspace(0.1, 3, 16)[:, None]  # rows of very different ranges
    scale, zero = qparams(w, spec)
    codes = qcodes(w, spec, scale, zero)
    assert codes.min() >= spec.qmin and codes.max() <= spec.qmax
    err = (grouped(dequantize(codes, scale, zero, spec), spec) - grouped(w, spec)).abs()  # (rows, groups, size)
    # rounding to the nearest of a uniform grid with step `scale` that covers the group's range: |e| <= scale/2
    assert (err <= scale / 2 + 1e-6).all()


def test_bits_must_be_at_least_one():
    with pytest.raises(ConfigError, match="bits must be an integer >= 1"):
        LinearQuantConfig(bits=0)
    with pytest.raises(ConfigError, match="symmetric quantization needs bits >= 2"):
        LinearQuantConfig(bits=1)
    with pytest.raises(ConfigError, match="WeightOnlyConfig.bits must be 8 or 4"):
        WeightOnlyConfig(bits=2)
    with pytest.raises(ConfigError, match="unknown compression method 'fp4'"):
        config_from_dict({"method": "fp4"})
    with pytest.raises(ConfigError, match="layer 'nope' does not exist"):
        quantize(mlp(), LinearQuantConfig(layers=("nope",)))


def test_kmeans_codebook_size_and_storage():
    torch.manual_seed(0)
    m = lenet5()
    res = quantize(m, KMeansConfig(bits=3))
    for name in res.layers:
        w = m.get_submodule(name).weight
        assert torch.unique(w).numel() <= 2 ** 3  # 3 bits: at most 8 shared values per layer
        assert res.codes[name]["codebook"].numel() == 8 and int(res.codes[name]["index"].max()) < 8
    n_w = sum(m.get_submodule(n).weight.numel() for n in res.layers)  # 61,470 weights
    n_b = 61_706 - n_w  # 236 biases stay fp32
    # 3 bits per weight + an 8-entry fp32 codebook per layer (5 layers) + fp32 biases
    assert res.stored_bytes == -(-(n_w * 3 + 5 * 8 * 32 + n_b * 32) // 8)


def test_kmeans_1d_finds_obvious_clusters():
    x = torch.tensor([-1.01, -1.0, -0.99, 0.5, 0.51, 2.0, 2.02])
    c, labels = kmeans_1d(x, 3)
    assert torch.allclose(torch.sort(c).values, torch.tensor([-1.0, 0.505, 2.01]), atol=1e-5)
    assert torch.equal(nearest(c, x), labels)


@pytest.mark.parametrize("method", ["linear", "kmeans"])
def test_qat_straight_through_gradient(method):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 4))
    quantize(m, config_from_dict({"method": method, "bits": 2, "qat": True}))
    m.train()
    x = torch.randn(5, 8)
    m(x).sum().backward()
    latent = m[0].parametrizations.weight.original
    # straight-through: dL/dW_latent = dL/dW_q = sum_b x_b for every output row (d(sum y)/dW = 1 x^T)
    torch.testing.assert_close(latent.grad, x.sum(0).expand(4, 8))
    codes = freeze(m)
    # 2 bits: linear symmetric per-channel codes are {-1, 0, 1} x the row's scale; k-means shares 4 values
    per_row = max(torch.unique(r).numel() for r in m[0].weight)
    assert (per_row <= 3 if method == "linear" else torch.unique(m[0].weight).numel() <= 4) and "0" in codes


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = load("digits", batch_size=64)
    m = mlp(in_features=64, hidden=(64, 32))
    train_classifier(m, data, epochs=3, lr=3e-3, seed=0)
    return m, data


@pytest.mark.parametrize("config", [DynamicInt8Config(), StaticInt8Config()])
def test_int8_agrees_with_fp32(trained, config):
    import copy

    m, data = trained
    q = copy.deepcopy(m)
    res = quantize(q, config, calibration=[data.calibration(256)])
    assert res.model is q  # in place, static int8 (an FX graph) included
    agree = (predictions(m, data.test) == predictions(res.model, data.test)).float().mean().item()
    # int8 rounds each weight by at most scale/2 (~0.4% of its layer's max |w|): only test points within
    # that margin of a decision boundary can flip; >= 97% of the 360 test digits keep their class
    assert agree >= 0.97
    assert res.layers == ["1", "3", "5"] and "x86" in res.notes[0] or "fbgemm" in res.notes[0]


@pytest.mark.parametrize("bits, kernel", [(8, "packed"), (4, "packed"), (4, "dequant")])
def test_weight_only_matches_its_dequantized_reference(bits, kernel):
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    q = WeightOnlyLinear(lin, bits, group_size=32, kernel=kernel, act_dtype="fp32")  # bf16 would round x
    x = torch.randn(3, 5, 64)
    ref = torch.nn.functional.linear(x, q.dequantized(), lin.bias)
    torch.testing.assert_close(q(x), ref, atol=1e-4, rtol=1e-4)
    # storage: int8 per-channel = 8 bits/weight + an fp32 scale per row; int4 = 4 bits + fp32 scale and
    # zero per group of 32 (2 groups per row); bias fp32
    expect = 64 * 32 * bits + (32 * 32 if bits == 8 else 32 * 2 * 64) + 32 * 32
    assert q.storage_bits() == expect


def test_int4_falls_back_per_layer_with_a_note():
    m = nn.Sequential(nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 32))
    res = quantize(m, WeightOnlyConfig(bits=4, group_size=8))
    # groups of 8: in=40 and in=16 divide, in=10 does not -> layer 4 stays fp32. The int4 CPU kernel needs
    # out % 16 == 0 and in % 32 == 0: layer 0 (in 40) and layer 2 (out 10) run dequantize + fp32 GEMM
    assert res.layers == ["0", "2"]
    assert any("left in fp32" in n and "4 (in_features 10)" in n for n in res.notes)
    assert any("dequantize + fp32 GEMM for 0, 2" in n for n in res.notes)
    assert res.skipped == [("4", "in_features 10 is not a multiple of group_size 8")]
    assert m(torch.randn(2, 40)).shape == (2, 32)
