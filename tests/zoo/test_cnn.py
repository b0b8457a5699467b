"""Zoo models: parameter counts and MACs against their published or hand-derived values."""

import pytest
import torch

import effml
from effml.zoo import ZOO, GPTConfig, vgg


@pytest.mark.parametrize("name, params", [
    ("mlp", 266_610),  # LeNet-300-100: 784·300+300 + 300·100+100 + 100·10+10 (Han et al. 2016)
    ("lenet5", 61_706),  # 156 + 2416 + 48120 + 10164 + 850
    ("vgg", 9_228_362),  # lab-1 VGG: derived in test_vgg_param_breakdown
    ("resnet", 272_474),  # ResNet-20 class: 0.27M (He et al. 2016, table 6)
])
def test_param_counts(name, params):
    model = ZOO[name].build()
    assert sum(p.numel() for p in model.parameters()) == params


def test_vgg_param_breakdown():
    # The counter's per-module parameters and MACs of the zoo VGG (lab-1 layout: 8 conv3x3-BN-ReLU, max-pool
    # after convs 2, 4, 6, 8) against the hand derivation: conv i (C_in a, C_out b, no bias) has 9·a·b
    # parameters and H·W·9·a·b MACs at its output size H = W = 32, 32, 16, 16, 8, 8, 4, 4; each BN has γ and β
    # (2·b parameters, no MACs: inference BN is 2 FLOPs per element, no multiply-accumulate); the classifier
    # 512·10 + 10 parameters and 5,120 MACs. Totals: convs 9,217,728 + BN 5,504 + Linear 5,130 = 9,228,362.
    widths = [3, 64, 128, 256, 256, 512, 512, 512, 512]
    sizes = [32, 32, 16, 16, 8, 8, 4, 4]
    model = vgg().eval()
    p = effml.profile(model, torch.randn(1, 3, 32, 32))
    by = p.by_module()
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == len(norms) == 8
    for name, bn, a, b, hw in zip(convs, norms, widths, widths[1:], sizes):
        assert (by[name].params, by[name].macs) == (9 * a * b, hw * hw * 9 * a * b), name
        assert (by[bn].params, by[bn].macs) == (2 * b, 0), bn
    assert (by["classifier"].params, by["classifier"].macs) == (512 * 10 + 10, 512 * 10)
    assert sum(by[n].params for n in convs) == 9_217_728 and sum(by[n].params for n in norms) == 5_504
    assert by[""].params == 9_228_362


def test_vgg_macs_match_the_lab_reference():
    # MIT 6.5940 lab 1: 606M MACs at 3x32x32. Per conv H·W·C_in·C_out·9:
    # 32²(3·64 + 64·128) + 16²(128·256 + 256²) + 8²(256·512 + 512²) + 4²(2·512²), then 512·10
    expected = 9 * (1024 * (3 * 64 + 64 * 128) + 256 * (128 * 256 + 256 * 256)
                    + 64 * (256 * 512 + 512 * 512) + 16 * 2 * 512 * 512) + 5120
    p = effml.profile(vgg().eval(), torch.randn(1, 3, 32, 32))
    assert p.total().macs == expected == 605_754_368


def test_half_width_vgg_has_about_a_quarter_of_the_macs():
    full = effml.profile(vgg().eval(), torch.randn(1, 3, 32, 32)).total().macs
    half = effml.profile(vgg(width=0.5).eval(), torch.randn(1, 3, 32, 32)).total().macs
    # every conv but the first scales with both widths (1/4); the first with C_out only (1/2)
    first = 9 * 1024 * 3 * 64
    assert half == (full - first - 5120) // 4 + first // 2 + 2560


@pytest.mark.parametrize("name", sorted(ZOO))
def test_example_inputs_run(name):
    entry = ZOO[name]
    out = entry.build().eval()(*entry.example_inputs(batch=3))
    assert out.shape[0] == 3


def test_gpt_config_validation_and_param_formula():
    with pytest.raises(effml.EffmlError, match="n_embd=130 is not divisible by n_head=4"):
        GPTConfig(n_embd=130)
    cfg = GPTConfig()
    model = ZOO["tiny_gpt"].build()
    total = sum(p.numel() for p in model.parameters())
    assert total == cfg.non_embedding_params() + cfg.vocab_size * cfg.n_embd + cfg.block_size * cfg.n_embd
    assert cfg.non_embedding_params() - 12 * cfg.n_layer * cfg.n_embd**2 == cfg.n_layer * 13 * 128 + 2 * 128
