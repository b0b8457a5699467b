"""Real integer kernels on the CPU: PyTorch's int8 (dynamic, static PTQ) and int8/int4 weight-only Linear.

- dynamic: `torch.ao.quantization.quantize_dynamic` swaps nn.Linear for a module with qint8 weights (per
  tensor) whose input is quantized per call; the GEMM is fbgemm/oneDNN int8 (the `x86` engine here).
- static: FX graph mode PTQ (`prepare_fx` with the engine's default qconfig mapping: per-channel weights,
  histogram activation observers), calibration batches, `convert_fx`. Conv+BN(+ReLU) are fused. A model FX
  cannot trace falls back to dynamic int8 of its Linear layers, and every weight layer left in float
  (no int8 kernel for it) is listed in the notes: nothing is dropped silently.
Weight-only int8/int4 (`WeightOnlyLinear`) lives in `effml.compress.weight_only`.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


from effml.errors import ConfigError

ENGINE_PREFERENCE = ("x86", "fbgemm", "onednn", "qnnpack")


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


def dynamic_targets(model: nn.Module, skip: tuple[str, ...] = ()) -> list[str]:
    """The nn.Linear layers dynamic int8 swaps (sorted names), every one not in `skip`."""
    return sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in skip)


def dynamic_notes(model: nn.Module, engine: str, how: str) -> list[str]:
    """What ran (the conv layers left in float are each listed in the result's `skipped`)."""
    return [f"dynamic int8 on the {engine!r} engine ({how}; activations quantized per tensor per call"
            f"{', 7-bit reduce_range' if engine in ('x86', 'fbgemm') else ''}; CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()})"]


def dynamic_int8(model: nn.Module, skip: tuple[str, ...] = (), per_channel: bool = True
                 ) -> tuple[nn.Module, list[str], list[str]]:
    """Swap `model`'s nn.Linear layers in place: (model, quantized layer names, notes). Only nn.Linear has a
    dynamic int8 kernel. per_channel: a weight scale per output row (else one per tensor). SmoothQuant in
    front of it: effml.compress.smooth.smooth_dynamic_int8.
    """
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    engine = pick_engine()
    targets = dynamic_targets(model, skip)
    q = model.eval()
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    w = _quiet()
    try:
        q = torch.ao.quantization.quantize_dynamic(q, {n: qconfig for n in targets}, dtype=torch.qint8,
                                                   inplace=True)
    finally:
        w.__exit__(None, None, None)
    how = ("per-channel" if per_channel else "per-tensor") + " weights"
    return q, targets, dynamic_notes(model, engine, how)


def become(model: nn.Module, new: nn.Module) -> nn.Module:
    """Turn the object `model` into `new` (its class and state), so a whole-graph rewrite such as FX's
    convert_fx still quantizes in place: every reference to `model` sees the quantized graph."""
    model.__dict__.clear()
    model.__dict__.update(new.__dict__)
    model.__class__ = new.__class__
    return model


def static_int8(model: nn.Module, calibration, example_inputs: tuple, skip: tuple[str, ...] = ()
                ) -> tuple[nn.Module, list[str], list[str]]:
    """FX static PTQ calibrated on `calibration` (tensors or (x, y) batches), in place: `model` itself becomes the
    converted GraphModule (see `become`). Dynamic int8 (in place) where FX cannot trace the model."""
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
        q = become(model, convert_fx(prepared))
    finally:
        w.__exit__(None, None, None)
    names = [n for n in before if n not in skip]
    notes = [f"static int8 (FX PTQ, {engine!r} engine, per-channel weights, histogram-calibrated activations; "
             f"CPU capability {torch.backends.cpu.get_cpu_capability()})"]
    # the layers left in float are listed, each with its reason, in the result's `skipped`
    return q, names, notes
