"""The zoo registry: every built-in model with the example input it is profiled, trained and timed on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from effml.registries import Registry


@dataclass(frozen=True)
class ZooEntry:
    """A built-in model: how to build it and what one example input looks like (batch 1)."""

    name: str
    build: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    vocab: int | None = None  # token models: inputs are int64 ids in [0, vocab)
    description: str = ""

    def example_inputs(self, batch: int = 1, device: str | torch.device = "cpu", seed: int = 0,
                       shape: tuple[int, ...] | None = None) -> tuple[torch.Tensor, ...]:
        """One example input batch: random images N(0, 1) or random token ids, seeded."""
        shape = tuple(shape) if shape is not None else (batch, *self.input_shape[1:])
        if str(device) == "meta":
            dtype = torch.long if self.vocab else torch.float32
            return (torch.empty(shape, dtype=dtype, device="meta"),)
        gen = torch.Generator().manual_seed(seed)
        if self.vocab:
            return (torch.randint(0, self.vocab, shape, generator=gen).to(device),)
        return (torch.randn(shape, generator=gen).to(device),)


ZOO: Registry[ZooEntry] = Registry("zoo model")


def zoo_model(name: str, input_shape: tuple[int, ...], vocab: int | None = None):
    """Register a builder in the zoo; the builder keeps its own signature and gains `.zoo_entry`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        entry = ZooEntry(name, fn, tuple(input_shape), vocab, (fn.__doc__ or "").strip().split("\n")[0])
        ZOO.add(name, entry)
        fn.zoo_entry = entry  # type: ignore[attr-defined]
        return fn

    return wrap


def get(name: str) -> ZooEntry:
    """The entry of a zoo model; an unknown name is a ConfigError listing the zoo."""
    return ZOO.get(name)
