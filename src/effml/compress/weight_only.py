"""Weight-only quantization: int8 (per-channel, symmetric) or int4 (per-group, asymmetric) codes, fp activations.

`WeightOnlyLinear` keeps the codes and runs `torch._weight_int8pack_mm` / `torch.ops.aten._weight_int4pack_mm_for_cpu`,
or dequantizes and calls F.linear (kernel="dequant"). `weight_only(model, ...)` swaps every nn.Linear in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effml.compress.qlinear import QSpec, dequantize, qparams, quantize
from effml.errors import ConfigError

WEIGHT_KERNELS = ("packed", "dequant")


class WeightOnlyLinear(nn.Module):
    """y = x W^T + b with W stored as int8 (per-channel) or int4 (per-group) codes; activations stay fp32."""

    def __init__(self, lin: nn.Linear, bits: int = 8, group_size: int = 128, kernel: str = "packed",
                 name: str = "linear"):
        super().__init__()
        if bits not in (4, 8):
            raise ConfigError(f"{name}: weight-only quantization supports 4 or 8 bits, got {bits}")
        if kernel not in WEIGHT_KERNELS:
            raise ConfigError(f"weight-only kernel {kernel!r} unknown; expected one of {WEIGHT_KERNELS}")
        self.in_features, self.out_features, self.bits, self.kernel = lin.in_features, lin.out_features, bits, kernel
        w = lin.weight.detach().float()  # (out, in)
        if bits == 8:
            self.spec = QSpec(8, True, "channel")
        else:
            if self.in_features % group_size:
                raise ConfigError(f"{name}: in_features {self.in_features} is not a multiple of group_size "
                                  f"{group_size}")
            self.spec = QSpec(4, False, "group", group_size)
        scale, zero = qparams(w, self.spec, name)  # (out, groups, 1)
        codes = quantize(w, self.spec, scale, zero, name)  # (out, in) int32
        self.register_buffer("codes", codes.to(torch.int8 if bits == 8 else torch.uint8))
        self.register_buffer("scale", scale.reshape(self.out_features, -1))  # (out, groups)
        self.register_buffer("zero", zero.reshape(self.out_features, -1))
        self.bias = None if lin.bias is None else nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        self._packed = None

    def dequantized(self) -> torch.Tensor:
        return dequantize(self.codes.to(torch.int32), self.scale[..., None], self.zero[..., None], self.spec)

    def _pack4(self):
        if self._packed is None:
            # kernel convention: w = (q - 8) * scale + z_float, so z_float = (8 - zero) * scale
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.codes.to(torch.int32), 2)
            zf = (8 - self.zero) * self.scale  # (out, groups)
            sz = torch.stack([self.scale, zf], -1).transpose(0, 1).contiguous()  # (groups, out, 2)
            self._packed = (packed, sz)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in)
        if self.kernel == "dequant":
            return F.linear(x, self.dequantized(), self.bias)
        x2 = x.reshape(-1, self.in_features).float().contiguous()  # (N, in); the kernels need contiguous rows
        if self.bits == 8:
            y = torch._weight_int8pack_mm(x2, self.codes, self.scale.reshape(-1))
        else:
            packed, sz = self._pack4()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, self.spec.group_size, sz)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)  # (..., out)

    def storage_bits(self) -> int:
        groups = self.scale.numel()
        return self.codes.numel() * self.bits + groups * 32 * (1 if self.bits == 8 else 2) + \
            (0 if self.bias is None else self.bias.numel() * 32)

    def extra_repr(self) -> str:
        g = f", group_size={self.spec.group_size}" if self.bits == 4 else ""
        return f"in={self.in_features}, out={self.out_features}, int{self.bits}{g}, kernel={self.kernel}"


def weight_only(model: nn.Module, bits: int, group_size: int, kernel: str, skip: tuple[str, ...] = ()
                ) -> tuple[nn.Module, list[str], list[str]]:
    """Replace every nn.Linear (not in skip) by a WeightOnlyLinear, in place: (model, names, notes).

    int4 needs in_features to be a multiple of group_size: other layers stay fp32 and the notes name them.
    """
    names, left, slow = [], [], []
    for n in [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in skip]:
        parent, _, attr = n.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        lin = getattr(owner, attr)
        if bits == 4 and lin.in_features % group_size:
            left.append(f"{n} (in_features {lin.in_features})")
            continue
        k = kernel
        if bits == 4 and kernel == "packed" and (lin.out_features % 16 or lin.in_features % 32):
            k = "dequant"  # the int4 CPU kernel needs out % 16 == 0 and in % 32 == 0
            slow.append(n)
        setattr(owner, attr, WeightOnlyLinear(lin, bits, group_size, k, n))
        names.append(n)
    notes = [f"left in fp32, in_features not a multiple of group_size={group_size}: {', '.join(left)}"] if left else []
    if slow:
        notes.append(f"int4 kernel needs out % 16 == 0 and in % 32 == 0; dequantize + fp32 GEMM for {', '.join(slow)}")
    return model, names, notes
