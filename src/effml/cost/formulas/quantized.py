"""Quantized kernels (torch.ao int8: dynamic and static), whose weights hide in packed parameters.

A packed weight is not a tensor argument, so the generic byte rule would miss it: these formulas add the
int8 weight (and fp32 bias) bytes they unpack. MACs follow the float op's formula; the op computes in int8.
(Re)quantization costs 5 FLOPs per element (divide by scale, round, add zero point, clamp to the range),
dequantization 2 ((q - zero point) x scale).
"""

from __future__ import annotations

import torch

from effml.cost.formulas.linalg import conv_macs
from effml.cost.registry import OpCost, bytes_of, first_tensor, formula, numel, out_numel, prod

qops = torch.ops.quantized
aten = torch.ops.aten
QUANTIZE, DEQUANTIZE = 5, 2


def unpack(packed) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a packed linear or conv parameter object."""
    inner = getattr(packed, "_packed_params", packed)  # torch.ao LinearPackedParams wraps the ScriptObject
    weight, bias = inner.unpack()[:2]
    return weight, bias


def _weight_bytes(weight: torch.Tensor, bias: torch.Tensor | None) -> int:
    return weight.numel() * weight.element_size() + (bias.numel() * bias.element_size() if bias is not None else 0)


def _linear(relu: bool):
    def cost(args, kwargs, out):
        x, packed = args[0], args[1]
        weight, bias = unpack(packed)
        o = first_tensor(out)
        macs = o.numel() * x.shape[-1]  # (..., in) @ (in, out)
        extra = o.numel() * (int(bias is not None) + int(relu))
        return OpCost(2 * macs + extra, macs, bytes_read=bytes_of(x) + _weight_bytes(weight, bias),
                      bytes_written=bytes_of(o), dtype="int8")
    return cost


def _conv(relu: bool):
    def cost(args, kwargs, out):
        x, packed = args[0], args[1]
        weight, bias = unpack(packed)
        o = first_tensor(out)
        macs = conv_macs(x.shape, weight.shape, o.shape, False, packed.groups())
        extra = o.numel() * (int(bias is not None) + int(relu))
        return OpCost(2 * macs + extra, macs, bytes_read=bytes_of(x) + _weight_bytes(weight, bias),
                      bytes_written=bytes_of(o), dtype="int8")
    return cost


for _name, _relu in (("linear", False), ("linear_relu", True), ("linear_dynamic", False),
                     ("linear_relu_dynamic", True)):
    formula(getattr(qops, _name), category="matmul")(_linear(_relu))
for _name, _relu in (("conv1d", False), ("conv2d", False), ("conv3d", False), ("conv1d_relu", True),
                     ("conv2d_relu", True), ("conv3d_relu", True)):
    formula(getattr(qops, _name), category="conv")(_conv(_relu))


@formula(aten.quantize_per_tensor, aten.quantize_per_channel, aten.quantize_per_tensor_dynamic,
         category="quantize")
def _quantize(args, kwargs, out):
    return OpCost(QUANTIZE * out_numel(out), dtype="int8")


@formula(aten.dequantize, category="quantize")
def _dequantize(args, kwargs, out):
    return OpCost(DEQUANTIZE * numel(first_tensor(args)), dtype="int8")


@formula(aten.quantized_max_pool1d, aten.quantized_max_pool2d, category="pool")
def _qmax_pool(args, kwargs, out):
    k = args[1]  # kernel_size: int[1] or int[2]
    spatial = first_tensor(out).dim() - 2 if first_tensor(out).dim() > 2 else 1
    ks = list(k) if not isinstance(k, int) else [k]
    window = prod(ks * spatial if len(ks) == 1 else ks)
    return OpCost(window * out_numel(out), dtype="int8")


for _name, _k in (("add", 1), ("mul", 1), ("add_scalar", 1), ("mul_scalar", 1), ("add_relu", 2), ("mul_relu", 2),
                  ("relu6", 2), ("hardswish", 5), ("sigmoid", 4), ("layer_norm", 7), ("batch_norm2d", 2),
                  ("batch_norm2d_relu", 3)):
    formula(getattr(qops, _name), category="elementwise")(lambda a, kw, out, k=_k: OpCost(k * out_numel(out),
                                                                                            dtype="int8"))
formula(qops.cat, category="memory")(lambda a, kw, out: OpCost(0, dtype="int8"))
formula(aten.int_repr, aten.q_scale, aten.q_zero_point, aten.q_per_channel_scales,
        aten.q_per_channel_zero_points, category="view")(lambda a, kw, out: OpCost(0, 0, 0, 0))
