"""`effml study --spec study.toml`: the user's study described in a TOML file (stdlib tomllib).

    name = "digits"                            # study name inside the store
    model = "digits_cnn:load"                  # registry NAME or module:callable returning the trained model
    evaluate = "digits_cnn:evaluate"           # module:callable, model -> number or {name: number}
    train = "digits_cnn:finetune"              # optional, (model, steps) -> None
    calibration = "digits_cnn:calibration"     # optional, () -> calibration batches
    example_inputs = "digits_cnn:example_inputs"  # () -> a tensor, a tuple of inputs or a dict of keywords
    plans = ["prune-channel-30%", "int8-static"]  # optional: default every plan that fits
    devices = ["rpi5", "h100-sxm"]             # catalog names (name:dtype) to predict on
    budget = "10m"                             # optional: start no new variant after this (seconds or 90s/8m/1h)
    search = 8                                 # optional: Optuna trials over prune ratio x format (0: none)
    search_per_group = false                   # optional: a pruning ratio per channel group (needs more trials)
    train_steps = 100
    train_quantized = false                    # optional: also run `train` after post-training int8 steps
    measure_budget_s = 1.0                     # timing window per variant, beside the baseline
    objective = "accuracy"                     # optional: the metric the frontier is drawn on
    store = "runs.db"                          # optional (else the CLI's --store)
    backends = ["torch", "onnxruntime"]        # optional: also export and time each variant in ONNX Runtime
    [model_args]                               # optional keyword arguments of `model`
    path = "digits_cnn.pt"
    [metrics]                                  # directions of metric names effml does not know
    agreement_top5 = "higher"                  # "higher" or "lower"

Module names resolve against the spec file's folder first, then the current directory. Unknown keys are
refused by name; every callable is imported before any work, so a typo fails in a second, not after an hour.
"""

from __future__ import annotations

import math
import sys
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effml.errors import ConfigError

KEYS = ("name", "model", "model_args", "evaluate", "train", "calibration", "example_inputs", "plans", "devices",
        "budget", "search", "search_per_group", "train_steps", "train_quantized", "measure_budget_s", "objective",
        "store", "metrics", "backends")
REQUIRED = ("model", "evaluate", "example_inputs")
_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class StudySpec:
    path: str
    model: str
    evaluate: str
    example_inputs: str
    name: str = "user"
    model_args: dict = field(default_factory=dict)
    train: str | None = None
    calibration: str | None = None
    plans: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None
    budget_s: float | None = None
    search: int = 0
    search_per_group: bool = False
    train_steps: int = 100
    train_quantized: bool = False  # effml.study(train_quantized=...): train after int8 PTQ steps too
    measure_budget_s: float = 1.0
    objective: str | None = None
    store: str | None = None
    metrics: dict = field(default_factory=dict)  # name -> "higher" | "lower"
    backends: tuple[str, ...] = ("torch",)  # effml.study.backends.BACKENDS

    def __post_init__(self):
        where = f"spec {self.path}"
        for k in ("model", "evaluate", "example_inputs", "name"):
            if not isinstance(getattr(self, k), str) or not getattr(self, k).strip():
                raise ConfigError(f"{where}: {k!r} must be a non-empty string, got {getattr(self, k)!r}")
        for k in ("train", "calibration", "objective", "store"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise ConfigError(f"{where}: {k!r} must be a non-empty string, got {v!r}")
        for k in ("plans", "devices", "backends"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, tuple) or not all(isinstance(x, str) and x for x in v)):
                raise ConfigError(f"{where}: {k!r} must be a list of names, got {v!r}")
        if not isinstance(self.model_args, dict):
            raise ConfigError(f"{where}: [model_args] must be a table of keyword arguments")
        for k in ("search", "train_steps"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "search" else 1):
                raise ConfigError(f"{where}: {k!r} must be an integer >= {0 if k == 'search' else 1}, got {v!r}")
        for k in ("search_per_group", "train_quantized"):
            if not isinstance(getattr(self, k), bool):
                raise ConfigError(f"{where}: {k!r} must be true or false, got {getattr(self, k)!r}")
        v = self.measure_budget_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{where}: 'measure_budget_s' must be a number of seconds > 0, got {v!r}")
        for name, d in self.metrics.items():
            if d not in ("higher", "lower"):
                raise ConfigError(f"{where}: [metrics] {name} = {d!r}; write \"higher\" or \"lower\" (is better)")


def _budget(v, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        secs = float(v)
    elif isinstance(v, str):
        body, scale = v.strip().lower(), 1.0
        for unit in sorted(_UNITS, key=len, reverse=True):
            if body.endswith(unit) and body[:-len(unit)].strip():
                body, scale = body[:-len(unit)].strip(), _UNITS[unit]
                break
        try:
            secs = float(body) * scale
        except ValueError:
            raise ConfigError(f"{where}: 'budget' {v!r} is not a duration (seconds, or 90s, 8m, 1.5h)") from None
    else:
        raise ConfigError(f"{where}: 'budget' must be seconds or a string like '8m', got {v!r}")
    if not math.isfinite(secs) or secs <= 0:
        raise ConfigError(f"{where}: 'budget' must be a finite duration > 0, got {v!r}")
    return secs


def load_spec(path: str | Path) -> StudySpec:
    """Read and check a spec file (unknown keys, missing keys and wrong types named)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--spec {str(p)!r}: no such file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--spec {str(p)!r} is not valid TOML: {e}") from None
    where = f"spec {str(p)!r}"
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        import difflib

        hints = [f"{k!r} (did you mean {difflib.get_close_matches(k, KEYS, n=1)[0]!r}?)"
                 if difflib.get_close_matches(k, KEYS, n=1) else repr(k) for k in unknown]
        raise ConfigError(f"{where}: unknown key(s) {', '.join(hints)}; known keys: {', '.join(KEYS)}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)} (each a package.module:callable)")
    kw: dict[str, Any] = {k: v for k, v in data.items() if k not in ("budget", "plans", "devices", "backends")}
    for k in ("plans", "devices", "backends"):
        if k in data:
            v = data[k]
            kw[k] = tuple(v) if isinstance(v, list) else v
    kw["budget_s"] = _budget(data.get("budget"), where)
    return StudySpec(path=str(p), **kw)


@contextmanager
def _importable_from(folder: Path):
    """Modules next to the spec file import first (and the current directory, as effml.models allows)."""
    added = str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        if added:
            sys.path.remove(str(folder))


@dataclass
class Resolved:
    model: Any
    evaluate: Any
    example_inputs: Any
    train: Any = None
    calibration: Any = None


def resolve(spec: StudySpec) -> Resolved:
    """Import every callable the spec names (each failure named by its key), then build the model and inputs."""
    from effml.models import load_callable, model_builder

    def fn(key: str):
        name = getattr(spec, key)
        if name is None:
            return None
        if ":" not in name:
            raise ConfigError(f"spec {spec.path!r}: {key} = {name!r} must look like package.module:callable")
        try:
            return load_callable(name)
        except ConfigError as e:
            raise ConfigError(f"spec {spec.path!r}: {key}: {e}") from None

    with _importable_from(Path(spec.path).resolve().parent):
        build = model_builder(spec.model, flag=f"spec {spec.path!r}: model")
        funcs = {k: fn(k) for k in ("evaluate", "example_inputs", "train", "calibration")}
        model = build(**spec.model_args)
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise ConfigError(f"spec {spec.path!r}: model {spec.model} returned {type(model).__name__}, not an "
                          "nn.Module")

    def call(key: str):
        try:
            return funcs[key]()
        except Exception as e:  # noqa: BLE001 - the user's factory; named by its key
            raise ConfigError(f"spec {spec.path!r}: {key} {getattr(spec, key)} raised {type(e).__name__}: {e}") \
                from None

    return Resolved(model, funcs["evaluate"], call("example_inputs"), funcs["train"],
                    call("calibration") if funcs["calibration"] is not None else None)


def run_spec(spec: StudySpec, store, progress=None, device: str = "cpu", backends=()):
    """Run (or resume) the study a spec describes; returns effml.study.user.UserStudyResult. `device` and
    `backends` come from the command line (the backends there are added to the spec's)."""
    from effml.study.user import DEFAULT_DEVICES, Metric, study

    r = resolve(spec)
    metrics = [Metric(n, d == "higher") for n, d in spec.metrics.items()]
    kw = dict(example_inputs=r.example_inputs, train=r.train, calibration=r.calibration, plans=list(spec.plans)
              if spec.plans is not None else None, devices=spec.devices if spec.devices is not None
              else DEFAULT_DEVICES, store=store, name=spec.name, metrics=metrics, objective=spec.objective,
              train_steps=spec.train_steps, train_quantized=spec.train_quantized,
              measure_budget_s=spec.measure_budget_s, budget_s=spec.budget_s,
              model_name=spec.model, progress=progress, device=device,
              backends=tuple(spec.backends) + tuple(backends))
    if spec.search:
        from effml.study.search import search

        return search(r.model, r.evaluate, trials=spec.search, per_group=spec.search_per_group, **kw)
    return study(r.model, r.evaluate, **kw)
