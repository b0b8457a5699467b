"""`quantize(model, QuantConfig(method=...))`: fake-quant, k-means, real int8, int8/int4 weight-only.

    res = quantize(model, QuantConfig(method="linear", bits=4, granularity="channel"))
    res = quantize(model, QuantConfig(method="kmeans", bits=4, qat=True)); fit(res.model, data); freeze(res.model)
    res = quantize(model, QuantConfig(method="int8", mode="static"), calibration=batches, example_inputs=(x,))
    res = quantize(model, QuantConfig(method="int4-weight", group_size=128))

`linear` and `kmeans` modify the model in place (parametrizations on `.weight`); with qat=False they are baked
at once (the weights become their quantized values), with qat=True they stay and train through a
straight-through estimator until `freeze(model)`. `int8` returns a new (copied) model; `*-weight` replaces
nn.Linear modules in place. `stored_bytes` is what the weights take as stored: codes + scales/codebooks,
every other parameter at fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from effml.compress.int8 import dynamic_int8, static_int8
from effml.compress.weight_only import WEIGHT_KERNELS, weight_only
from effml.compress.kmeans import KMeansQuant
from effml.compress.kmeans import storage_bits as kmeans_bits
from effml.compress.layers import check_targets, count_params, param_bytes, select_layers
from effml.compress.qlinear import GRANULARITIES, LinearFakeQuant, QSpec
from effml.compress.qlinear import storage_bits as linear_bits
from effml.registries import Registry
from effml.errors import ConfigError

METHODS: Registry = Registry("quantization method")
INT8_MODES = ("dynamic", "static")
KMEANS_TRAIN = ("ste", "centroids")
FIXED_BITS = {"int8": 8, "int8-weight": 8, "int4-weight": 4}


@dataclass(frozen=True)
class QuantConfig:
    method: str = "linear"  # linear | kmeans | int8 | int8-weight | int4-weight
    bits: int | None = None  # default per method: 8 (linear, kmeans, int8, int8-weight), 4 (int4-weight)
    symmetric: bool = True  # linear
    granularity: str = "channel"  # linear: tensor | channel | group
    group_size: int | None = None  # linear (granularity="group") and int4-weight (default 128)
    mode: str = "dynamic"  # int8: dynamic | static
    per_channel: bool = True  # int8 dynamic: a weight scale per output row (False: one per tensor)
    smooth_alpha: float | None = None  # int8 dynamic: SmoothQuant strength in [0, 1] (needs calibration)
    qat: bool = False  # linear/kmeans: keep trainable (straight-through) until freeze()
    kmeans_train: str = "ste"  # kmeans with qat: "ste" (latent weights) or "centroids" (Deep Compression)
    kernel: str = "packed"  # *-weight: "packed" int kernels or "dequant" (fp32 GEMM on dequantized weights)
    targets: tuple[str, ...] = ("Linear", "Conv2d")
    layers: tuple[str, ...] | None = None  # only these layers (default: every target layer)
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        METHODS.get(self.method)
        fixed = FIXED_BITS.get(self.method)
        if self.bits is None:
            object.__setattr__(self, "bits", fixed or 8)
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits < 1:
            raise ConfigError(f"QuantConfig.bits must be an integer >= 1, got {self.bits!r}")
        if fixed is not None and self.bits != fixed:
            raise ConfigError(f"QuantConfig(method={self.method!r}) runs {fixed}-bit kernels; got bits={self.bits}")
        if self.method == "linear":
            QSpec(self.bits, self.symmetric, self.granularity, self.group_size)  # validates
        if self.mode not in INT8_MODES:
            raise ConfigError(f"QuantConfig.mode {self.mode!r} unknown; expected one of {INT8_MODES}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"QuantConfig.granularity {self.granularity!r} unknown; expected {GRANULARITIES}")
        if self.kmeans_train not in KMEANS_TRAIN:
            raise ConfigError(f"QuantConfig.kmeans_train {self.kmeans_train!r} unknown; expected {KMEANS_TRAIN}")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise ConfigError(f"QuantConfig.smooth_alpha must be in [0, 1], got {self.smooth_alpha}")
        if self.smooth_alpha is not None and (self.method, self.mode) != ("int8", "dynamic"):
            raise ConfigError("QuantConfig.smooth_alpha applies to method='int8', mode='dynamic'")
        if self.kernel not in WEIGHT_KERNELS:
            raise ConfigError(f"QuantConfig.kernel {self.kernel!r} unknown; expected one of {WEIGHT_KERNELS}")
        if self.method == "kmeans" and self.bits > 16:
            raise ConfigError(f"QuantConfig(method='kmeans') bits must be <= 16, got {self.bits}")
        object.__setattr__(self, "targets", check_targets(self.targets, "QuantConfig.targets"))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))


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

    @property
    def compression(self) -> float:
        return self.dense_bytes / self.stored_bytes if self.stored_bytes else float("inf")

    def to_dict(self) -> dict:
        return {"method": self.method, "bits": self.bits, "layers": list(self.layers), "params": self.params,
                "dense_bytes": self.dense_bytes, "stored_bytes": self.stored_bytes, "compression": self.compression,
                "notes": list(self.notes)}


def quantize(model: nn.Module, config: QuantConfig, *, calibration: Iterable | None = None,
             example_inputs: tuple | None = None) -> QuantResult:
    """Quantize by `config.method`; static int8 needs `calibration` batches (and example inputs or infers them)."""
    return METHODS.get(config.method)(model, config, calibration=calibration, example_inputs=example_inputs)


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


def _parametrize(model, config, make) -> tuple[list[str], int]:
    layers = select_layers(model, config.targets, config.layers, config.exclude)
    replaced: dict[int, int] = {}
    for name, m in layers.items():
        w = m.weight
        p, bits = make(name, m, w.detach())
        parametrize.register_parametrization(m, "weight", p, unsafe=True)
        replaced[id(m.parametrizations.weight.original)] = bits
    return list(layers), _stored_bytes(model, replaced)


@METHODS.register("linear")
def linear_method(model: nn.Module, config: QuantConfig, **_) -> QuantResult:
    spec = QSpec(config.bits, config.symmetric, config.granularity, config.group_size)
    dense = param_bytes(model)

    def make(name, m, w):
        fq = LinearFakeQuant(spec, name)
        fq(w)  # validates group sizes before touching the model
        return fq, linear_bits(w.numel(), w.shape[0], spec)

    names, stored = _parametrize(model, config, make)
    notes = [f"weights only ({spec.granularity}, {'symmetric' if spec.symmetric else 'asymmetric'}); "
             "activations stay fp32"]
    codes = None if config.qat else freeze(model)
    return QuantResult("linear", model, names, count_params(model), dense, stored, config.bits, notes, codes)


@METHODS.register("kmeans")
def kmeans_method(model: nn.Module, config: QuantConfig, **_) -> QuantResult:
    dense = param_bytes(model)
    mode = config.kmeans_train if config.qat else "frozen"

    def make(name, m, w):
        km = KMeansQuant(w, config.bits, w != 0, mode)
        return km, kmeans_bits(w.numel(), config.bits)  # dense index per weight (sparse: deep_compress)

    names, stored = _parametrize(model, config, make)
    notes = [f"k-means weight sharing: {2 ** config.bits} centroids per layer (linear init), "
             f"{'trainable: ' + mode if config.qat else 'post-training'}; pruned zeros are kept out of the "
             "codebook (their positions belong to the sparse format)"]
    codes = None if config.qat else freeze(model)
    return QuantResult("kmeans", model, names, count_params(model), dense, stored, config.bits, notes, codes)


@METHODS.register("int8")
def int8_method(model: nn.Module, config: QuantConfig, *, calibration=None, example_inputs=None) -> QuantResult:
    dense = param_bytes(model)
    names_ok = select_layers(model, ("Linear", "Conv1d", "Conv2d"), config.layers, config.exclude)
    skip = tuple(n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
                 and n not in names_ok)
    if config.mode == "dynamic":
        q, names, notes = dynamic_int8(model, skip, config.per_channel, config.smooth_alpha, calibration)
    else:
        calib = list(calibration) if calibration is not None else None
        if example_inputs is None and calib:
            first = calib[0]
            example_inputs = (first[0] if isinstance(first, (tuple, list)) else first,)
        q, names, notes = static_int8(model, calib, example_inputs or (), skip)
    sizes = {n: m.weight.numel() for n, m in model.named_modules() if n in names}
    int8_bits = sum(8 * v for v in sizes.values())
    float_bits = (count_params(model) - sum(sizes.values())) * 32
    stored = math.ceil((int8_bits + float_bits + 32 * len(names)) / 8)  # + a scale per layer (lower bound)
    return QuantResult(f"int8-{config.mode}", q, names, count_params(model), dense, stored, 8, notes)


def _weight_only(model, config, bits):
    dense = param_bytes(model)
    layers = select_layers(model, ("Linear",), config.layers, config.exclude)
    skip = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in layers)
    gs = config.group_size or 128
    model, names, left = weight_only(model, bits, gs, config.kernel, skip)
    from effml.compress.weight_only import WeightOnlyLinear

    wol = [m for m in model.modules() if isinstance(m, WeightOnlyLinear)]
    other = sum(p.numel() for p in model.parameters() if p.requires_grad) * 32
    stored = math.ceil((other + sum(m.storage_bits() for m in wol)) / 8)
    note = (f"int{bits} weight-only ({'per-channel symmetric' if bits == 8 else f'groups of {gs}, asymmetric'}), "
            f"activations fp32, kernel={config.kernel!r}")
    return QuantResult(f"int{bits}-weight", model, names, sum(m.codes.numel() for m in wol) + other // 32, dense,
                       stored, bits, [note] + left)


@METHODS.register("int8-weight")
def int8_weight_method(model: nn.Module, config: QuantConfig, **_) -> QuantResult:
    return _weight_only(model, config, 8)


@METHODS.register("int4-weight")
def int4_weight_method(model: nn.Module, config: QuantConfig, **_) -> QuantResult:
    return _weight_only(model, config, 4)


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
