"""Search spaces as data: a dict of choices per space, a builder per family (a registry, no if/elif).

    space = get_space("mobilenetv2")
    space.params()              # {"width": (0.35, 0.5, 0.75, 1.0), "resolution": (...), "s1.depth": (1, 2, 3), ...}
    arch = space.smallest()     # every choice at its smallest: the cheapest architecture of the space
    model = space.build(arch)   # an nn.Module; space.build(arch, deploy=True) is the int8 deployment form

A space is JSON-able data (`SPACES`, or a .json file of the same schema passed by path). Searchable
parameters are the choice lists with two or more entries; each parameter's choices are sorted ascending,
so "smallest" (every parameter at its first choice) is the cheapest architecture in SRAM, flash and MACs
for both families (all costs grow monotonically with every parameter). The architecture a trial picks is
a plain dict {param: value}, the same names Optuna sees.

MobileNetV2 (Sandler et al. 2018, Table 2): stages of inverted residual blocks (1x1 expand, kxk depthwise,
1x1 project, residual when the shape allows), channels and strides as the paper's, searched: width
multiplier, input resolution, per-stage depth (the paper's n at most), depthwise kernel 3/5/7 and expansion
ratio (MCUNet/ProxylessNAS-style per-stage choices). Input is one grayscale channel (Fashion-MNIST).
The small transformer is a ViT on 4x4 patches of the 28x28 image: depth, width, heads, MLP ratio.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from effml.errors import ConfigError
from effml.nas import models as _models  # noqa: F401  (registers the families: spaces -> models -> families)
from effml.nas.families import FAMILIES, Arch, Family

# (channels, stride, depth choices, kernel choices, expand choices), MobileNetV2 Table 2 (c, s; n as max depth)
_MBV2_STAGES = [
    {"channels": 16, "stride": 1, "depth": [1], "kernel": [3], "expand": [1]},
    {"channels": 24, "stride": 2, "depth": [1, 2], "kernel": [3, 5, 7], "expand": [3, 4, 6]},
    {"channels": 32, "stride": 2, "depth": [1, 2, 3], "kernel": [3, 5, 7], "expand": [3, 4, 6]},
    {"channels": 64, "stride": 2, "depth": [1, 2, 3, 4], "kernel": [3, 5, 7], "expand": [3, 4, 6]},
    {"channels": 96, "stride": 1, "depth": [1, 2, 3], "kernel": [3, 5, 7], "expand": [3, 4, 6]},
    {"channels": 160, "stride": 2, "depth": [1, 2, 3], "kernel": [3, 5, 7], "expand": [3, 4, 6]},
    {"channels": 320, "stride": 1, "depth": [1], "kernel": [3, 5, 7], "expand": [3, 4, 6]},
]

SPACES: dict[str, dict] = {
    "mobilenetv2": {
        "family": "mobilenetv2",
        "about": "MobileNetV2 inverted residuals (Sandler et al. 2018): width, resolution, per-stage depth, "
                 "kernel 3/5/7, expansion ratio",
        "input_channels": 1, "classes": 10, "stem": 32, "head": 1280,
        "width": [0.35, 0.5, 0.75, 1.0],
        "resolution": [32, 48, 64, 80, 96],
        "stages": _MBV2_STAGES,
    },
    "transformer": {
        "family": "transformer",
        "about": "ViT on 4x4 patches of a 28x28 image: depth, width, heads, MLP ratio",
        "input_channels": 1, "classes": 10, "patch": 4,
        "resolution": [28],
        "depth": [1, 2, 3, 4, 6],
        "width": [32, 64, 96, 128, 192],
        "heads": [2, 4],
        "mlp_ratio": [2, 3, 4],
    },
}

@dataclass(frozen=True)
class Space:
    name: str
    data: dict = field(repr=False)

    @property
    def family(self) -> Family:
        return FAMILIES.get(self.data["family"])

    def params(self) -> dict[str, tuple]:
        """Every parameter with its choices, ascending (fixed parameters, one choice, included)."""
        return {k: tuple(sorted(v)) for k, v in self.family.params(self.data).items()}

    def searchable(self) -> dict[str, tuple]:
        return {k: v for k, v in self.params().items() if len(v) > 1}

    def smallest(self) -> Arch:
        return {k: v[0] for k, v in self.params().items()}

    def largest(self) -> Arch:
        return {k: v[-1] for k, v in self.params().items()}

    def sample(self, gen: torch.Generator) -> Arch:
        """A uniformly random architecture (each parameter's choice independently)."""
        return {k: v[int(torch.randint(len(v), (1,), generator=gen))] for k, v in self.params().items()}

    def check(self, arch: Arch) -> Arch:
        """The arch completed with fixed parameters; a ConfigError for an unknown name or a value off the grid."""
        params = self.params()
        unknown = set(arch) - set(params)
        if unknown:
            raise ConfigError(f"space {self.name!r} has no parameter(s) {', '.join(sorted(unknown))}; "
                              f"it has {', '.join(params)}")
        out = {}
        for k, choices in params.items():
            v = arch.get(k, choices[0] if len(choices) == 1 else None)
            if v is None:
                raise ConfigError(f"space {self.name!r}: parameter {k} missing (one of {list(choices)})")
            if v not in choices:
                raise ConfigError(f"space {self.name!r}: {k}={v!r} is not one of {list(choices)}")
            out[k] = v
        return out

    def resolution(self, arch: Arch) -> int:
        return int(arch["resolution"])

    def input_shape(self, arch: Arch, batch: int = 1) -> tuple[int, ...]:
        r = self.resolution(arch)
        return (batch, self.data["input_channels"], r, r)

    def build(self, arch: Arch, deploy: bool = False) -> nn.Module:
        """The model of `arch`; deploy=True: the int8 deployment form (batch norm folded into conv biases)."""
        return self.family.build(self.data, self.check(arch), deploy)

    def describe(self, arch: Arch) -> str:
        """A short name, e.g. 'mbv2 w0.5 r64 d1-2-3-2-2-1-1'."""
        return self.family.describe(arch)

    def to_dict(self) -> dict:
        return {"name": self.name, **self.data}


def list_spaces() -> list[str]:
    return sorted(SPACES)


def get_space(name: str | Space) -> Space:
    """A built-in space by name, or a JSON file of the same schema; unknown names suggest close ones."""
    if isinstance(name, Space):
        return name
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"space must be a name ({', '.join(list_spaces())}) or a .json path, got {name!r}")
    if name.endswith(".json"):
        try:
            data = json.loads(Path(name).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"space file {name}: cannot read it ({exc})") from None
        return _validated(Path(name).stem, data)
    key = name.strip().lower().replace("_", "").replace("-", "")
    aliases = {k.replace("-", ""): k for k in SPACES} | {"mbv2": "mobilenetv2", "vit": "transformer"}
    if key not in aliases:
        close = difflib.get_close_matches(name.lower(), list(SPACES) + ["mbv2", "vit"], n=2, cutoff=0.4)
        hint = f"; did you mean {' or '.join(repr(aliases.get(c, c)) for c in close)}?" if close else ""
        raise ConfigError(f"unknown search space {name!r}{hint} (spaces: {', '.join(list_spaces())}, "
                          "or a .json file of the same schema)")
    return _validated(aliases[key], SPACES[aliases[key]])


def _validated(name: str, data: dict) -> Space:
    if not isinstance(data, dict) or data.get("family") not in FAMILIES:
        fam = data.get("family") if isinstance(data, dict) else None
        raise ConfigError(f"space {name!r}: family {fam!r} unknown; expected one of {', '.join(FAMILIES)}")
    space = Space(name, data)
    try:
        params = space.params()
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"space {name!r}: missing or malformed field {exc}") from None
    for k, v in params.items():
        if not v or any(not isinstance(c, (int, float)) or c <= 0 for c in v):
            raise ConfigError(f"space {name!r}: {k} must list positive numbers, got {list(v)}")
    return space
