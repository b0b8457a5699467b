"""Resolve what the user named into a model plus example inputs: a bundled/HF config, or a model spec.

A model spec (`--model` in every command) is one grammar everywhere:

    NAME                       a name in the command's model registry: the zoo (`lenet5`, `tiny_gpt`, ...)
                               or, for the LLM commands, effml.llm's models (`smollm2-135m`, `tiny`)
    package.module:callable    anything importable that returns the model (`effml.zoo:lenet5`, `mymodels:net`)

plus constructor arguments (`--set width=2`, checked against the builder's signature). Whatever the builder
raises is reported by flag and spec: "--model mymod:build raised ValueError: ...".

    build = model_builder("lenet5")                         # the zoo builder, wrapped
    spec = resolve(config="llama-2-7b", seq=2048)           # on meta: shapes only
    spec = resolve(model="lenet5", batch=32, model_args=(("width", 2),))  # on cpu, input from the zoo entry
    out = spec.model(*spec.args, **spec.kwargs)
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from effml import configs
from effml.configs import ModelConfig
from effml.errors import ConfigError, EffmlError, ModelError
from effml.guards import check_build_fits_ram, check_config_fits_ram, check_input_fits_ram
from effml.units import torch_dtype

DEFAULT_SEED = 0
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass
class ModelSpec:
    """A model ready to run: model(*args, **kwargs); source says where it came from."""

    name: str
    model: nn.Module
    args: tuple
    kwargs: dict
    source: str  # 'config:llama-2-7b' or 'callable:effml.zoo:lenet5'
    config: ModelConfig | None = field(default=None, repr=False)  # set when resolved from a config

    def to_dict(self) -> dict[str, Any]:
        """Name, source and the example inputs' shapes and dtypes (JSON-ready)."""
        def desc(t):
            return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} \
                if isinstance(t, torch.Tensor) else repr(t)
        return {"name": self.name, "source": self.source, "args": [desc(a) for a in self.args],
                "kwargs": {k: desc(v) if isinstance(v, torch.Tensor) else v for k, v in self.kwargs.items()},
                "published_params": self.config.published_params if self.config else None}


def resolve(config: str | None = None, model: str | None = None, *, input_shape: tuple[int, ...] | None = None,
            batch: int = 1, seq: int | None = None, dtype: str = "fp32", device: str | None = None,
            model_args: tuple[tuple[str, Any], ...] | dict = ()) -> ModelSpec:
    """Exactly one of `config` (name or config path; default device meta) or `model` (a model spec: zoo name or
    module:callable; cpu), the latter built with `model_args` (the `--set KEY=VALUE` constructor arguments)."""
    if (config is None) == (model is None):
        raise ConfigError("give exactly one of a model config (--config, e.g. llama-2-7b) "
                          "or a model (--model, e.g. lenet5 or effml.zoo:lenet5)")
    if config is not None and model_args:
        raise ConfigError(f"--set does not apply to --config {config!r}: it sets a --model builder's arguments")
    if not torch_dtype(dtype).is_floating_point:  # also rejects unknown names with a clear message
        raise ConfigError(f"dtype {dtype!r}: a model is resolved in a float dtype (fp32, bf16, fp16); quantize after")
    if config is not None:
        return _from_config(config, input_shape, batch, seq, dtype, device or "meta")
    return _from_callable(model, input_shape, batch, seq, dtype, device or "cpu", dict(model_args))


def _from_config(name: str, input_shape, batch, seq, dtype, device) -> ModelSpec:
    if input_shape is not None:
        raise ConfigError(f"--input-shape does not apply to config {name!r}: use batch and seq instead")
    cfg = configs.load(name)
    check_config_fits_ram(cfg, batch, seq, dtype, device)  # real weights: refused up front if they cannot fit
    args, kwargs = configs.example_inputs(cfg, batch=batch, seq=seq, device=device, dtype=dtype)
    m = configs.build(cfg, dtype=dtype, device=device)
    return ModelSpec(cfg.name, m, args, kwargs, f"config:{cfg.name}", cfg)


def load_callable(spec: str):
    """Import `package.module:callable` and return the attribute; ConfigError naming what was wrong."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(f"model spec {spec!r} must look like package.module:callable (e.g. effml.zoo:lenet5)")
    mod_name, attr = (s.strip() for s in spec.split(":"))
    if not _DOTTED.match(mod_name):
        raise ConfigError(f"model spec {spec!r}: {mod_name!r} is not a module path like package.module")
    if not _DOTTED.match(attr):
        raise ConfigError(f"model spec {spec!r}: {attr!r} is not a callable name (e.g. lenet5)")
    module = _import(mod_name, spec)
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = ".".join([mod_name] + attr.split(".")[:i]) if i else mod_name
            public = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, public, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"model spec {spec!r}: {owner!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model spec {spec!r}: {attr!r} is not callable (it is of type {type(obj).__name__})")
    return obj


def _import(mod_name: str, spec: str):
    cwd_added = os.getcwd() not in sys.path and "" not in sys.path
    if cwd_added:  # let `effml profile --model mymodels:net` find ./mymodels.py, as `python -m` would
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise ConfigError(f"model spec {spec!r}: no module named {e.name!r} "
                              "(is it installed, or in the current directory?)") from None
        raise ConfigError(f"model spec {spec!r}: importing {mod_name!r} failed: {e}") from None
    except Exception as e:  # the module exists but raised while importing
        raise ModelError(f"model spec {spec!r}: importing {mod_name!r} raised {type(e).__name__}: {e}") from e
    finally:
        if cwd_added:
            sys.path.remove(os.getcwd())


def _from_callable(spec: str, input_shape, batch, seq, dtype, device, model_args: dict) -> ModelSpec:
    build = model_builder(spec)
    entry = getattr(build, "zoo_entry", None)
    if seq is not None:
        raise ConfigError(f"seq does not apply to model spec {spec!r}: give the full --input-shape instead")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    if str(device) != "meta":  # weights that cannot fit (e.g. --set width=1e6) refused before they are made
        check_build_fits_ram(build, model_args, f"--model {spec}")
    torch.manual_seed(DEFAULT_SEED)  # the same spec builds the same initial weights
    with torch.device(device):
        m = build(**model_args)
    if not isinstance(m, nn.Module):
        raise ConfigError(f"model spec {spec!r} returned a {type(m).__name__}, not a torch.nn.Module")
    m = m.to(device=device, dtype=torch_dtype(dtype)).eval()  # .to(dtype) casts only floating-point tensors
    args = _callable_inputs(spec, entry, input_shape, batch, device)
    args = tuple(a.to(torch_dtype(dtype)) if a.is_floating_point() else a for a in args)
    name = entry.name if entry is not None else build.model_name
    source = f"zoo:{spec}" if ":" not in spec else f"callable:{spec}"
    return ModelSpec(name, m, args, {}, source)


# ---- the model-spec grammar: NAME (a registry's) or package.module:callable ---------------------------------
SOURCES = ("zoo", "llm")  # the model registries a spec NAME is looked up in


def _registry(source: str) -> dict[str, Callable[..., Any]]:
    """name -> builder of a model registry: "zoo" (effml.zoo) or "llm" (effml.llm.registry)."""
    if source == "zoo":
        from effml.zoo import ZOO

        return {name: ZOO[name].build for name in ZOO}
    if source == "llm":
        from effml.llm.registry import MODELS

        return {name: MODELS[name] for name in MODELS}
    raise ValueError(f"model source must be one of {SOURCES}, got {source!r}")


def known_models(source: str = "zoo") -> list[str]:
    """The names a spec may use for `source`'s registry (besides package.module:callable)."""
    return sorted(_registry(source))


def model_builder(spec: str, *, source: str = "zoo", flag: str = "--model") -> Callable[..., Any]:
    """The builder a model spec names, wrapped so that calling it checks its keyword arguments against the
    builder's signature and reports anything the builder raises by flag and spec. The wrapper keeps the
    builder's signature, name and attributes (`zoo_entry`); `.spec` and `.model_name` say what was named."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{flag} must name a model: a {source} name ({', '.join(known_models(source))}) "
                          "or package.module:callable")
    spec = spec.strip()
    if ":" in spec:
        fn, name = load_callable(spec), spec.split(":")[1]
    else:
        table = _registry(source)
        if spec not in table:
            close = difflib.get_close_matches(spec, list(table), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            what, example = {"zoo": ("zoo model", "effml.zoo:lenet5"),
                             "llm": ("LLM", "mymodels:load_llm")}[source]
            if source == "zoo" and spec in configs.available():
                hint = f"; {spec!r} is a bundled model config: use --config {spec}"
            raise ConfigError(f"{flag} {spec!r} is not a known {what} name{hint} (known: {', '.join(sorted(table))}); "
                              f"a model spec is NAME or package.module:callable (e.g. {example})")
        fn, name = table[spec], spec

    @functools.wraps(fn)
    def build(*args, **kwargs):
        check_model_args(fn, kwargs, spec, flag)
        try:
            return fn(*args, **kwargs)
        except EffmlError as e:  # already names the field; say which model it came from
            raise _same_kind(e, f"{flag} {spec}: {e}") from e
        except Exception as e:
            raise ModelError(f"{flag} {spec} raised {type(e).__name__}: {e}") from e

    build.spec, build.model_name = spec, name  # type: ignore[attr-defined]
    return build


def load_llm(spec: str, *, flag: str = "--model"):
    """The LLM commands' model: a local Hugging Face checkpoint directory (config.json + *.safetensors + tokenizer;
    effml.llm.checkpoint), an effml.llm registry NAME (smollm2-135m, tiny) or package.module:callable returning a
    LoadedModel (name, model, tokenizer); errors name the flag and spec."""
    from pathlib import Path

    if Path(spec).is_dir() or "/" in spec and ":" not in spec:
        from effml.llm.checkpoint import load_checkpoint_llm

        return load_checkpoint_llm(spec)
    lm = model_builder(spec, source="llm", flag=flag)()
    if not all(hasattr(lm, a) for a in ("name", "model", "tokenizer")):
        raise ConfigError(f"{flag} {spec} returned a {type(lm).__name__}; an LLM spec must return an "
                          "effml.llm.registry.LoadedModel (name, model, tokenizer)")
    return lm


def _positive_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _same_kind(e: EffmlError, message: str) -> EffmlError:
    try:
        return type(e)(message)
    except Exception:  # a subclass with its own constructor
        return ModelError(message) if isinstance(e, ModelError) else ConfigError(message)


def check_model_args(fn: Callable[..., Any], kwargs: dict, spec: str, flag: str = "--model") -> None:
    """Refuse constructor arguments the builder does not take, non-finite numbers, and a zero or negative value
    where the builder's default is a positive number (a width, depth or size: `--set width=0` is refused)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in kwargs.items():
        where = f"--set {key}={value!r} for {flag} {spec}"
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number")
        p = params.get(key)
        if p is None:
            if params and not takes_any:
                named = [n for n, q in params.items() if q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)]
                raise ConfigError(f"{where}: the builder takes no {key!r} (it takes {', '.join(named) or 'none'})")
            continue
        default = p.default
        if isinstance(default, (tuple, list)) and default and all(_positive_number(d) for d in default):
            if not isinstance(value, (tuple, list)) or not all(_positive_number(v) for v in value):
                raise ConfigError(f"{where}: must be a tuple of numbers > 0 like the default {default!r}")
            continue
        if isinstance(default, bool) or not isinstance(default, (int, float)) or p.default is inspect.Parameter.empty:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number (the default is {default!r})")
        if isinstance(default, int) and not isinstance(value, int) and not float(value).is_integer():
            raise ConfigError(f"{where}: must be an integer (the default is {default!r})")
        if default > 0 and value <= 0:
            raise ConfigError(f"{where}: must be > 0 (the default is {default!r})")


def _callable_inputs(spec, entry, input_shape, batch, device) -> tuple[torch.Tensor, ...]:
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if not shape or any(d <= 0 for d in shape):
            raise ConfigError(f"input shape {input_shape!r} must list positive sizes (e.g. 1,3,224,224)")
        check_input_fits_ram(shape, 8 if entry is not None and entry.vocab else 4, "--input-shape", device)
        if entry is not None:  # token models keep int64 ids in [0, vocab)
            return tuple(entry.example_inputs(device=device, seed=DEFAULT_SEED, shape=shape))
        if str(device) == "meta":
            return (torch.empty(shape, device="meta"),)
        gen = torch.Generator().manual_seed(DEFAULT_SEED)
        return (torch.randn(shape, generator=gen).to(device),)
    if entry is None:
        raise ConfigError(f"model spec {spec!r} has no zoo_entry to say what input it takes: "
                          "--input-shape is required (e.g. --input-shape 1,3,224,224)")
    check_input_fits_ram((batch, *entry.input_shape[1:]), 8 if entry.vocab else 4, "--batch", device)
    return tuple(entry.example_inputs(batch=batch, device=device, seed=DEFAULT_SEED))


__all__ = ["ModelSpec", "check_model_args", "known_models", "load_callable", "load_llm", "model_builder", "resolve"]
