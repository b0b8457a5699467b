"""The counter as a whole: module attribution, reuse, unsupported ops, memory, devices, errors."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import effml
from effml.errors import ModelError
from effml.zoo import ZOO


class Twice(nn.Module):
    """One Linear applied twice: counted per call, its weights once."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


def test_module_used_twice_counts_per_call_and_weights_once():
    p = effml.profile(Twice(), torch.randn(2, 4))
    assert p.params == 4 * 4 + 4  # 20, not 40
    fc = p.by_module()["fc"]
    assert fc.forward_calls == 2
    assert fc.macs == 2 * (2 * 4 * 4)  # two calls x 32 MACs
    assert fc.params == 20
    assert p.by_module()[""].flops == p.total().flops == 2 * (2 * 32 + 8) + 8  # + relu on 8 elements


def test_by_module_is_hierarchical():
    p = effml.profile(ZOO["lenet5"].build(), torch.randn(1, 1, 28, 28))
    rows = p.by_module()
    assert rows["features"].flops == sum(rows[f"features.{i}"].flops for i in range(6))
    assert rows[""].flops == rows["features"].flops + rows["classifier"].flops
    assert rows["features.0"].macs == 28 * 28 * 6 * 25  # conv1: 117600 MACs
    assert set(p.by_module(depth=1)) == {"", "features", "classifier"}


def test_unsupported_op_is_reported_not_zeroed():
    class Kth(nn.Module):
        def forward(self, x):
            return torch.kthvalue(x * 2, 2).values

    p = effml.profile(Kth(), torch.randn(3, 5))
    assert p.unsupported == {"aten.kthvalue": 1}
    assert p.is_lower_bound and p.to_dict()["lower_bound"]
    assert p.total().flops == 15  # the mul is still counted; kthvalue's FLOPs are unknown
    assert p.by_op()["aten.kthvalue"].unsupported_calls == 1
    assert p.by_op()["aten.kthvalue"].bytes_read == 15 * 4  # its bytes are known and counted


def test_sort_is_n_log2_n_comparisons_per_row():
    class Sorts(nn.Module):
        def forward(self, x):
            return torch.sort(x, dim=1).values

    p = effml.profile(Sorts(), torch.randn(3, 5))
    assert p.unsupported == {} and p.by_op()["aten.sort"].flops == 15 * 3  # 3 rows x 5 x ceil(log2 5) = 3


def test_weight_memory_per_dtype_the_seeds_example():
    with torch.device("meta"):
        big = nn.Linear(70_000, 100_000, bias=False)  # 7e9 parameters, no memory allocated
    p = effml.profile(big, torch.empty(1, 70_000, device="meta"))
    assert p.params == 7_000_000_000
    assert p.memory("fp16") == 14_000_000_000  # 7e9 x 2 B = 14.0 GB
    assert p.memory("fp32") == 28e9 and p.memory("int8") == 7e9 and p.memory("int4") == 3.5e9


def test_peak_activation_of_an_mlp():
    mlp = ZOO["mlp"].build()
    p = effml.profile(mlp, torch.randn(2, 1, 28, 28))
    # Inference frees each output once the next layer consumed it; the peak is the first Linear's output
    # (2 x 300 fp32) alive while ReLU writes its own: 2 x 2·300·4 B = 4800 B.
    assert p.peak_activation_bytes == 2 * (2 * 300 * 4)


def test_backward_keeps_saved_activations_alive():
    mlp = ZOO["mlp"].build()
    x = torch.randn(2, 1, 28, 28)
    fwd, train = effml.profile(mlp, x), effml.profile(mlp, x, backward=True)
    # training keeps activations for backward and writes gradients as large as the weights (266610 fp32)
    assert train.peak_activation_bytes > 266_610 * 4 > fwd.peak_activation_bytes
    assert all(p.grad is None for p in mlp.parameters())  # the model's grads are left as they were


@pytest.mark.parametrize("name", sorted(ZOO))
def test_meta_and_cpu_agree(name):
    entry = ZOO[name]
    cpu = effml.profile(entry.build().eval(), *entry.example_inputs(2))
    meta = effml.profile(entry.build().to("meta").eval(), *entry.example_inputs(2, device="meta"))
    assert (meta.total().flops, meta.total().macs) == (cpu.total().flops, cpu.total().macs)
    if name == "tiny_gpt":
        # The CPU flash kernel returns its output in (B, T, H, hd) memory order, so the transpose+reshape
        # after attention is a free view; meta's math path returns (B, H, T, hd) and needs one copy
        # (aten.clone) per layer: 2·64·128 fp32 read and written, 4 layers. Bytes follow the kernels.
        extra = meta.by_op()["aten.clone"]
        assert extra.calls == 4 and extra.bytes == 4 * 2 * (2 * 64 * 128 * 4)
        assert meta.total().bytes - cpu.total().bytes == extra.bytes
    else:
        assert meta.total().to_dict() == cpu.total().to_dict()
    # Inference BatchNorm also returns two saved-statistics tensors: empty on CPU, (C,) fp32 on meta. They
    # are real allocations of each kernel, so the peaks may differ by up to 2·C·4 bytes for the widest BN.
    widest_bn = max([m.num_features for m in entry.build().modules() if isinstance(m, nn.BatchNorm2d)] or [0])
    assert 0 <= meta.peak_activation_bytes - cpu.peak_activation_bytes <= 2 * widest_bn * 4


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("backward", [False, True])
def test_agrees_with_torch_flop_counter(name, backward):
    """FlopCounterMode counts matmul/conv/attention FLOPs only (2·MACs, no bias, no elementwise). On the
    same ops the counts are equal; the documented difference is attention, which FlopCounterMode counts
    as 0 on CPU (its flash-for-cpu kernel has no formula) and as the full L·S square on meta."""
    entry = ZOO[name]
    model, x = entry.build().eval(), entry.example_inputs(2)
    with torch.set_grad_enabled(backward), FlopCounterMode(display=False) as fc:
        out = model(*x)
        if backward:
            out.backward(torch.ones_like(out))
    model.zero_grad(set_to_none=True)
    p = effml.profile(model, *x, backward=backward)
    cats = p.by_category()
    ours = sum(2 * cats[c].macs for c in ("matmul", "conv") if c in cats)
    assert fc.get_total_flops() == ours


def test_model_error_names_the_module():
    # LeNet-5 takes 1 channel: the first conv is where a 3-channel image fails
    with pytest.raises(ModelError, match=r"module 'features.0' \(Conv2d\) raised RuntimeError .*\(1, 3, 28, 28\)"):
        effml.profile(ZOO["lenet5"].build(), torch.randn(1, 3, 28, 28))


def test_backward_needs_a_differentiable_output():
    net = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ModelError, match="requires grad"):
        effml.profile(net, torch.randn(1, 2), backward=True)


def test_tiny_gpt_causal_attention_closed_form():
    cfg = ZOO["tiny_gpt"].build().cfg
    T, d, L, V = 64, cfg.n_embd, cfg.n_layer, cfg.vocab_size
    p = effml.profile(ZOO["tiny_gpt"].build(), torch.zeros(1, T, dtype=torch.long))
    attn = p.by_op()["aten.scaled_dot_product_attention"]
    assert attn.macs == L * d * T * (T + 1)  # per layer: heads·hd = d, pairs T(T+1)/2, two products
    linear_macs = T * (L * (3 * d * d + d * d + 8 * d * d) + d * V)  # qkv, proj, mlp (4x), lm_head
    assert p.by_category()["matmul"].macs == linear_macs


def test_inference_mode_decomposes_composite_ops():
    """Under torch.inference_mode conv2d/batch_norm arrive undecomposed; they are decomposed and counted."""
    model = ZOO["resnet"].build().eval()
    x = torch.randn(2, 3, 32, 32)
    plain = effml.profile(model, x)
    with torch.inference_mode():
        inf = effml.profile(model, x)
    assert inf.unsupported == {}
    assert (inf.total().flops, inf.total().macs) == (plain.total().flops, plain.total().macs)


def test_index_copy_moves_only_the_source():
    class Append(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("cache", torch.zeros(1, 4, 1024, 16))  # a pre-allocated KV cache

        def forward(self, k):
            return self.cache.index_copy_(2, torch.tensor([5]), k)

    s = effml.profile(Append(), torch.randn(1, 4, 1, 16)).by_op()["aten.index_copy_"]
    assert s.bytes_written == 4 * 16 * 4  # one position of 4 heads x 16 fp32, not the 256 kB cache
    assert s.bytes_read == 4 * 16 * 4 + 8  # the new row and one int64 index
