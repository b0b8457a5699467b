"""Huffman coding and the Deep Compression pipeline: hand-computed code lengths, stage-by-stage storage."""

import math

import pytest
import torch

from effml.compress import DeepCompressionConfig, deep_compress
from effml.compress.deep_compression import layer_storage
from effml.compress.huffman import HuffmanCode, entropy_bits
from effml.errors import ConfigError
from effml.zoo import mlp
from effml.zoo.data import load
from effml.train.classifier import train_classifier


pytestmark = pytest.mark.usefixtures("one_thread")


def test_huffman_code_lengths_hand_computed():
    symbols = [0] * 5 + [1] * 2 + [2] + [3]
    code = HuffmanCode.build(symbols)
    # merge 2+3 (1+1), then {2,3}+1 (2+2), then +0 (4+5): lengths 0:1, 1:2, 2:3, 3:3
    assert sorted((s, len(c)) for s, c in code.codes.items()) == [(0, 1), (1, 2), (2, 3), (3, 3)]
    assert code.bits(symbols) == 5 * 1 + 2 * 2 + 3 + 3 == 15
    assert code.decode(code.encode(symbols)) == symbols
    # within one bit per symbol of the entropy (Shannon's bound for a prefix code)
    assert entropy_bits(symbols) <= 15 < entropy_bits(symbols) + len(symbols)
    assert code.bits(torch.tensor(symbols)) == 15  # tensors are counted the same way


def test_one_symbol_still_costs_a_bit():
    assert HuffmanCode.build([7, 7, 7]).bits([7, 7, 7]) == 3


def test_layer_storage_hand_computed():
    w = torch.zeros(2, 10)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 0] = mask[1, 9] = True  # flat positions 0 and 19: gaps 1 and 19
    w[mask] = torch.tensor([0.5, -0.5])
    out = layer_storage(w, mask, bits=2, index_bits=3, codes=torch.tensor([1, 2]), codebook_size=3)
    # 3-bit index (max gap 8): gap 19 -> 2 fillers (8 + 8) + the entry (3): 1 + 3 = 4 entries
    assert (out["nonzero"], out["entries"], out["fillers"]) == (2, 4, 2)
    assert out["pruned_bits"] == 4 * (32 + 3)
    assert out["quantized_bits"] == 4 * (2 + 3) + 3 * 32  # codes + index, + the 3-entry fp32 codebook
    assert out["huffman_bits"] < out["quantized_bits"] + 2 * 10 * 8  # table included, still bounded


def test_config_validation():
    with pytest.raises(ConfigError, match="sparsity must be a fraction"):
        DeepCompressionConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match="fc_bits must be an integer >= 1"):
        DeepCompressionConfig(fc_bits=0)


def test_pipeline_on_digits_stage_by_stage():
    torch.manual_seed(0)
    data = load("digits", batch_size=64)
    m = mlp(in_features=64, hidden=(128, 64))
    train_classifier(m, data, epochs=4, lr=3e-3, seed=0)
    cfg = DeepCompressionConfig(sparsity=0.8, prune_steps=2, prune_epochs=1, quant_epochs=1, fc_bits=4)
    res = deep_compress(m, data, cfg)
    dense, pruned, quant, huff = (res.stage(n) for n in ("dense", "pruned", "quantized", "huffman"))
    n_params = 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10  # 17,226
    assert dense.bytes == 4 * n_params
    for name, layer in res.layers.items():
        w = m.get_submodule(name).weight
        # 20% of each layer kept; k-means shares at most 2^4 - 1 = 15 non-zero values (code 0 is zero)
        assert layer["nonzero"] == int(torch.count_nonzero(w)) == round(0.2 * w.numel())
        assert torch.unique(w[w != 0]).numel() <= 15
    biases = 128 + 64 + 10
    entries = sum(v["entries"] for v in res.layers.values())
    assert pruned.bytes == math.ceil((entries * (32 + 5) + biases * 32) / 8)
    assert quant.bytes == math.ceil((entries * (4 + 5) + 3 * 15 * 32 + biases * 32) / 8)
    assert dense.ratio == 1 < pruned.ratio < quant.ratio <= huff.ratio
    # 20% density at 37 bits instead of 32: pruning alone ~4x; then ~9 bits per entry: > 10x overall
    assert pruned.ratio > 3.5 and huff.ratio > 10
    assert quant.accuracy > 0.8 and abs(quant.accuracy - huff.accuracy) == 0  # Huffman is lossless
    assert res.to_dict()["stages"][3]["name"] == "huffman"
