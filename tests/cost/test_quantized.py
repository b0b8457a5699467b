"""torch.ao int8 kernels: counted like their float ops, weights found inside packed parameters."""

import torch
from torch import nn

import effml
from effml.zoo import lenet5


def _static_int8(model, x):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (x,))
    with torch.no_grad():
        prepared(x)  # calibrate
    return convert_fx(prepared)


def test_dynamic_int8_linear():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    q = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    p = effml.profile(q, torch.randn(4, 64))
    assert p.unsupported == {}
    s = p.by_op()["quantized.linear_dynamic"]
    assert s.macs == 4 * (64 * 32 + 32 * 8)  # as the float Linears: 9216
    # reads x (fp32) and the int8 weights (1 B each) + fp32 biases; the packed weights are found by unpacking
    assert s.bytes_read == 4 * 64 * 4 + 64 * 32 + 32 * 4 + 4 * 32 * 4 + 32 * 8 + 8 * 4
    assert {e.dtype for e in p.events if e.op == "quantized.linear_dynamic"} == {"int8"}
    assert p.params == 64 * 32 + 32 + 32 * 8 + 8  # 2344: packed weights count as parameters


def test_static_int8_cnn_keeps_the_macs():
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    x = torch.randn(2, 1, 28, 28)
    model = lenet5().eval()
    fp32 = effml.profile(model, x)
    p = effml.profile(_static_int8(model, x), x)
    assert p.unsupported == {}
    assert p.total().macs == fp32.total().macs  # same convolutions and matmuls, now in int8
    assert p.params == 61_706
    assert p.param_bytes < fp32.param_bytes / 3.5  # int8 weights (+ fp32 biases): ≈ 4x smaller
    conv = p.by_op()["quantized.conv2d_relu"]
    assert conv.macs == 2 * (28 * 28 * 6 * 25 + 10 * 10 * 16 * 6 * 25)  # conv1 + conv2, batch 2
