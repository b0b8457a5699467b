"""Real integer kernels on the CPU: PyTorch's int8 (dynamic, static PTQ) and int8/int4 weight-only Linear.

- dynamic: `torch.ao.quantization.quantize_dynamic` swaps nn.Linear for a module with qint8 weights (per
  tensor) whose input is quantized per call; the GEMM is fbgemm/oneDNN int8 (the `x86` engine here).
- static: FX graph mode PTQ (`prepare_fx` with the engine's default qconfig mapping: per-channel weights,
  histogram activation observers), calibration batches, `convert_fx`. Conv+BN(+ReLU) are fused. A model FX
  cannot trace falls back to dynamic int8 of its Linear layers, and every weight layer left in float
  (no int8 kernel for it) is listed in the notes: nothing is dropped silently.
- weight-only: `WeightOnlyLinear` keeps int8 (per-channel, symmetric) or int4 (per-group, asymmetric) codes
  and runs `torch._weight_int8pack_mm` / `torch.ops.aten._weight_int4pack_mm_for_cpu`, or dequantizes to
  fp32 and calls F.linear (kernel="dequant").
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from effml.compress.qlinear import QSpec, dequantize, qparams, quantize
from effml.errors import ConfigError

ENGINE_PREFERENCE = ("x86", "fbgemm", "onednn", "qnnpack")
WEIGHT_KERNELS = ("packed", "dequant")


def pick_engine() -> str:
    """The quantized engine used: the first of ENGINE_PREFERENCE this build supports (and set it)."""
    supported = torch.backends.quantized.supported_engines
    for e in ENGINE_PREFERENCE:
        if e in supported:
            torch.backends.quantized.engine = e
            return e
    raise ConfigError(f"this PyTorch build has no int8 CPU engine (supported: {supported})")


def _quiet():
    w = warnings.catch_warnings()
    w.__enter__()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    return w


def float_layers(model: nn.Module) -> list[str]:
    """Weight layers still running in float (exact nn.Linear / nn.ConvNd, not their quantized subclasses)."""
    return [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)]


def quantize_linear_dynamic(lin: nn.Linear, per_channel: bool = True) -> nn.Module:
    """One nn.Linear -> PyTorch's dynamic int8 Linear (qint8 weights per output channel or per tensor)."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    w = _quiet()
    try:
        return torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear: qconfig}, dtype=torch.qint8)[0]
    finally:
        w.__exit__(None, None, None)


def dynamic_int8(model: nn.Module, skip: tuple[str, ...] = (), per_channel: bool = True,
                 smooth_alpha: float | None = None, calibration=None) -> tuple[nn.Module, list[str], list[str]]:
    """(quantized copy, quantized layer names, notes). Only nn.Linear has a dynamic int8 kernel.

    per_channel: a weight scale per output row (else one per tensor). smooth_alpha: SmoothQuant migration
    strength, calibrated on `calibration` batches (see smooth.py).
    """
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    engine = pick_engine()
    targets = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in skip)
    q = copy.deepcopy(model).eval()
    how = "per-channel" if per_channel else "per-tensor"
    if smooth_alpha is not None:
        from effml.compress.smooth import activation_absmax, smooth_linears

        amax = activation_absmax(q, calibration, targets)
        smooth_linears(q, targets, amax, smooth_alpha, per_channel)
        how += f" weights, SmoothQuant alpha={smooth_alpha}"
    else:
        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        w = _quiet()
        try:
            q = torch.ao.quantization.quantize_dynamic(q, {n: qconfig for n in targets}, dtype=torch.qint8)
        finally:
            w.__exit__(None, None, None)
        how += " weights"
    notes = [f"dynamic int8 on the {engine!r} engine ({how}; activations quantized per tensor per call"
             f"{', 7-bit reduce_range' if engine in ('x86', 'fbgemm') else ''}; CPU capability "
             f"{torch.backends.cpu.get_cpu_capability()})"]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if convs:
        notes.append(f"{len(convs)} conv layer(s) stay fp32: PyTorch has no dynamic int8 conv kernel "
                     "(use mode='static' for convs)")
    return q, targets, notes


def static_int8(model: nn.Module, calibration, example_inputs: tuple, skip: tuple[str, ...] = ()
                ) -> tuple[nn.Module, list[str], list[str]]:
    """FX static PTQ calibrated on `calibration` (tensors or (x, y) batches); dynamic fallback if FX fails."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engine = pick_engine()
    if calibration is None:
        raise ConfigError("static int8 needs calibration data: quantize(model, cfg, calibration=batches)")
    before = float_layers(model)
    qmap = get_default_qconfig_mapping(engine)
    for name in skip:
        qmap = qmap.set_module_name(name, None)
    w = _quiet()
    try:
        prepared = prepare_fx(copy.deepcopy(model).eval(), qmap, example_inputs)
    except Exception as e:  # noqa: BLE001 - FX tracing raises many types
        w.__exit__(None, None, None)
        q, names, notes = dynamic_int8(model, skip, per_channel=True)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return q, names, [f"static int8: FX could not trace {type(model).__name__} ({reason}); fell back to "
                          "dynamic int8 of the Linear layers"] + notes
    try:
        with torch.no_grad():
            for batch in calibration:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                prepared(x)
        q = convert_fx(prepared)
    finally:
        w.__exit__(None, None, None)
    left = [n for n in float_layers(q)]
    names = [n for n in before if n not in skip]
    notes = [f"static int8 (FX PTQ, {engine!r} engine, per-channel weights, histogram-calibrated activations; "
             f"CPU capability {torch.backends.cpu.get_cpu_capability()})"]
    if left:
        notes.append(f"left in fp32 (no int8 kernel or skipped): {', '.join(left)}")
    return q, names, notes


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
