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
    # convs 9·(3·64 + 64·128 + 128·256 + 256·256 + 256·512 + 3·512·512) = 9,217,728 (no bias),
    # BN γ and β 2·2752 = 5,504, Linear 512·10 + 10 = 5,130
    widths = [3, 64, 128, 256, 256, 512, 512, 512, 512]
    conv = sum(9 * a * b for a, b in zip(widths, widths[1:]))
    bn = 2 * sum(widths[1:])
    assert conv + bn + 512 * 10 + 10 == 9_228_362


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
