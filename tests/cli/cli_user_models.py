"""User model builders for the CLI tests: importable as `cli_user_models:NAME` (pytest puts tests/cli on sys.path)."""

from torch import nn


def small_net(width: int = 4, classes: int = 3) -> nn.Module:
    """Linear(8, width) -> ReLU -> Linear(width, classes): 8w + w + w·classes + classes parameters."""
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, classes))


def broken_builder() -> nn.Module:
    raise ValueError("no weights here")


def not_a_module():
    return {"weights": 1}


def constant_proxy(space, arch, config) -> float:
    """A NAS accuracy proxy that trains nothing: every architecture scores 0.5."""
    return 0.5


def broken_proxy(space, arch, config) -> float:
    raise RuntimeError("proxy exploded")
