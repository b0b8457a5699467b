"""Fine-grained and N:M pruning: exact sparsity, masks held through optimizer steps, sparse storage, bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effml.compress import FinePrune, NMPrune, config_from_dict, prune
from effml.compress.masks import relative_index_entries, relative_index_stream, sparse_bits
from effml.errors import ConfigError
from effml.zoo import lenet5, mlp


pytestmark = pytest.mark.usefixtures("one_thread")


def test_global_fine_pruning_hits_the_target_exactly():
    torch.manual_seed(0)
    m = mlp()
    res = prune(m, FinePrune(sparsity=0.9))
    kept, total = res.masks.total()
    # one threshold over 266,200 weights: round(0.9 x 266,200) = 239,580 removed (random floats: no ties)
    assert total == 784 * 300 + 300 * 100 + 100 * 10 == 266_200
    assert total - kept == 239_580
    assert res.params_after == res.params_before == 266_610  # zeros are still stored densely in the module


def test_per_layer_sparsity_and_layer_scope():
    torch.manual_seed(0)
    m = mlp()
    res = prune(m, FinePrune(sparsity=0.5, scope="layer", per_layer={"1": 0.9}))
    sp = res.masks.sparsity()
    assert sp["1"] == pytest.approx(0.9, abs=1e-5)
    assert sp["3"] == pytest.approx(0.5, abs=1e-5) and sp["5"] == pytest.approx(0.5, abs=1e-5)


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_masks_respected_after_optimizer_steps(opt):
    torch.manual_seed(0)
    m = lenet5()
    res = prune(m, FinePrune(sparsity=0.8))
    params = m.parameters()
    o = {"sgd": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3),
         "adam": lambda: torch.optim.Adam(params, lr=1e-2),
         "adamw": lambda: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)}[opt]()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(5):
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        o.step()
    for lm in res.masks.layers.values():
        w = lm.module.weight
        # the gradient hook zeroes pruned gradients, so momentum / Adam moments of those entries stay 0 and
        # decoupled weight decay scales 0 to 0: pruned weights are exactly 0, kept ones moved
        assert torch.count_nonzero(w[~lm.mask]) == 0
        assert torch.count_nonzero(w[lm.mask]) == int(lm.mask.sum())


def test_relative_index_with_fillers_hand_computed():
    mask = torch.zeros(20, dtype=torch.bool)
    mask[[0, 3, 19]] = True
    # 3-bit relative index: a gap of at most 2^3 = 8 per entry. Gaps from position -1: 1, 3, 16.
    # 16 > 8 needs one filler zero (advance 8) and then the entry itself (8): entries 1 + 1 + 2 = 4
    gaps, filler = relative_index_stream(mask, 3)
    assert gaps.tolist() == [1, 3, 8, 8] and filler.tolist() == [False, False, True, False]
    assert relative_index_entries(mask, 3) == 4
    assert sparse_bits(mask, 32, 3) == 4 * (32 + 3)


def test_fine_pruning_storage_is_the_sparse_format():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(100, 10, bias=False))
    res = prune(m, FinePrune(sparsity=0.9))
    mask = res.masks.layers["0"].mask
    # 100 of 1,000 weights kept; fc layers use 5-bit relative indices (Deep Compression); fp32 weights
    expected_bits = relative_index_entries(mask, 5) * (32 + 5)
    assert res.stored_bytes == -(-expected_bits // 8)
    assert res.dense_bytes == 4000 and res.compression > 1


def test_two_four_pattern():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 8), nn.Conv2d(4, 8, 3))
    res = prune(m, NMPrune(n=2, m=4))
    w = m[0].weight  # (8, 16): every run of 4 inputs keeps exactly its 2 largest |w|
    assert ((w.reshape(8, 4, 4) != 0).sum(-1) == 2).all()
    wc = m[1].weight.permute(0, 2, 3, 1)  # conv: groups of 4 along the input channels
    assert ((wc.reshape(-1, 4) != 0).sum(-1) == 2).all()
    assert any("sparse tensor cores" in n for n in res.notes)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "fine", "sparsity": 1.0}, r"FinePrune.sparsity must be a fraction in \[0, 1\)"),
    ({"method": "channel", "sparsity": -0.1}, r"ChannelPrune.sparsity must be a fraction in \[0, 1\)"),
    ({"method": "fine", "per_layer": {"1": 1.2}}, r"FinePrune.per_layer\['1'\]"),
    ({"method": "random"}, "unknown compression method 'random'"),
    ({"method": "n:m", "n": 4, "m": 4}, "0 < n < m"),
    ({"method": "channel", "criterion": "entropy"}, "ChannelPrune.criterion 'entropy' unknown"),
    ({"method": "fine", "n": 2}, "FinePrune .method 'fine'. has no field n"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(kwargs)


def test_unknown_layer_name_is_named():
    with pytest.raises(ConfigError, match="layer 'fc9' does not exist"):
        prune(mlp(), FinePrune(per_layer={"fc9": 0.5}))
