"""Channel pruning physically removes channels: residual groups, hand-derived shapes, exact equivalence when the
removed channels carried nothing, transformer heads and MLPs, VGG MACs, errors."""

import pytest
import torch
from torch import nn

from effml.compress import ChannelPrune, channel_groups, prune
from effml.cost.counter import profile
from effml.errors import ConfigError
from effml.zoo import tiny_gpt, vgg
from effml.zoo.cnn import BasicBlock


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b1 = BasicBlock(8, 8)  # identity shortcut: its output joins the stem's channels
        self.b2 = BasicBlock(8, 16, stride=2)  # 1x1 projection shortcut
        self.fc = nn.Linear(16, 10)

    def forward(self, x):  # (B, 3, 16, 16)
        x = self.b2(self.b1(self.stem(x)))  # (B, 16, 8, 8)
        return self.fc(x.mean(dim=(2, 3)))


def _silence(model, group, channels):
    """Zero every slice of `channels` in the group (BN stats too): those channels then carry exactly 0."""
    with torch.no_grad():
        for mem in group.members:
            t = getattr(model.get_submodule(mem.module), mem.param)
            if mem.param != "running_var":
                t.index_fill_(mem.dim, mem.indices(torch.tensor(channels)), 0.0)


def test_residual_groups_and_hand_derived_shapes():
    torch.manual_seed(0)
    m = TinyResNet().eval()
    x = torch.randn(2, 3, 16, 16)
    groups = {g.name: g for g in channel_groups(m, (x,))}
    # 4 groups: stem + b1's output (joined by b1's identity add; consumed by b2.conv1 and b2's shortcut),
    # b1's inner conv, b2's inner conv, b2's output + its projection (joined by b2's add; consumed by fc)
    assert sorted(groups) == ["b1.conv1", "b2.conv1", "b2.conv2", "stem.0"]
    assert set(groups["stem.0"].producers()) == {"stem.0", "b1.conv2"}
    assert set(groups["b2.conv2"].producers()) == {"b2.conv2", "b2.shortcut.0"}
    prune(m, ChannelPrune(sparsity=0.5), example_inputs=(x,))
    # halving every group: 8 -> 4 (stem/b1), 8 -> 4 (b1 inner), 16 -> 8 (b2 inner), 16 -> 8 (b2 out)
    assert m.stem[0].weight.shape == (4, 3, 3, 3) and m.stem[1].num_features == 4
    assert m.b1.conv1.weight.shape == (4, 4, 3, 3) and m.b1.conv2.weight.shape == (4, 4, 3, 3)
    assert m.b2.conv1.weight.shape == (8, 4, 3, 3) and m.b2.conv2.weight.shape == (8, 8, 3, 3)
    assert m.b2.shortcut[0].weight.shape == (8, 4, 1, 1) and m.b2.shortcut[1].running_mean.shape == (8,)
    assert m.fc.weight.shape == (10, 8) and m.fc.in_features == 8
    assert m(x).shape == (2, 10)


def test_pruning_silent_channels_changes_nothing():
    torch.manual_seed(0)
    m = TinyResNet().eval()
    x = torch.randn(2, 3, 16, 16)
    for name, chans in [("stem.0", [1, 5, 6, 7]), ("b1.conv1", [0, 2, 3, 4]), ("b2.conv2", list(range(8)))]:
        g = next(g for g in channel_groups(m, (x,)) if g.name == name)
        _silence(m, g, chans)
    ref = m(x)
    # the silenced channels have L1 importance 0, so they are the ones removed; they carried exact zeros
    prune(m, ChannelPrune(sparsity=0.5, exclude=("b2.conv1",)), example_inputs=(x,))
    assert m.b2.conv1.weight.shape == (16, 4, 3, 3)  # excluded group keeps its 16 channels
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)


def test_vgg_macs_fall_to_a_quarter():
    m = vgg().eval()
    x = torch.randn(1, 3, 32, 32)
    before = profile(m, x).total().macs
    prune(m, ChannelPrune(sparsity=0.5), example_inputs=(x,))
    after = profile(m, x).total().macs
    # MIT 6.5940 lab 1 VGG: 605,754,368 MACs. Halving every conv's output channels halves both c_in and c_out
    # of the 7 inner convs (x 1/4); the first conv keeps its 3 input channels (x 1/2) and the classifier
    # 512 -> 256 inputs. First conv: 64*3*9*1024 = 1,769,472 MACs; classifier 5,120.
    first, cls = 1_769_472, 5_120
    assert before == 605_754_368
    assert after == (before - first - cls) // 4 + first // 2 + cls // 2


def test_gpt_heads_and_mlp_are_removed_whole():
    torch.manual_seed(0)
    m = tiny_gpt().eval()
    idx = torch.randint(0, 65, (2, 16))
    groups = {g.name: g for g in channel_groups(m, (idx,))}
    for b in range(4):  # silence heads 1, 3 and the odd MLP units of every block
        _silence(m, groups[f"blocks.{b}.attn"], [1, 3])
        _silence(m, groups[f"blocks.{b}.mlp"], list(range(1, 512, 2)))
    ref = m(idx)
    prune(m, ChannelPrune(sparsity=0.5))
    attn = m.blocks[0].attn
    # d=128, 4 heads of 32: 2 heads left -> qkv (3*2*32, 128), proj (128, 64); MLP 512 -> 256
    assert (attn.n_head, attn.head_dim) == (2, 32)
    assert attn.qkv.weight.shape == (192, 128) and attn.proj.weight.shape == (128, 64)
    assert m.blocks[0].mlp[0].weight.shape == (256, 128) and m.blocks[0].mlp[2].weight.shape == (128, 256)
    torch.testing.assert_close(m(idx), ref, atol=1e-5, rtol=1e-5)


def test_bert_heads_and_intermediate():
    import transformers  # a dependency of effml: a broken install fails here, never skips
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    m = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 50, (2, 8))
    groups = {g.name: g for g in channel_groups(m, (ids,))}
    for i in range(2):
        _silence(m, groups[f"encoder.layer.{i}.attention"], [0, 2])
        _silence(m, groups[f"encoder.layer.{i}.intermediate"], list(range(32)))
    with torch.no_grad():  # GELU(0) = 0, so silenced intermediate units contribute exactly 0
        ref = m(input_ids=ids).last_hidden_state
        prune(m, ChannelPrune(sparsity=0.5))
        out = m(input_ids=ids).last_hidden_state
    sa = m.encoder.layer[0].attention.self
    # 4 heads of 8 -> 2: q/k/v (16, 32), output projection (32, 16); intermediate 64 -> 32
    assert sa.num_attention_heads == 2 and sa.query.weight.shape == (16, 32)
    assert m.encoder.layer[0].attention.output.dense.weight.shape == (32, 16)
    assert m.encoder.layer[0].intermediate.dense.weight.shape == (32, 32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_taylor_needs_data_and_removing_everything_is_refused():
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(2, 4)
    with pytest.raises(ConfigError, match="needs data"):
        prune(m, ChannelPrune(criterion="taylor"), example_inputs=(x,))
    # round(0.9 x 3) = 3 of 3 hidden units
    with pytest.raises(ConfigError, match="would remove every one of its 3 channels"):
        prune(m, ChannelPrune(per_layer={"0": 0.9}), example_inputs=(x,))
    with pytest.raises(ConfigError, match="'9' does not exist"):
        prune(m, ChannelPrune(per_layer={"9": 0.5}), example_inputs=(x,))


def test_taylor_criterion_runs_on_batches():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(2)]
    res = prune(m, ChannelPrune(sparsity=0.25, criterion="taylor"), data=data)
    assert m[0].out_features == 6 and m[2].in_features == 6 and res.layers["0"]["kept"] == 6
    assert all(p.grad is None for p in m.parameters())  # the gradients used for scoring are cleared
