"""`effml study`: train a baseline, make every variant, measure and predict each, store it, resume.

Every finished variant is one store row (see store.py), keyed by its plan and a fingerprint of the study
settings, so a study that is killed or runs out of budget resumes where it stopped, and a study run with
other settings never mixes its numbers with this one's. Workers sharing a store (e.g. on several machines
over postgresql://) split the work through claims (claims.py): one trains the baseline, each variant is
computed once, and each worker returns with every variant.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from effml.errors import ConfigError
from effml.progress import Progress, no_progress
from effml.study.claims import DEFAULT_TTL_S, Claims
from effml.study.store import Run, Store
from effml.study.variants import PLANS, Plan, StudyContext, apply

DEFAULT_MODEL = "effml.zoo:lenet5"
# The default baseline is LeNet-5 at twice its width: compression needs something to remove. At width 1
# (61.7k params) no variant was both >= 1.5x faster and within 1 pt here: halving its channels cost 2.0 pt
# after 2 epochs of fine-tuning (1.45x faster), removing 40% cost 0.75 pt at no measurable speedup.
DEFAULT_MODEL_ARGS = {DEFAULT_MODEL: (("width", 2.0),)}
DEFAULT_DEVICES = ("stm32f746:int8", "rpi5", "jetson-orin-nano-8gb", "h100-sxm")


@dataclass(frozen=True)
class StudyConfig:
    model: str = DEFAULT_MODEL  # package.module:callable
    model_args: tuple[tuple[str, Any], ...] | None = None  # constructor arguments; None: DEFAULT_MODEL_ARGS
    data: str = "fashion-mnist"
    devices: tuple[str, ...] = DEFAULT_DEVICES  # catalog names, optionally name:dtype
    study: str = "default"
    epochs: float = 3.0
    finetune_epochs: float = 0.5
    batch_size: int = 128
    measure_batch: int = 256  # latency is measured (and predicted) for one batch of this size
    measure_budget_s: float = 2.0
    train_limit: int | None = None
    test_limit: int | None = None
    plans: tuple[str, ...] | None = None  # default: every plan in PLANS
    budget_min: float | None = None  # stop starting new variants after this many minutes
    calibrate: bool = True  # calibrate this machine first when it has no `local` device yet
    seed: int = 0
    claim_ttl_s: float = DEFAULT_TTL_S  # a worker's claim on a variant lapses this long after its last heartbeat
    device: str = "cpu"  # where latency and peak memory are measured (cpu | cuda:N; effml.study.on_device)
    backends: tuple[str, ...] = ("torch",)  # "onnxruntime" too: ORT metrics per variant (effml.study.backends)

    def __post_init__(self):
        if self.epochs <= 0 or self.finetune_epochs <= 0:
            raise ConfigError("StudyConfig.epochs and finetune_epochs must be > 0")
        for f in ("batch_size", "measure_batch"):
            if getattr(self, f) <= 0:
                raise ConfigError(f"StudyConfig.{f} must be positive, got {getattr(self, f)}")
        unknown = [p for p in (self.plans or ()) if p not in PLANS]
        if unknown:
            raise ConfigError(f"unknown variant plan(s) {', '.join(unknown)}; known: {', '.join(PLANS)}")
        if self.budget_min is not None and self.budget_min <= 0:
            raise ConfigError(f"StudyConfig.budget_min must be > 0, got {self.budget_min}")
        if isinstance(self.claim_ttl_s, bool) or not isinstance(self.claim_ttl_s, (int, float)) \
                or not self.claim_ttl_s > 0:
            raise ConfigError(f"StudyConfig.claim_ttl_s must be a number of seconds > 0, got {self.claim_ttl_s!r}")
        from effml.measure.device import resolve_device
        from effml.study.backends import check_backends

        object.__setattr__(self, "device", resolve_device(self.device, flag="StudyConfig.device"))  # cuda -> cuda:0
        object.__setattr__(self, "backends", check_backends(self.backends, self.device, "StudyConfig.backends"))

    @property
    def constructor_args(self) -> dict:
        """The baseline's constructor arguments (the default model's defaults when model_args is None)."""
        return dict(self.model_args if self.model_args is not None else DEFAULT_MODEL_ARGS.get(self.model, ()))

    def fingerprint(self) -> str:
        """Hash of everything that changes the numbers (not the plan list, devices or budget)."""
        keys = ("model", "data", "epochs", "finetune_epochs", "batch_size", "measure_batch", "train_limit",
                "test_limit", "seed")
        blob = json.dumps({**{k: getattr(self, k) for k in keys}, "model_args": self.constructor_args,
                           **({"device": self.device} if self.device != "cpu" else {}),
                           **({"backends": list(self.backends)} if tuple(self.backends) != ("torch",) else {})},
                          sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:8]


@dataclass
class StudyResult:
    study: str
    fingerprint: str
    runs: list[Run]
    done: list[str] = field(default_factory=list)  # plan names finished by this call
    skipped: list[str] = field(default_factory=list)  # already in the store
    remaining: list[str] = field(default_factory=list)  # not started: out of budget
    data: dict = field(default_factory=dict)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (plan, why): no kernel on config.device

    def to_dict(self) -> dict:
        return {**asdict(self), "runs": [r.to_dict() for r in self.runs]}




def _builder(spec: str):
    from effml.models import model_builder

    return model_builder(spec)  # a zoo NAME or module:callable; what it raises is named by spec


def _build(fn, data, seed: int = 0, /, **extra):
    """The model with its initial weights drawn from `seed`: one study fingerprint, one baseline."""
    params = inspect.signature(fn).parameters
    kw = {k: v for k, v in (("in_channels", data.input_shape[1]), ("num_classes", data.num_classes), *extra.items())
          if k in params}
    if extra and not set(extra) <= set(params):
        raise ConfigError(f"model {fn.__name__} takes no {', '.join(sorted(set(extra) - set(params)))} argument "
                          f"(it takes {', '.join(params) or 'none'}); a distillation student needs `width`")
    torch.manual_seed(seed)
    return fn(**kw)


def _student_args(args: dict) -> dict:
    """The distillation student: the baseline's constructor arguments at half its width."""
    return {**args, "width": 0.5 * float(args.get("width", 1.0))}


def _load_data(config: StudyConfig, fn):
    from effml.zoo import data as zdata

    entry = getattr(fn, "zoo_entry", None)
    size = entry.input_shape[-1] if entry is not None else None
    return zdata.load(config.data, batch_size=config.batch_size, seed=config.seed, train_limit=config.train_limit,
                      test_limit=config.test_limit, image_size=size)


def _state_bytes(model) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def _load_state(model, blob: bytes, what: str = "the stored weights") -> None:
    from safetensors.torch import load

    try:
        model.load_state_dict(load(blob))
    except Exception as e:  # a hand-edited artifact, or weights of another model under this key
        raise ConfigError(f"{what} cannot be loaded into the model ({type(e).__name__}: {str(e)[:200]}); "
                          "delete that row (or use another --store) to train the baseline again") from None


def _machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "processor": platform.processor()}


def _devices(specs) -> list[tuple[str, str | None]]:
    out = []
    for spec in specs:
        name, _, dtype = spec.partition(":")
        out.append((name, dtype or None))
    return out


def evaluate_variant(model, stored_bytes: int, data, config: StudyConfig, devices,
                     baseline=None) -> tuple[dict, dict, dict]:
    """(metrics, predictions, profile dict): accuracy, counted cost, measured latency, per-device roofline."""
    import effml
    from effml.hardware import DeviceError, predict
    from effml.measure.ab import beside
    from effml.train.classifier import evaluate

    from effml.study.measured import resident_bytes
    from effml.train.measured import AllocatorPeak

    from effml.study.on_device import for_timing, recorded

    x = data.test.x[: config.measure_batch]
    prof = effml.profile(model, x)
    tm, tb, tx = for_timing(model, baseline, x, config.device)  # on --device (copies on a GPU)
    m, speedup = beside(tm, tb, (tx,), budget_s=config.measure_budget_s)  # timed in turn
    # peak memory = resident weights + the allocator's peak in one forward: the RSS high-water mark stays flat
    # (0 B) for a model run after a larger one, since the process already holds the pages (kept as rss_delta)
    with AllocatorPeak(config.device) as alloc, torch.inference_mode():
        tm(tx)
    resident = resident_bytes(tm)
    metrics = {"accuracy": evaluate(model, data.test), "params": prof.params, "model_bytes": int(stored_bytes),
               "flops": prof.total().flops, "macs": prof.total().macs, "bytes_moved": prof.total().bytes,
               "latency_p50_s": m.p50, "latency_p90_s": m.p90, "throughput": m.throughput_per_s,
               "speedup_measured": speedup, "peak_mem_bytes": resident + alloc.peak_bytes,
               "resident_bytes": resident, "activation_peak_bytes": alloc.peak_bytes,
               "rss_delta_bytes": m.memory.rss_delta_bytes if m.memory else None,
               "batch": config.measure_batch, "lower_bound": prof.is_lower_bound}
    metrics.update(recorded(config.device))
    if "onnxruntime" in config.backends:
        from effml.study.backends import ort_metrics

        metrics.update(ort_metrics(model, baseline, (x,), budget_s=config.measure_budget_s, torch_p50_s=m.p50*speedup))
    try:  # `local` is this machine's CPU calibration: no prediction of a GPU measurement from it
        metrics["local_pred_s"] = predict(prof, "local", batch=config.measure_batch).time_s \
            if config.device == "cpu" else None
    except DeviceError:
        metrics["local_pred_s"] = None
    preds = {}
    for name, dtype in devices:
        p = predict(prof, name, dtype=dtype, batch=config.measure_batch)
        preds[name] = {"latency_s": p.time_s, "energy_j": p.energy.total / config.measure_batch,
                       "usd_per_1m": p.usd_per_1m, "fits": p.fits, "bound": p.bound, "dtype": p.dtype}
    return metrics, preds, prof.to_dict(events=True)


def _ensure_local(progress: Progress) -> None:
    """Calibrate this machine once (~30 s) so every variant gets a `local` prediction beside its measurement."""
    from effml.hardware import local_device_path
    from effml.hardware.calibrate import CalibrateConfig, calibrate

    if not local_device_path().exists():
        cal = calibrate(CalibrateConfig(), progress=lambda what, frac: progress(f"calibrating this machine: {what}", frac))
        cal.save(None)


def run_study(config: StudyConfig, store: Store, progress: Progress | None = None) -> StudyResult:
    """Run (or resume) a study; returns what is in the store for it once this call stops.

    `progress(what, frac)`: what = "<variant>: <step>", frac = the fraction of that variant's step done."""
    progress = progress or no_progress
    t0 = time.perf_counter()
    fp = config.fingerprint()
    fn = _builder(config.model)
    data = _load_data(config, fn)
    devices = _devices(config.devices)
    for name, dtype in devices:  # fail fast on a bad device, before any training
        from effml.hardware import get_device

        dev = get_device(name)
        if dtype:
            dev.peak_flops(dtype)
    baseline = _build(fn, data, config.seed, **config.constructor_args)  # a bad --set fails here, before calibration
    if config.calibrate:
        _ensure_local(progress)
    result = StudyResult(config.study, fp, [], data=data.to_dict())
    base_key = f"baseline@{fp}"
    weights = f"weights:{base_key}"
    with Claims(store, config.study, config.claim_ttl_s) as claims:  # other workers on this store: see claims.py
        trained = False
        for _ in claims.take([weights], done=lambda k: store.get_artifact(config.study, k) is not None):
            from effml.train.classifier import TrainLoopConfig, train_classifier

            train_classifier(baseline, data.train, TrainLoopConfig(epochs=config.epochs, lr=2e-3, seed=config.seed),
                progress=lambda msg, frac: progress(f"baseline: {msg}", frac), evaluate_after=False)
            store.put_artifact(config.study, weights, _state_bytes(baseline))
            trained = True
        if not trained:
            _load_state(baseline, store.get_artifact(config.study, weights),
                        f"store {str(store.path)!r}, table artifacts, key '{weights}'")
        baseline.eval()
        example = (data.test.x[:1],)
        plans = {f"{p.key}@{fp}": p for p in (PLANS[n] for n in (config.plans or PLANS))}
        from effml.study.on_device import split_plans

        kept, result.refused = split_plans(list(plans.values()), config.device)  # CPU-only int8 on CUDA: listed
        plans = {k: p for k, p in plans.items() if p in kept}
        result.skipped = [p.name for key, p in plans.items() if store.has(config.study, key)]
        for key in claims.take([base_key, *plans], waiting=lambda held: progress(
                f"waiting for {len(held)} variant(s) other workers are computing", 0.0)):
            if key == base_key:
                progress("baseline: measuring", 1.0)
                from effml.compress.layers import param_bytes

                metrics, preds, prof = evaluate_variant(baseline, param_bytes(baseline), data, config, devices)
                store.put_artifact(config.study, f"profile:{base_key}", json.dumps(prof).encode())
                store.put(Run(config.study, base_key, "baseline", [], metrics, preds, _machine()))
                result.done.append("baseline")
                continue
            plan = plans[key]
            if config.budget_min is not None and time.perf_counter() - t0 > 60 * config.budget_min:
                result.remaining = [p.name for k, p in plans.items() if not store.has(config.study, k)]
                break
            ctx = StudyContext(data, example, config.finetune_epochs,
                               student=lambda: _build(fn, data, config.seed, **_student_args(config.constructor_args)),
                               teacher=baseline,
                               progress=lambda what, frac, n=plan.name: progress(f"{n}: {what}", frac),
                               seed=config.seed)
            out = apply(plan, baseline, ctx)
            progress(f"{plan.name}: measuring", 1.0)
            metrics, preds, prof = evaluate_variant(out.model, out.stored_bytes, data, config, devices, baseline)
            metrics["notes"] = out.notes
            store.put_artifact(config.study, f"profile:{key}", json.dumps(prof).encode())
            store.put(Run(config.study, key, plan.name, plan.chain(), metrics, preds, _machine()))
            result.done.append(plan.name)
    result.runs = [r for r in store.runs(config.study) if r.key.endswith(f"@{fp}")]
    return result
