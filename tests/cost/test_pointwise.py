"""Normalisation, activations, softmax, pooling and embedding against hand-computed counts."""

import pytest
import torch
from torch import nn

import effml
from effml.cost.formulas.pointwise import adaptive_window_sum
from effml.zoo.cnn import BasicBlock


def test_layer_norm_with_affine():
    p = effml.profile(nn.LayerNorm(16), torch.randn(2, 5, 16))
    # 160 elements x (5 normalise + 1 gamma + 1 beta) = 1120
    assert p.by_op()["aten.native_layer_norm"].flops == 160 * 7
    assert p.total().macs == 0


def test_group_norm_and_batch_norm_train_vs_eval():
    x = torch.randn(2, 4, 3, 3)  # 72 elements
    assert effml.profile(nn.GroupNorm(2, 4), x).total().flops == 72 * 7
    bn = nn.BatchNorm2d(4)
    train = effml.profile(bn.train(), x)
    assert train.by_op()["aten.native_batch_norm"].flops == 72 * 7  # batch statistics + affine
    assert train.total().flops == 72 * 7 + 1  # + num_batches_tracked += 1
    assert effml.profile(bn.eval(), x).total().flops == 72 * 2  # folded per channel: a·x + b


def test_residual_block():
    block = BasicBlock(4, 4).eval()
    p = effml.profile(block, torch.randn(1, 4, 8, 8))
    conv = 8 * 8 * 4 * 4 * 9  # per 3x3 conv: H·W·C_out·C_in·k² = 9216 MACs
    assert p.total().macs == 2 * conv
    elems = 4 * 8 * 8  # 256 activations per tensor
    # 2 convs (2·MACs) + 2 eval BNs (2/elem) + 2 ReLUs (1/elem) + the residual add (1/elem) = 38656
    assert p.total().flops == 2 * 2 * conv + 2 * 2 * elems + 2 * elems + elems
    assert p.by_op()["aten.add"].flops == elems


@pytest.mark.parametrize("act, per_elem", [
    (nn.ReLU(), 1), (nn.GELU(), 5), (nn.GELU(approximate="tanh"), 9), (nn.SiLU(), 5), (nn.Sigmoid(), 4),
    (nn.Tanh(), 1), (nn.Hardswish(), 5), (nn.ReLU6(), 2), (nn.Softmax(dim=-1), 5),
])
def test_activation_counts_per_element(act, per_elem):
    p = effml.profile(act, torch.randn(3, 7))
    assert p.total().flops == 21 * per_elem
    assert p.unsupported == {}


def test_max_and_avg_pool():
    x = torch.randn(1, 2, 8, 8)
    # 2x2 windows, out 2·4·4 = 32 elements, each compares (or adds) 4 inputs
    assert effml.profile(nn.MaxPool2d(2), x).total().flops == 32 * 4
    assert effml.profile(nn.AvgPool2d(2), x).total().flops == 32 * 4
    # 3x3 stride-2 padded: out 4x4, 9 comparisons each
    assert effml.profile(nn.MaxPool2d(3, 2, 1), x).total().flops == 2 * 16 * 9


def test_adaptive_avg_pool_windows():
    assert adaptive_window_sum(8, 1) == 8  # one window over everything
    assert adaptive_window_sum(7, 3) == 3 + 3 + 3  # windows [0,3) [2,5) [4,7) overlap
    p = effml.profile(nn.AdaptiveAvgPool2d(1), torch.randn(2, 3, 4, 4))
    assert p.total().flops == 2 * 3 * 16  # every input added once


def test_embedding_reads_only_the_gathered_rows():
    emb = nn.Embedding(1000, 8)
    idx = torch.tensor([[1, 2, 3]])
    s = effml.profile(emb, idx).by_op()["aten.embedding"]
    assert s.flops == 0
    assert s.bytes_read == 3 * 8 + 3 * 8 * 4  # three int64 ids + three fp32 rows, not the 32 kB table
    assert s.bytes_written == 3 * 8 * 4


def test_broadcast_operand_is_read_once():
    class AddBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.zeros(16))

        def forward(self, x):
            return x + self.b.expand_as(x)

    s = effml.profile(AddBias(), torch.randn(10, 16)).by_op()["aten.add"]
    assert s.flops == 160
    assert s.bytes_read == (160 + 16) * 4  # the stride-0 expanded bias addresses 16 distinct floats
