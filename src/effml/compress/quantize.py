"""`quantize(model, config)`: the config's type picks the method (fake-quant, k-means, int8, weight-only).

    res = quantize(model, LinearQuantConfig(bits=4, granularity="channel"))
    res = quantize(model, KMeansConfig(bits=4, qat=True)); train(res.model, data); freeze(res.model)
    res = quantize(model, StaticInt8Config(), calibration=batches, example_inputs=(x,))
    res = quantize(model, DynamicInt8Config(smooth_alpha=0.8), calibration=batches)
    res = quantize(model, WeightOnlyConfig(bits=4, group_size=128))

In place, every method: `model` itself is quantized and `res.model is model`. Linear and k-means put
parametrizations on `.weight` (baked at once with qat=False; with qat=True they train through a straight-through
estimator until `freeze(model)`); dynamic int8 and weight-only swap modules; static int8 (an FX graph) turns the
object itself into the converted GraphModule. The model is left in eval mode by int8 methods. Deep-copy first to
keep the original. `stored_bytes` is what the weights take as stored: codes + scales/codebooks, every other
parameter at fp32. `skipped` lists every weight layer left in float, with the reason.

A new method: a config class in compress/configs.py style (`CONFIGS.add`) and `@QUANTIZERS.register(MyConfig)`
on a function `(model, config, *, calibration, example_inputs, progress) -> QuantResult`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from effml.compress.configs import (DynamicInt8Config, KMeansConfig, LinearQuantConfig, StaticInt8Config,
                                    WeightOnlyConfig)
from effml.compress.int8 import dynamic_int8, float_layers, static_int8
from effml.compress.kmeans import KMeansQuant
from effml.compress.kmeans import storage_bits as kmeans_bits
from effml.compress.layers import (count_params, is_hf_conv1d, param_bytes, require_weight_layers, select_layers,
                                   skipped_layers, tied_layers)
from effml.compress.qlinear import LinearFakeQuant, QSpec
from effml.compress.qlinear import storage_bits as linear_bits
from effml.compress.smooth import smooth_dynamic_int8
from effml.compress.weight_only import weight_only
from effml.registries import Registry
from effml.progress import Progress, no_progress

QUANTIZERS: Registry = Registry("quantization method")  # config class -> quantizer


@dataclass
class QuantResult:
    method: str
    model: nn.Module = field(repr=False)
    layers: list[str]  # the layers quantized
    params: int
    dense_bytes: int  # fp32 bytes before
    stored_bytes: int
    bits: int
    notes: list[str] = field(default_factory=list)
    codes: dict[str, dict] | None = field(default=None, repr=False)  # linear/kmeans after freeze (for saving)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (layer, reason) for every layer left in float

    @property
    def compression(self) -> float:
        return self.dense_bytes / self.stored_bytes if self.stored_bytes else float("inf")

    def to_dict(self) -> dict:
        return {"method": self.method, "bits": self.bits, "layers": list(self.layers), "params": self.params,
                "dense_bytes": self.dense_bytes, "stored_bytes": self.stored_bytes, "compression": self.compression,
                "notes": list(self.notes), "skipped": [list(s) for s in self.skipped]}


def quantize(model: nn.Module, config, *, calibration: Iterable | None = None, example_inputs: tuple | None = None,
             progress: Progress | None = None) -> QuantResult:
    """Quantize `model` IN PLACE by the method `type(config)` names; `result.model is model`.

    calibration: batches (tensors, (x, y) pairs or keyword dicts) for static int8 and SmoothQuant;
    example_inputs: for FX tracing (static int8; else the first calibration batch). progress(what, fraction).
    """
    fn = QUANTIZERS.get_for(config)
    require_weight_layers(model, f"quantize({type(config).__name__})")
    return fn(model, config, calibration=calibration, example_inputs=example_inputs, progress=progress or no_progress)


def _stored_bytes(model: nn.Module, replaced: dict[int, int]) -> int:
    """fp32 bits of every parameter, except those in `replaced` (id -> their stored bits)."""
    bits = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) in replaced:
            continue
        if "parametrizations" in name or not t.is_floating_point() or name.endswith(("running_mean", "running_var")):
            continue  # latent weights and parametrization state are accounted in `replaced`
        if isinstance(t, nn.Parameter):
            bits += t.numel() * 32
    return math.ceil((bits + sum(replaced.values())) / 8)


def choose_layers(model: nn.Module, config, targets: tuple[str, ...]
                  ) -> tuple[dict[str, nn.Module], dict[str, str], list[str]]:
    """(name -> layer to quantize, name -> why a candidate is left alone, notes). A layer whose weight is tied to
    another module (a head tied to its embedding) is left alone unless named in config.layers; transformers'
    Conv1D layers among the chosen are replaced, in place, by the equivalent nn.Linear (exact: W transposed)."""
    from effml.compress.hf_layers import as_linear, replace_module

    chosen = select_layers(model, targets, config.layers, config.exclude)
    why = tied_layers(model, chosen, config.layers)
    for name in why:
        chosen.pop(name)
    conv = [n for n, m in chosen.items() if is_hf_conv1d(m)]
    for name in conv:
        lin = as_linear(chosen[name])
        lin.converted_from = "Conv1D"  # load_compressed rebuilds it (effml.compress.io)
        replace_module(model, name, lin)
        chosen[name] = lin
    notes = [f"{len(conv)} transformers Conv1D layer(s) replaced by the equivalent nn.Linear (W transposed, exact) "
             "and quantized"] if conv else []
    return chosen, why, notes


def _parametrize(model, config, make, progress: Progress) -> tuple[list[str], int, dict, list[str]]:
    layers, why, notes = choose_layers(model, config, config.targets)
    replaced: dict[int, int] = {}
    for i, (name, m) in enumerate(layers.items()):
        progress(f"{config.name}: {name}", i / max(1, len(layers)))
        p, bits = make(name, m, m.weight.detach())
        parametrize.register_parametrization(m, "weight", p, unsafe=True)
        replaced[id(m.parametrizations.weight.original)] = bits
    progress(config.name, 1.0)
    return list(layers), _stored_bytes(model, replaced), why, notes


def _skipped(model, names, config, why) -> list[tuple[str, str]]:
    return skipped_layers(model, names, exclude=config.exclude, layers=config.layers,
                          targets=getattr(config, "targets", None), why=why)


@QUANTIZERS.register(LinearQuantConfig)
def linear_method(model: nn.Module, config: LinearQuantConfig, *, progress: Progress = no_progress,
                  **_) -> QuantResult:
    spec = QSpec(config.bits, config.symmetric, config.granularity, config.group_size)
    dense = param_bytes(model)

    def make(name, m, w):
        fq = LinearFakeQuant(spec, name)
        fq(w)  # validates group sizes before touching the model
        return fq, linear_bits(w.numel(), w.shape[0], spec)

    names, stored, why, conv_notes = _parametrize(model, config, make, progress)
    notes = [f"weights only ({spec.granularity}, {'symmetric' if spec.symmetric else 'asymmetric'}); "
             "activations stay fp32"] + conv_notes
    codes = None if config.qat else freeze(model)
    return QuantResult("linear", model, names, count_params(model), dense, stored, config.bits, notes, codes,
                       _skipped(model, names, config, why))


@QUANTIZERS.register(KMeansConfig)
def kmeans_method(model: nn.Module, config: KMeansConfig, *, progress: Progress = no_progress, **_) -> QuantResult:
    dense = param_bytes(model)
    mode = config.train if config.qat else "frozen"

    def make(name, m, w):
        km = KMeansQuant(w, config.bits, w != 0, mode)
        return km, kmeans_bits(w.numel(), config.bits)  # dense index per weight (sparse: deep_compress)

    names, stored, why, conv_notes = _parametrize(model, config, make, progress)
    notes = [f"k-means weight sharing: {2 ** config.bits} centroids per layer (linear init), "
             f"{'trainable: ' + mode if config.qat else 'post-training'}; pruned zeros are kept out of the "
             "codebook (their positions belong to the sparse format)"] + conv_notes
    codes = None if config.qat else freeze(model)
    return QuantResult("kmeans", model, names, count_params(model), dense, stored, config.bits, notes, codes,
                       _skipped(model, names, config, why))


def _int8_skip(model: nn.Module, config) -> tuple[tuple[str, ...], dict[str, str], list[str]]:
    """(names of the Linear/Conv layers left alone: outside config.layers, excluded or tied, why, notes)."""
    chosen, why, notes = choose_layers(model, config, ("Linear", "Conv1d", "Conv2d", "Conv3d"))
    skip = tuple(n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
                 and n not in chosen)
    return skip, why, notes


def _int8_result(method, model, names, params, dense, sizes, notes, skipped) -> QuantResult:
    """params: the float model's parameter count (the packed int8 weights are no nn.Parameters)."""
    int8_bits = sum(8 * v for v in sizes.values())
    float_bits = (params - sum(sizes.values())) * 32
    stored = math.ceil((int8_bits + float_bits + 32 * len(names)) / 8)  # + a scale per layer (lower bound)
    return QuantResult(method, model, names, params, dense, stored, 8, notes, None, skipped)


@QUANTIZERS.register(DynamicInt8Config)
def dynamic_int8_method(model: nn.Module, config: DynamicInt8Config, *, calibration=None,
                        progress: Progress = no_progress, **_) -> QuantResult:
    dense, params = param_bytes(model), count_params(model)
    skip, why, conv_notes = _int8_skip(model, config)
    sizes = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in skip}
    progress("int8-dynamic", 0.0)
    if config.smooth_alpha is None:
        model, names, notes = dynamic_int8(model, skip, config.per_channel)
    else:
        model, names, notes = smooth_dynamic_int8(model, skip, config.per_channel, config.smooth_alpha, calibration)
    progress("int8-dynamic", 1.0)
    why.update({n: "no dynamic int8 kernel for convolutions in PyTorch (use StaticInt8Config)"
                for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd) and n not in skip})
    skipped = skipped_layers(model, names, exclude=config.exclude, layers=config.layers, why=why)
    return _int8_result("int8-dynamic", model, names, params, dense, sizes, notes + conv_notes, skipped)


@QUANTIZERS.register(StaticInt8Config)
def static_int8_method(model: nn.Module, config: StaticInt8Config, *, calibration=None, example_inputs=None,
                       progress: Progress = no_progress, **_) -> QuantResult:
    dense, params = param_bytes(model), count_params(model)
    skip, tied, conv_notes = _int8_skip(model, config)
    sizes_before = {n: m.weight.numel() for n, m in model.named_modules()
                    if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))}
    calib = list(calibration) if calibration is not None else None
    if example_inputs is None and calib:
        first = calib[0]
        example_inputs = (first[0] if isinstance(first, (tuple, list)) else first,)
    progress("int8-static: calibrating", 0.0)
    model, names, notes = static_int8(model, calib, example_inputs or (), skip)
    progress("int8-static", 1.0)
    left = set(float_layers(model))
    why = {n: tied.get(n, "skipped by the config") if n in skip else "no int8 kernel for it in the FX lowering"
           for n in left}
    skipped = skipped_layers(model, [n for n in sizes_before if n not in left], exclude=config.exclude,
                             layers=config.layers, why=why)
    return _int8_result("int8-static", model, names, params, dense,
                        {n: sizes_before[n] for n in names if n in sizes_before}, notes + conv_notes, skipped)


@QUANTIZERS.register(WeightOnlyConfig)
def weight_only_method(model: nn.Module, config: WeightOnlyConfig, *, progress: Progress = no_progress,
                       **_) -> QuantResult:
    from effml.compress.weight_only import WeightOnlyLinear

    bits, gs = config.bits, config.group_size or 128
    dense = param_bytes(model)
    layers, why, conv_notes = choose_layers(model, config, ("Linear",))
    skip = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in layers)
    progress(f"int{bits} weight-only", 0.0)
    model, names, left = weight_only(model, bits, gs, config.kernel, skip, act_dtype=config.act_dtype)
    progress(f"int{bits} weight-only", 1.0)
    why.update({n: f"in_features {m.in_features} is not a multiple of group_size {gs}"
                for n, m in model.named_modules() if isinstance(m, nn.Linear) and n in layers and n not in names})
    why.update({n: "weight-only quantization handles nn.Linear only" for n, m in model.named_modules()
                if isinstance(m, nn.modules.conv._ConvNd)})
    tied_notes = []
    if config.tied == "int8":  # the tied head and its embedding: one int8 table (WeightOnlyConfig.tied)
        from effml.compress.weight_only import tie_int8

        for head in [n for n, reason in why.items() if "is tied to" in reason]:
            emb = tie_int8(model, head, config.kernel, config.act_dtype)
            if emb is not None:
                why.pop(head)
                names.append(head)
                tied_notes.append(f"{head} and the embedding {emb} tied to it: one int8 table (per-row scales), "
                                  "the head through the int8 kernel, the embedding by row lookup")
    skipped = skipped_layers(model, names, exclude=config.exclude, layers=config.layers, why=why)
    wol = [m for m in model.modules() if isinstance(m, WeightOnlyLinear)]
    other = sum(p.numel() for p in model.parameters() if p.requires_grad) * 32
    stored = math.ceil((other + sum(m.storage_bits() for m in wol)) / 8)
    note = (f"int{bits} weight-only ({'per-channel symmetric' if bits == 8 else f'groups of {gs}, asymmetric'}), "
            f"activations {config.act_dtype}, kernel={config.kernel!r}")
    return QuantResult(f"int{bits}-weight", model, names, sum(m.codes.numel() for m in wol) + other // 32, dense,
                       stored, bits, [note] + left + conv_notes + tied_notes, None, skipped)


def quantized_weights(model: nn.Module) -> dict[str, dict]:
    """Codes of every effml-parametrized layer: {"codes","scale","zero"} (linear) or {"codebook","index","mask"}."""
    out = {}
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            for p in m.parametrizations.weight:
                if hasattr(p, "codes"):
                    out[name] = {"kind": type(p).__name__, **p.codes(m.parametrizations.weight.original.detach())}
    return out


@torch.no_grad()
def freeze(model: nn.Module) -> dict[str, dict]:
    """Bake every effml parametrization: weights become their quantized values. Returns the codes."""
    codes = quantized_weights(model)
    for name in codes:
        parametrize.remove_parametrizations(model.get_submodule(name), "weight", leave_parametrized=True)
    return codes
