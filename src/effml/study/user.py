"""`effml.study(model, evaluate, example_inputs=...)`: the study on the user's own, already trained model.

    res = effml.study(model, evaluate, example_inputs=(x,), train=finetune, calibration=batches)
    res.rows, res.frontier, res.skipped, res.failed, res.to_dict()

The model as given is the baseline (never retrained). `evaluate(model)` returns one number or a dict of
named numbers; each metric has a direction (`Metric(name, higher_is_better)`; known names such as accuracy
or perplexity are looked up in DIRECTIONS, any other must be given in `metrics=`). Every plan that fits the
model and what was given (effml.study.plans) is applied to a copy of the baseline, evaluated, counted,
timed beside the baseline on `example_inputs` (effml.measure.ab), its peak memory measured, and stored as
it finishes (the store and keys of the default study: a killed study resumes; workers sharing the store
claim each variant, see claims.py). A plan that needs what was not given is listed in `skipped` with the
reason; a variant whose `evaluate` raises or returns NaN is stored as failed with that error, and the study
goes on.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from effml.errors import ConfigError
from effml.study.measured import Inputs, measure, resident_bytes  # noqa: F401 - re-exported
from effml.study.claims import DEFAULT_TTL_S, Claims
from effml.study.plans import UserPlan, apply_plan, model_kinds, select
from effml.study.store import Run, Store, _check_ttl

# metric name -> higher is better; matched case-insensitively on the name and on its last "_"/"-" part
DIRECTIONS = {"accuracy": True, "acc": True, "top1": True, "top5": True, "f1": True, "precision": True,
              "recall": True, "auc": True, "map": True, "bleu": True, "rouge": True, "agreement": True,
              "exact_match": True, "iou": True, "miou": True, "r2": True,
              "perplexity": False, "ppl": False, "loss": False, "nll": False, "error": False, "wer": False,
              "cer": False, "mse": False, "mae": False, "rmse": False}
DEFAULT_DEVICES = ("rpi5", "jetson-orin-nano-8gb", "h100-sxm")


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"Metric.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.higher_is_better, bool):
            raise ConfigError(f"Metric {self.name!r}: higher_is_better must be True or False, "
                              f"got {self.higher_is_better!r}")


def direction(name: str, overrides: Mapping[str, bool] | None = None) -> bool:
    """Higher is better for `name`? From `overrides`, else the DIRECTIONS table; else a ConfigError."""
    if overrides and name in overrides:
        return overrides[name]
    low = name.lower()
    for cand in (low, low.replace("-", "_").split("_")[-1], low.replace("-", "_").split("_")[0]):
        if cand in DIRECTIONS:
            return DIRECTIONS[cand]
    raise ConfigError(f"metric {name!r}: effml does not know whether higher or lower is better; pass "
                      f"metrics=[Metric({name!r}, higher_is_better=True or False)] (known names: "
                      f"{', '.join(sorted(DIRECTIONS))})")


def _overrides(metrics) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for m in metrics or ():
        if isinstance(m, Metric):
            out[m.name] = m.higher_is_better
        else:
            raise ConfigError(f"metrics= takes Metric(name, higher_is_better) items, got {m!r}")
    return out


def read_metrics(value, what: str) -> dict[str, float]:
    """evaluate()'s return value as {name: finite float}; a ConfigError naming what is wrong."""
    if isinstance(value, Mapping):
        items = dict(value)
    elif isinstance(value, (int, float, torch.Tensor)) and not isinstance(value, bool):
        items = {"metric": value}
    else:
        raise ConfigError(f"{what} returned {type(value).__name__}; expected a number or a dict of named numbers")
    out = {}
    for k, v in items.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{what}: metric {k!r} is {type(v).__name__}, not a number")
        if not math.isfinite(v):
            raise ConfigError(f"{what}: metric {k!r} is {v} (not a finite number)")
        out[str(k)] = float(v)
    if not out:
        raise ConfigError(f"{what} returned an empty dict; return at least one named number")
    return out


@dataclass
class UserStudyResult:
    study: str
    fingerprint: str
    objective: str  # the metric the frontier is drawn on
    higher_is_better: bool
    rows: list[dict]  # one per finished variant (baseline first): metrics, costs, speedup, peak memory
    frontier: dict[str, list[str]]  # "latency" / "size" -> names of the variants on that frontier
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (plan, reason): not applicable / needs
    failed: list[tuple[str, str]] = field(default_factory=list)  # (variant, error)
    remaining: list[str] = field(default_factory=list)  # not started: out of budget
    done: list[str] = field(default_factory=list)  # computed by this call (the rest came from the store)

    def row(self, name: str) -> dict:
        return next(r for r in self.rows if r["name"] == name)

    def to_dict(self) -> dict:
        return asdict(self)


def _fingerprint(model: nn.Module, inputs: Inputs, extra: dict) -> str:
    """Hash of the baseline's weights, the example inputs' shapes and the settings that change the numbers."""
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        if isinstance(v, torch.Tensor) and not v.is_quantized:
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps({"inputs": inputs.describe(), **extra}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:8]


def _check_runs(model: nn.Module, inputs: Inputs, name: str) -> None:
    try:
        with torch.inference_mode():
            inputs.call(model)
    except Exception as e:  # noqa: BLE001 - whatever the user's model raises is reported, named
        raise ConfigError(f"model {name} does not run on example_inputs {inputs.describe()}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; pass inputs the "
                          "model's forward accepts (a tensor, a tuple of positional inputs or a dict of keywords)"
                          ) from None


def _frontier(rows: list[dict], objective: str, up: bool) -> dict[str, list[str]]:
    """Frontiers of the metric against latency (baseline p50 / speedup measured beside it) and stored size."""
    from effml.study.pareto import pareto

    ok = [r for r in rows if r.get("status") == "ok"]
    base = next((r for r in ok if r["name"] == "baseline"), None)
    out = {}
    for cost, get in (("latency", lambda r: base["latency_p50_s"] / r["speedup_measured"]
                       if r["name"] != "baseline" else base["latency_p50_s"]),
                      ("size", lambda r: r["model_bytes"])):
        pts = [{"key": r["name"], "m": r["metrics"][objective], "c": get(r)} for r in ok]
        out[cost] = pareto(pts, ("m", "c"), maximize=frozenset({"m"} if up else ())).frontier if base and pts \
            else []
    return out


def _flat(run: Run) -> dict:
    return {"name": run.name, "key": run.key, "chain": run.chain, **run.metrics, "predictions": run.predictions}


Progress = Callable[[str, float], None]


def study(model: nn.Module, evaluate: Callable[[nn.Module], Any], *, example_inputs, train: Callable | None = None,
          calibration=None, plans: list[str] | None = None, devices: tuple[str, ...] = DEFAULT_DEVICES,
          store: str | Store = "runs.db", name: str = "user", metrics: list[Metric] | None = None,
          objective: str | None = None, train_steps: int = 100, train_quantized: bool = False,
          measure_budget_s: float = 1.0, budget_s: float | None = None, extra_plans: list[UserPlan] = (),
          model_name: str | None = None,
          progress: Progress | None = None, device: str = "cpu", backends: tuple[str, ...] = ("torch",),
          claim_ttl_s: float = DEFAULT_TTL_S) -> UserStudyResult:
    """Study `model` as it is: every plan that fits it (or `plans`), each evaluated, measured and stored.

    evaluate(model) -> a number or {name: number}; train(model, steps) fine-tunes a pruned/QAT variant in
    place; calibration: batches for static int8, SmoothQuant, GPTQ, AWQ (and data-driven pruning criteria).
    metrics: directions of metric names DIRECTIONS does not know; objective: the metric the frontier uses
    (default: the first one evaluate returns). train_quantized: with train, also fine-tune after a
    post-training quantization step (the user's loop trains what stays float, e.g. re-fits the head on the
    quantized features; off by default: a loop that backpropagates through int8 kernels fails).
    budget_s: start no new variant after this many seconds.
    extra_plans: plans to run beside the registered ones (e.g. the search's compositions).
    device: cpu | cuda | cuda:N, where every variant is made and measured (the model, example inputs and
    calibration batches are moved there; evaluate/train get the model on it; CPU-only quantized formats are
    skipped with the reason). backends: ("torch", "onnxruntime") also exports and times every variant in ONNX
    Runtime (effml.study.backends: ort_* metrics). claim_ttl_s: a worker's claim on a variant lapses this long
    after its last heartbeat (several workers on one store, e.g. store="postgresql://...": effml.study.claims)."""
    if budget_s is not None and not budget_s > 0:
        raise ConfigError(f"effml.study: budget_s must be > 0, got {budget_s!r}")
    session, chosen = prepare(model, evaluate, example_inputs=example_inputs, train=train, calibration=calibration,
                              plans=plans, devices=devices, store=store, name=name, metrics=metrics,
                              objective=objective, train_steps=train_steps, train_quantized=train_quantized,
                              measure_budget_s=measure_budget_s,
                              model_name=model_name, progress=progress, device=device, backends=backends,
                              claim_ttl_s=claim_ttl_s)
    try:
        return session.run(chosen + list(extra_plans), budget_s)
    finally:
        session.close()


def prepare(model: nn.Module, evaluate: Callable[[nn.Module], Any], *, example_inputs, train=None, calibration=None,
            plans=None, devices=DEFAULT_DEVICES, store="runs.db", name="user", metrics=None, objective=None,
            train_steps=100, train_quantized=False, measure_budget_s=1.0, model_name=None, progress=None, device="cpu",
            backends=("torch",), claim_ttl_s=DEFAULT_TTL_S) -> tuple["Session", list]:
    """Everything `study` checks and computes before the first variant: (the open Session, the plans that fit).
    Fails fast: a model that does not run on example_inputs, a bad device, an evaluate that fails on the
    baseline, a metric of unknown direction."""
    progress = progress or (lambda what, frac: None)
    label = model_name or type(model).__name__
    if not isinstance(model, nn.Module):
        raise ConfigError(f"effml.study needs an nn.Module as model, got {type(model).__name__}")
    if not callable(evaluate):
        raise ConfigError(f"effml.study: evaluate must be callable (model -> number or dict), got "
                          f"{type(evaluate).__name__}")
    if train is not None and not callable(train):
        raise ConfigError(f"effml.study: train must be callable (model, steps) -> None, got {type(train).__name__}")
    if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 1:
        raise ConfigError(f"effml.study: train_steps must be a positive integer, got {train_steps!r}")
    if not isinstance(train_quantized, bool) or train_quantized and train is None:
        raise ConfigError(f"effml.study: train_quantized must be True or False and needs train=, got "
                          f"{train_quantized!r} with train={'given' if train is not None else None}")
    overrides = _overrides(metrics)
    _check_ttl(claim_ttl_s)
    from effml.study.on_device import place, split_plans

    device, backends, example_inputs, calibration = place(model, example_inputs, calibration, device, backends)
    inputs = Inputs.of(example_inputs)
    model.eval()
    _check_runs(model, inputs, label)  # before any work
    have = {n for n, v in (("train", train), ("calibration", calibration)) if v is not None}
    chosen = select(model, plans, have=have)
    chosen.plans, refused = split_plans(chosen.plans, device)  # CPU-only formats: skipped on CUDA, with why
    chosen.skipped += refused
    for spec in devices:  # a bad device name fails here, before any variant
        from effml.hardware import get_device

        get_device(spec.partition(":")[0])
    progress("baseline: evaluating", 0.0)
    try:
        base_metrics = read_metrics(evaluate(model), "evaluate(baseline)")
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's evaluate on the untouched model must work
        raise ConfigError(f"evaluate raised on the baseline model {label}: {type(e).__name__}: {e}") from None
    objective = objective or next(iter(base_metrics))
    if objective not in base_metrics:
        raise ConfigError(f"objective {objective!r} is not among the metrics evaluate returns "
                          f"({', '.join(base_metrics)})")
    dirs = {k: direction(k, overrides) for k in base_metrics}
    fp = _fingerprint(model, inputs, {"metrics": sorted(base_metrics), "train": train is not None,
                                      "train_steps": train_steps if train is not None else None,
                                      "calibration": calibration is not None,
                                      **({"train_quantized": True} if train_quantized else {}),
                                      **({"device": device} if device != "cpu" else {}),
                                      **({"backends": list(backends)} if backends != ("torch",) else {})})
    session = Session(Store(store) if not isinstance(store, Store) else store, not isinstance(store, Store),
                      name, fp, model, evaluate, inputs, chosen.skipped, dirs, objective, tuple(devices), train,
                      train_steps, calibration, measure_budget_s, base_metrics, progress,
                      decoder="decoder" in model_kinds(model) and hasattr(model, "generation_config"),
                      train_quantized=train_quantized,
                      device=device, backends=backends, claim_ttl_s=claim_ttl_s)
    return session, chosen.plans


def _ok_metrics(values: dict, dirs: dict, objective: str, measured: dict, stored_bytes: int, notes) -> dict:
    m = {"status": "ok", "objective": objective, "metrics": values, "directions": dirs,
         "model_bytes": int(stored_bytes), "notes": list(notes),
         **{k: v for k, v in measured.items() if k != "predictions"}}
    acc = values.get("accuracy")
    if acc is not None and 0 <= acc <= 1:
        m["accuracy"] = acc  # the default report's accuracy axis
    return m


@dataclass
class Session:
    """A prepared study (checked model, baseline metrics, fingerprint, open store): `run(plans)` runs plans
    not yet in the store and returns everything stored under this fingerprint. The search calls it per trial."""

    st: Store
    own_store: bool
    name: str
    fp: str
    model: nn.Module
    evaluate: Callable
    inputs: Inputs
    skipped: list
    dirs: dict
    objective: str
    devices: tuple
    train: Callable | None
    train_steps: int
    calibration: Any
    measure_budget_s: float
    base_metrics: dict
    progress: Progress
    decoder: bool = False  # a transformers causal LM: decode speed timed too
    device: str = "cpu"  # where the variants are made and measured
    backends: tuple = ("torch",)  # "onnxruntime" too: ORT metrics per variant (effml.study.backends)
    claim_ttl_s: float = DEFAULT_TTL_S  # workers sharing the store: see effml.study.claims
    train_quantized: bool = False  # train() after post-training quantization steps too (apply_plan)

    def close(self) -> None:
        if self.own_store:
            self.st.close()

    def run(self, plans: list[UserPlan], budget_s: float | None = None) -> UserStudyResult:
        from effml.compress.layers import param_bytes
        from effml.study.pipeline import _machine

        t0 = time.perf_counter()
        name, fp, st = self.name, self.fp, self.st
        res = UserStudyResult(name, fp, self.objective, self.dirs[self.objective], [], {}, list(self.skipped))
        st.put_artifact(name, f"skipped@{fp}", json.dumps(self.skipped).encode())  # the report lists them
        base_key = f"baseline@{fp}"
        todo = {f"{p.key}@{fp}": (i, p) for i, p in enumerate(plans)}
        with Claims(st, name, self.claim_ttl_s) as claims:  # other workers on this store: see claims.py
            for key in claims.take([base_key, *todo], waiting=lambda held: self.progress(
                    f"waiting for {len(held)} variant(s) other workers are computing", 0.0)):
                if key == base_key:
                    self.progress("baseline: measuring", 0.0)
                    meas = measure(self.model, None, self.inputs, budget_s=self.measure_budget_s,
                                   devices=self.devices, decode=self.decoder, backends=self.backends)
                    metrics = _ok_metrics(self.base_metrics, self.dirs, self.objective, meas,
                                          param_bytes(self.model), [])
                    st.put(Run(name, base_key, "baseline", [], metrics, meas["predictions"], _machine()))
                    res.done.append("baseline")
                    continue
                i, plan = todo[key]
                if budget_s is not None and time.perf_counter() - t0 > budget_s:
                    res.remaining = [p.name for k, (_, p) in todo.items() if not st.has(name, k)]
                    break
                frac = (i + 1) / (len(plans) + 1)
                hook = (lambda what, f, n=plan.name: self.progress(f"{n}: {what}", frac))
                metrics, preds = _variant(plan, self.model, self.evaluate, self.inputs, self.dirs, self.objective,
                                          self.devices, self.train, self.train_steps, self.calibration,
                                          self.measure_budget_s, hook, self.decoder, self.backends,
                                          self.train_quantized)
                st.put(Run(name, key, plan.name, plan.chain(), metrics, preds, _machine()))
                res.done.append(plan.name)
        mine = [r for r in st.runs(name) if r.key.endswith(f"@{fp}")]
        res.rows = [_flat(r) for r in mine if r.metrics.get("status") == "ok"]
        res.failed = [(r.name, r.metrics.get("error", "")) for r in mine if r.metrics.get("status") == "failed"]
        res.frontier = _frontier(res.rows, self.objective, self.dirs[self.objective])
        return res


def _variant(plan, baseline, evaluate, inputs, dirs, objective, devices, train, train_steps, calibration,
             measure_budget_s, progress, decoder=False, backends=("torch",), train_quantized=False
             ) -> tuple[dict, dict]:
    """(metrics, predictions) of one plan's variant; a failure at any step is a failed row with its error."""
    stage = "compressing"
    try:
        out = apply_plan(plan, baseline, example_inputs=inputs.args or None, calibration=calibration,
                         train=train, train_steps=train_steps, train_quantized=train_quantized,
                         progress=progress)
        stage = "evaluating"
        progress("evaluating", 1.0)
        values = read_metrics(evaluate(out.model), f"evaluate({plan.name})")
        missing = [k for k in dirs if k not in values]
        if missing:
            raise ConfigError(f"evaluate({plan.name}) returned no {', '.join(missing)} (the baseline had them)")
        stage = "measuring"
        progress("measuring", 1.0)
        meas = measure(out.model, baseline, inputs, budget_s=measure_budget_s, devices=devices, decode=decoder,
                       backends=backends)
    except Exception as e:  # noqa: BLE001 - recorded with its error; the study goes on
        msg = f"{stage}: {type(e).__name__}: {str(e)[:500]}"
        return {"status": "failed", "error": msg}, {}
    return _ok_metrics(values, dirs, objective, meas, out.stored_bytes, out.notes), meas["predictions"]
