"""One frozen config class per compression method (torchao style): the config's type picks the method.

    FinePrune(sparsity=0.9)                    ChannelPrune(sparsity=0.5, criterion="taylor")
    NMPrune(n=2, m=4)                          LinearQuantConfig(bits=4, granularity="group", group_size=32)
    KMeansConfig(bits=4, qat=True)             DynamicInt8Config(smooth_alpha=0.8)
    StaticInt8Config()                         WeightOnlyConfig(bits=4, group_size=128)

Each class validates itself in `__post_init__` (the message names the field) and carries only the fields its
method reads, so a combination that means nothing (a group size for per-channel int8, a per-tensor static int8,
N:M fields on fine pruning) cannot be written. `config_from_dict({"method": "channel", "sparsity": 0.5})` builds
one from plan files and the CLI (unknown methods and unknown fields are refused by name); `cfg.to_dict()` is the
inverse. A new method: a frozen dataclass with `name: ClassVar[str]`, `CONFIGS.add(cls.name, cls)`, and its
function registered with `@QUANTIZERS.register(cls)` (compress/quantize.py) or `@PRUNERS.register(cls)`
(compress/prune.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Mapping

from effml.compress.layers import check_fraction, check_targets
from effml.errors import ConfigError
from effml.registries import Registry

CONFIGS: Registry = Registry("compression method")  # name -> config class


def _register(cls):
    CONFIGS.add(cls.name, cls)
    return cls


class CompressionConfig:
    """Base of every per-method config: its registry `name`, `to_dict()` and shared checks."""

    name: ClassVar[str] = ""

    def to_dict(self) -> dict:
        out = {"method": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v
        return out

    def _names(self, field_name: str) -> None:
        """Store a sequence of layer names as a tuple (a string alone would iterate as characters)."""
        value = getattr(self, field_name)
        if value is None:
            return
        if isinstance(value, str):
            raise ConfigError(f"{type(self).__name__}.{field_name} must be a sequence of layer names, got the "
                              f"string {value!r}; write ({value!r},)")
        object.__setattr__(self, field_name, tuple(value))

    def _targets(self) -> None:
        object.__setattr__(self, "targets", check_targets(self.targets, f"{type(self).__name__}.targets"))

    def _layer_fields(self) -> None:
        """The layer-selection fields this config has: `targets` checked, `layers`/`exclude` stored as tuples,
        `index_bits` copied (later edits of the caller's dict do not leak in)."""
        names = {f.name for f in dataclasses.fields(self)}
        if "targets" in names:
            self._targets()
        for name in ("layers", "exclude"):
            if name in names:
                self._names(name)
        if "index_bits" in names:
            object.__setattr__(self, "index_bits", dict(self.index_bits))

    def _positive_ints(self, *field_names: str) -> None:
        for f in field_names:
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{type(self).__name__}.{f} must be a positive integer, got {v!r}")

    def _bits(self, low: int, high: int) -> None:
        b = self.bits
        if isinstance(b, bool) or not isinstance(b, int) or not low <= b <= high:
            raise ConfigError(f"{type(self).__name__}.bits must be an integer in [{low}, {high}], got {b!r}")

    def _choice(self, field_name: str, allowed: tuple) -> None:
        value = getattr(self, field_name)
        if value not in allowed:
            raise ConfigError(f"{type(self).__name__}.{field_name} {value!r} unknown; expected one of "
                              f"{', '.join(map(str, allowed))}")


def _per_layer(cfg, field_name: str = "per_layer") -> None:
    value = getattr(cfg, field_name)
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ConfigError(f"{type(cfg).__name__}.{field_name} must map layer names to sparsities")
    for name, s in value.items():
        check_fraction(s, f"{type(cfg).__name__}.{field_name}[{name!r}]")
    object.__setattr__(cfg, field_name, dict(value))  # a copy: later edits do not leak in


def _index_bits() -> dict[str, int]:
    return {"Conv2d": 8, "Linear": 5}  # Deep Compression's relative-index widths (Han et al. 2016, sec. 2)


# ---- pruning ------------------------------------------------------------------------------------------------
@_register
@dataclass(frozen=True)
class FinePrune(CompressionConfig):
    """Zero the smallest-|w| weights: one global threshold (scope="global") or each layer at its own sparsity."""

    name: ClassVar[str] = "fine"
    sparsity: float = 0.5  # fraction of the weights removed
    per_layer: Mapping[str, float] | None = None  # layer name -> sparsity; the others use `sparsity`
    scope: str = "global"  # global | layer
    targets: tuple[str, ...] = ("Linear", "Conv2d")
    exclude: tuple[str, ...] = ()
    index_bits: Mapping[str, int] = field(default_factory=_index_bits)  # sparse storage: relative-index bits

    def __post_init__(self):
        check_fraction(self.sparsity, "FinePrune.sparsity")
        _per_layer(self)
        self._choice("scope", ("global", "layer"))
        self._layer_fields()

    def layer_sparsity(self, name: str) -> float:
        return self.per_layer.get(name, self.sparsity) if self.per_layer else self.sparsity


@_register
@dataclass(frozen=True)
class ChannelPrune(CompressionConfig):
    """Remove the least important channels of every prunable group: the model gets physically smaller."""

    name: ClassVar[str] = "channel"
    sparsity: float = 0.5  # fraction of each group's channels removed
    per_layer: Mapping[str, float] | None = None  # group (or member layer) name -> sparsity
    criterion: str = "l1"  # a name in effml.compress.structured.CRITERIA: l1 | l2 | taylor
    exclude: tuple[str, ...] = ()  # group or layer names left whole
    taylor_batches: int = 4  # criterion="taylor": gradient batches drawn from `data`

    def __post_init__(self):
        from effml.compress.structured import CRITERIA

        check_fraction(self.sparsity, "ChannelPrune.sparsity")
        _per_layer(self)
        if self.criterion not in CRITERIA:
            raise ConfigError(f"ChannelPrune.criterion {self.criterion!r} unknown; expected one of "
                              f"{', '.join(CRITERIA)}")
        self._layer_fields()
        if isinstance(self.taylor_batches, bool) or not isinstance(self.taylor_batches, int) or \
                self.taylor_batches < 1:
            raise ConfigError(f"ChannelPrune.taylor_batches must be an integer >= 1, got {self.taylor_batches!r}")


@_register
@dataclass(frozen=True)
class NMPrune(CompressionConfig):
    """Keep the n largest |w| of every m consecutive weights along the input dimension (2:4 sparsity)."""

    name: ClassVar[str] = "n:m"
    n: int = 2
    m: int = 4
    targets: tuple[str, ...] = ("Linear", "Conv2d")
    exclude: tuple[str, ...] = ()
    index_bits: Mapping[str, int] = field(default_factory=_index_bits)

    def __post_init__(self):
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
            raise ConfigError(f"NMPrune n, m must satisfy 0 < n < m, got n={self.n!r}, m={self.m!r}")
        self._layer_fields()


# ---- quantization -------------------------------------------------------------------------------------------
@_register
@dataclass(frozen=True)
class LinearQuantConfig(CompressionConfig):
    """Uniform (linear) fake-quant of the weights; qat=True keeps it trainable (straight-through) until freeze()."""

    name: ClassVar[str] = "linear"
    bits: int = 8
    symmetric: bool = True
    granularity: str = "channel"  # tensor | channel | group
    group_size: int | None = None  # granularity="group" only
    qat: bool = False
    targets: tuple[str, ...] = ("Linear", "Conv2d")
    layers: tuple[str, ...] | None = None  # only these layers (default: every target layer)
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        from effml.compress.qlinear import QSpec

        if self.group_size is not None and self.granularity != "group":
            raise ConfigError(f"LinearQuantConfig.group_size applies to granularity='group' only, got granularity="
                              f"{self.granularity!r}")
        try:
            QSpec(self.bits, self.symmetric, self.granularity, self.group_size)
        except ConfigError as e:
            raise ConfigError(f"LinearQuantConfig: {e}") from None
        self._layer_fields()


@_register
@dataclass(frozen=True)
class KMeansConfig(CompressionConfig):
    """k-means weight sharing (2**bits centroids per layer); qat=True trains it, by `train`, until freeze()."""

    name: ClassVar[str] = "kmeans"
    bits: int = 8
    qat: bool = False
    train: str | None = None  # qat only: "ste" (latent weights, the default) or "centroids" (Deep Compression)
    targets: tuple[str, ...] = ("Linear", "Conv2d")
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        self._bits(1, 16)
        if self.train is not None and not self.qat:
            raise ConfigError(f"KMeansConfig.train={self.train!r} applies to qat=True only (post-training k-means "
                              "does not train)")
        if self.qat:
            object.__setattr__(self, "train", self.train or "ste")
            self._choice("train", ("ste", "centroids"))
        self._layer_fields()


@_register
@dataclass(frozen=True)
class DynamicInt8Config(CompressionConfig):
    """PyTorch's dynamic int8 Linear (activations quantized per call); optional SmoothQuant (needs calibration)."""

    name: ClassVar[str] = "int8-dynamic"
    per_channel: bool = True  # a weight scale per output row (False: one per tensor)
    smooth_alpha: float | None = None  # SmoothQuant migration strength in [0, 1]
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        a = self.smooth_alpha
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0):
            raise ConfigError(f"DynamicInt8Config.smooth_alpha must be in [0, 1], got {a!r}")
        self._layer_fields()


@_register
@dataclass(frozen=True)
class StaticInt8Config(CompressionConfig):
    """FX static post-training int8: per-channel weights, histogram-calibrated activations (needs calibration)."""

    name: ClassVar[str] = "int8-static"
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        self._layer_fields()


@_register
@dataclass(frozen=True)
class WeightOnlyConfig(CompressionConfig):
    """Weight-only int8 (per output channel, symmetric) or int4 (per group, asymmetric); activations stay float."""

    name: ClassVar[str] = "weight-only"
    bits: int = 8  # 8 | 4
    group_size: int | None = None  # int4 only (default 128); int8 is per output channel
    kernel: str = "packed"  # packed int kernels | dequant (float GEMM on dequantized weights)
    act_dtype: str = "auto"  # activations fed to the packed kernels: auto (bf16 where fast) | fp32 | bf16
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    # an LM head tied to the input embedding (SmolLM2, GPT-2: the largest matrix, 49152 x 576): "keep" it float
    # (listed as skipped), or "int8": one int8 table with per-row scales serves both, the head through the int8
    # kernels and the embedding by looking rows up (stored once; an int4 head costs the most quality)
    tied: str = "keep"

    def __post_init__(self):
        from effml.compress.weight_only import ACT_DTYPES, WEIGHT_KERNELS

        self._choice("tied", ("keep", "int8"))
        if self.bits not in (4, 8) or isinstance(self.bits, bool):
            raise ConfigError(f"WeightOnlyConfig.bits must be 8 or 4, got {self.bits!r}")
        if self.bits == 8 and self.group_size is not None:
            raise ConfigError("WeightOnlyConfig.group_size applies to bits=4 only (int8 weight-only is per output "
                              "channel)")
        if self.bits == 4:
            if self.group_size is None:
                object.__setattr__(self, "group_size", 128)
            self._positive_ints("group_size")
        self._choice("kernel", WEIGHT_KERNELS)
        self._choice("act_dtype", ACT_DTYPES)
        self._layer_fields()


PRUNE_CONFIGS = (FinePrune, ChannelPrune, NMPrune)
QUANT_CONFIGS = (LinearQuantConfig, KMeansConfig, DynamicInt8Config, StaticInt8Config, WeightOnlyConfig)


def config_from_dict(d: Mapping) -> CompressionConfig:
    """`{"method": name, **fields}` -> that method's config; unknown methods and fields are refused by name."""
    if not isinstance(d, Mapping) or "method" not in d:
        raise ConfigError(f"a compression config needs a 'method' key (one of {', '.join(CONFIGS)}), got {d!r}")
    cls = CONFIGS.get(d["method"])
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k != "method"}
    unknown = sorted(set(kw) - fields)
    if unknown:
        raise ConfigError(f"{cls.__name__} (method {cls.name!r}) has no field {', '.join(unknown)}; its fields: "
                          f"{', '.join(sorted(fields))}")
    for k, v in kw.items():
        if isinstance(v, list):
            kw[k] = tuple(v)  # JSON lists -> the tuples the configs hold
    return cls(**kw)
