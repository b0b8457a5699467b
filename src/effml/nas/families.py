"""The registry of model families a search space can name: how its data becomes parameters and a model.

    @family("mobilenetv2", params=_mbv2_params, describe=_describe_mbv2)
    def build(space_data: dict, arch: Arch, deploy: bool) -> nn.Module: ...

`effml.nas.models` fills it (MobileNetV2, ViT); `effml.nas.spaces` reads it. Neither imports the other's
half, so the two files form no circle: spaces -> models -> families.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from effml.registries import Registry

Arch = dict  # {param name: chosen value}


@dataclass(frozen=True)
class Family:
    """How a family turns its space data into parameters and a model."""

    name: str
    params: Callable[[dict], dict[str, tuple]]  # space data -> {param: choices}
    build: Callable[[dict, Arch, bool], nn.Module]  # (space data, arch, deploy) -> model
    describe: Callable[[Arch], str]  # arch -> short name


FAMILIES: Registry[Family] = Registry("NAS model family")


def family(name: str, params: Callable[[dict], dict[str, tuple]], describe: Callable[[Arch], str]):
    """Register a model builder `fn(space_data, arch, deploy) -> nn.Module` (with its parameters and short
    name) as the family `name`; a second family of the same name is refused."""

    def wrap(fn):
        FAMILIES.add(name, Family(name, params, fn, describe))
        return fn

    return wrap


__all__ = ["Arch", "FAMILIES", "Family", "family"]
