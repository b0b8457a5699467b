"""Which layers a compression touches, validated by name; and the bytes a model takes as stored."""

from __future__ import annotations

import difflib
from typing import Iterable

import torch
from torch import nn

from effml.compress.hf_layers import is_conv1d as is_hf_conv1d  # transformers' Conv1D: a Linear stored (in, out)
from effml.errors import ConfigError

# type names a config may list in `targets`
LAYER_TYPES: dict[str, type] = {"Linear": nn.Linear, "Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "Conv3d": nn.Conv3d}


def check_fraction(value, field: str) -> float:
    """A sparsity/ratio must lie in [0, 1): 1 would remove everything."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{field} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def check_targets(targets: Iterable[str], field: str) -> tuple[str, ...]:
    targets = tuple(targets)
    bad = [t for t in targets if t not in LAYER_TYPES]
    if bad or not targets:
        raise ConfigError(f"{field} {bad or targets!r}: layer types must be among {', '.join(LAYER_TYPES)}")
    return targets


def unknown_name_error(name: str, known: Iterable[str], what: str = "layer") -> ConfigError:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; the model has {', '.join(known[:12])}" + \
        (" ..." if len(known) > 12 else "")
    return ConfigError(f"{what} {name!r} does not exist in the model{hint}")


def _is_target(m: nn.Module, types: tuple, targets: Iterable[str]) -> bool:
    """An instance of a target type; transformers' Conv1D counts as "Linear" (it is one, stored transposed)."""
    return isinstance(m, types) or ("Linear" in targets and is_hf_conv1d(m))


def select_layers(model: nn.Module, targets: Iterable[str] = ("Linear", "Conv2d"), names: Iterable[str] | None = None,
                  exclude: Iterable[str] = ()) -> dict[str, nn.Module]:
    """name -> module of the weight layers a technique applies to; unknown names are errors. HF Conv1D layers
    are selected with "Linear"."""
    targets = tuple(targets)
    modules = dict(model.named_modules())
    types = tuple(LAYER_TYPES[t] for t in targets)
    for n in list(names or []) + list(exclude):
        if n not in modules:
            raise unknown_name_error(n, [k for k, m in modules.items() if _is_target(m, types, targets)])
    wanted = set(names) if names is not None else None
    out = {}
    for name, m in modules.items():
        if not _is_target(m, types, targets) or name in exclude or (wanted is not None and name not in wanted):
            continue
        out[name] = m
    if names is not None:
        wrong = [n for n in names if n not in out and n not in exclude]
        if wrong:
            raise ConfigError(f"layer {wrong[0]!r} is a {type(modules[wrong[0]]).__name__}, not one of the "
                              f"target types {', '.join(targets)}")
    return out


def tied_layers(model: nn.Module, chosen: dict[str, nn.Module], explicit: Iterable[str] | None = None
                ) -> dict[str, str]:
    """name -> reason, for each chosen layer whose weight tensor another module shares (a head tied to its
    embedding) and that the config did not name explicitly: compressing it would change the other module too."""
    owners: dict[int, list[str]] = {}
    for n, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor):
            owners.setdefault(id(w), []).append(n)
    named = set(explicit or ())
    out = {}
    for name, m in chosen.items():
        others = [o for o in owners.get(id(m.weight), []) if o != name and o not in chosen]
        if others and name not in named:
            kind = type(model.get_submodule(others[0])).__name__
            out[name] = (f"its weight is tied to {others[0]} ({kind}): compressing it would change {others[0]} "
                         "too, or untie it into a second copy; name it in the config's layers to compress it anyway")
    return out


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every float weight layer a compression method could handle in principle: nn.Linear, nn.ConvNd, HF Conv1D."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) or is_hf_conv1d(m)}


def skipped_layers(model: nn.Module, done: Iterable[str], *, exclude: Iterable[str] = (),
                   layers: Iterable[str] | None = None, targets: Iterable[str] | None = None,
                   why: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(name, reason) for every weight layer of `model` not in `done`: never a silent skip.

    The reason is, first that applies: `why[name]` (the method's own), excluded, not in `layers`, an HF Conv1D,
    a type outside `targets`, or "no kernel for this layer type in this method".
    """
    done, exclude = set(done), set(exclude)
    wanted = set(layers) if layers is not None else None
    out = []
    for name, m in weight_layers(model).items():
        if name in done:
            continue
        kind = type(m).__name__
        if why and name in why:
            reason = why[name]
        elif name in exclude:
            reason = "excluded by the config"
        elif wanted is not None and name not in wanted:
            reason = "not in the config's layers"
        elif is_hf_conv1d(m):
            reason = "transformers Conv1D (a transposed Linear) is not handled by this method yet"
        elif targets is not None and kind not in targets:
            reason = f"{kind} is not among the config's targets ({', '.join(targets)})"
        else:
            reason = f"this method has no kernel for {kind}"
        out.append((name, reason))
    return out


def require_weight_layers(model: nn.Module, what: str) -> None:
    """A model with no layer any compression method handles is an error, not an empty result."""
    if not weight_layers(model):
        kinds = sorted({type(m).__name__ for m in model.modules() if any(True for _ in m.parameters(recurse=False))})
        raise ConfigError(f"{what}: {type(model).__name__} has no nn.Linear, nn.Conv1d/2d/3d or transformers Conv1D "
                          f"layer to compress (its parameters live in {', '.join(kinds) or 'no module'})")


def param_bytes(model: nn.Module, bytes_per_param: float = 4.0) -> int:
    """Bytes of every parameter (each shared tensor once) at bytes_per_param: dense fp32 by default."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return int(total * bytes_per_param)


def count_params(model: nn.Module) -> int:
    """Parameters, each shared tensor once."""
    return sum({id(p): p.numel() for p in model.parameters()}.values())


def count_nonzero(model: nn.Module) -> int:
    return int(sum(int(torch.count_nonzero(p)) for p in {id(p): p for p in model.parameters()}.values()))
