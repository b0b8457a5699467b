"""`effml.nas.search(NasConfig(...))`: Optuna multi-objective search, budgets as hard constraints.

Objectives: proxy accuracy (maximised) and a device cost (minimised; predicted int8 latency on the device
by default). Each trial:
  1. the sampler proposes an architecture (one categorical parameter per searchable choice of the space);
  2. it is counted on the meta device (`budgets.cost_of`): SRAM, flash, latency, energy;
  3. if it breaks a budget it is rejected *before any training*: told to Optuna as infeasible (constraint
     values > 0, which TPE and NSGA-II use to steer away) and not counted against `trials`;
  4. otherwise the proxy scores it (an identical architecture already scored in the study is reused), and
     it counts as one of the `trials` evaluated trials.
Every trial, rejected ones included, is written to the effml study store (`store`), so `effml report`
draws the NAS trials beside the compression variants.

Scale-out: the Optuna study lives in an RDB storage (`storage`: a SQLAlchemy URL; default a SQLite file
beside the store, `postgresql://...` works the same). `workers` processes share it: the `trials` quota
is split between them up front (worker i runs trials // workers + (i < trials % workers)), so together
they evaluate exactly `trials`; each trial number is Optuna's, unique in the storage. Rerunning the same
config resumes: only the missing evaluated trials are run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from effml.errors import ConfigError, EffmlError
from effml.nas.budgets import (
    Budget,
    Cost,
    budget_for,
    check_reachable,
    cost_of,
    predictions,
)
from effml.nas.proxy import ProxyConfig, get_proxy, run_proxy
from effml.nas.result import NasResult, NasTrial, trial_line
from effml.nas.spaces import Space, get_space
from effml.registries import Registry
from effml.progress import Progress

# the device cost a search minimises, read off a trial's counted Cost
OBJECTIVES: Registry[Callable[[Cost], float]] = Registry("NAS objective")
OBJECTIVES.add("latency", lambda c: c.latency_s)
OBJECTIVES.add("energy", lambda c: c.energy_j)
OBJECTIVES.add("flash", lambda c: float(c.flash_bytes))
OBJECTIVES.add("sram", lambda c: float(c.sram_bytes))
OBJECTIVES.add("macs", lambda c: float(c.macs))
SAMPLERS: Registry = Registry("NAS sampler")
STUDY_DEVICES = ("rpi5", "jetson-orin-nano-8gb", "h100-sxm")  # also predicted, as `effml study` does


@SAMPLERS.register("tpe")
def _tpe(seed: int, trials: int, constraints):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, trials // 4), multivariate=True,
                                      **constraints)


@SAMPLERS.register("nsga2")
def _nsga2(seed: int, trials: int, constraints):
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 4)),
                                         **constraints)


@SAMPLERS.register("random")
def _random(seed: int, trials: int, constraints):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@dataclass(frozen=True)
class NasConfig:
    space: str = "mobilenetv2"
    hw: str = "stm32f746"
    trials: int = 40  # evaluated (budget-feasible) trials; rejected candidates are extra and cheap
    workers: int = 1
    sampler: str = "tpe"
    objective: str = "latency"
    dtype: str = "int8"
    memory: str = "auto"  # budgets.MEMORY_MODES
    sram_kb: float | None = None
    flash_kb: float | None = None
    latency_ms: float | None = None
    energy_mj: float | None = None
    proxy: str | Callable = "train"
    proxy_config: ProxyConfig = field(default_factory=ProxyConfig)
    store: str | None = "runs.db"  # effml study store (SQLite); None: Optuna storage only
    store_study: str = "default"
    storage: str | None = None  # Optuna RDB URL; default sqlite:///<store>.optuna.db
    seed: int = 0
    max_rejections: int = 2000  # per worker: give up when the sampler keeps proposing what cannot fit

    def __post_init__(self):
        if not isinstance(self.trials, int) or self.trials <= 0:
            raise ConfigError(f"NasConfig.trials must be a positive integer, got {self.trials!r}")
        if not isinstance(self.workers, int) or not 1 <= self.workers <= 64:
            raise ConfigError(f"NasConfig.workers must be an integer in 1..64, got {self.workers!r}")
        for name, table in (("sampler", SAMPLERS), ("objective", OBJECTIVES)):
            try:
                table.get(getattr(self, name))
            except ConfigError as exc:
                raise ConfigError(f"NasConfig.{name}: {exc}") from None
        if self.storage is not None and "://" not in str(self.storage):
            raise ConfigError(f"NasConfig.storage {self.storage!r} is not a database URL "
                              "(e.g. sqlite:///nas.db or postgresql://user@127.0.0.1:5432/db)")
        get_proxy(self.proxy)

    def space_obj(self) -> Space:
        return get_space(self.space)

    def budget(self) -> Budget:
        return budget_for(self.hw, memory=self.memory, sram_kb=self.sram_kb, flash_kb=self.flash_kb,
                          latency_ms=self.latency_ms, energy_mj=self.energy_mj)

    def storage_url(self) -> str:
        if self.storage:
            return _driver(self.storage)
        base = Path(self.store) if self.store else Path("nas.db")
        return f"sqlite:///{base.with_suffix('.optuna.db').resolve()}"

    def fingerprint(self) -> str:
        """Everything that changes a trial's numbers (not trials/workers: a bigger run extends a smaller)."""
        space = self.space_obj()
        proxy = self.proxy if isinstance(self.proxy, str) else f"{self.proxy.__module__}.{self.proxy.__qualname__}"
        d = {"space": space.to_dict(), "budget": self.budget().to_dict(), "objective": self.objective,
             "dtype": self.dtype, "sampler": self.sampler, "proxy": proxy, "proxy_config": self.proxy_config.to_dict(),
             "seed": self.seed}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def study_name(self) -> str:
        return f"nas-{self.space_obj().name}-{self.budget().device}-{self.fingerprint()}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["proxy"] = self.proxy if isinstance(self.proxy, str) else getattr(self.proxy, "__qualname__", "callable")
        return d


def search(config: NasConfig | None = None, *, progress: Progress | None = None, **overrides) -> NasResult:
    """Run (or resume) the search; NasConfig fields work as keywords. Returns every trial of the study.

    `progress(what, frac)`: what = "12/40 trials · last: NAME 41.2%", frac = evaluated / trials."""
    config = replace(config, **overrides) if config is not None else NasConfig(**overrides)
    space, budget = config.space_obj(), config.budget()
    check_reachable(space, budget, config.dtype)  # nothing can fit: say so before any search
    made = [f for f in _local_files(config) if not f.exists()]  # files this call creates: removed if it fails first
    try:
        if config.store:  # a file that is not an effml store is refused before the Optuna file is made beside it
            _open_store(config).close()
        study = _study(config)
        done = len(_evaluated(study))
        todo = max(0, config.trials - done)

        def report(done: int, total: int, trial: NasTrial | None) -> None:
            _report(progress, done, total, trial)

        report(done, config.trials, None)
        if todo:
            quotas = [todo // config.workers + (i < todo % config.workers) for i in range(config.workers)]
            if config.workers == 1:
                run_worker(config, quotas[0], 0, progress=progress)
            else:
                _spawn(config, quotas, study, report)
    except BaseException:
        if made and not _any_trial(config):  # nothing was found: leave no half-made store behind (a raising proxy)
            for f in made:
                for g in (f, f.with_name(f.name + "-wal"), f.with_name(f.name + "-shm")):
                    g.unlink(missing_ok=True)
        raise
    return collect(config)


def _local_files(config: NasConfig) -> list[Path]:
    """The SQLite files a search writes on this machine: the effml store and the default Optuna file."""
    files = [Path(config.store)] if config.store and "://" not in config.store else []
    url = config.storage_url()
    if url.startswith("sqlite:///"):
        files.append(Path(url.removeprefix("sqlite:///")))
    return files


def _any_trial(config: NasConfig) -> bool:
    """Whether the Optuna study holds a finished trial (False when it was never made)."""
    try:
        import optuna

        study = optuna.load_study(study_name=config.study_name(), storage=config.storage_url())
        return any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
    except Exception:
        return False


def _report(progress: Progress | None, done: int, total: int, trial: NasTrial | None) -> None:
    """progress("12/40 trials · last: NAME 41.2%", 12 / 40): the evaluated trials of the whole study."""
    if progress is not None:
        progress(f"{done}/{total} trials{trial_line(trial)}", done / max(total, 1))


def collect(config: NasConfig) -> NasResult:
    """The study's trials as a NasResult (from the storage alone)."""
    import optuna

    study = optuna.load_study(study_name=config.study_name(), storage=config.storage_url())
    trials = [_to_trial(t) for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    notes = {t.user_attrs.get("note", "") for t in study.get_trials(deepcopy=False)} - {""}
    return NasResult(config, config.budget(), config.study_name(), _redact(config.storage_url()),
                     config.objective, trials, "; ".join(sorted(notes)))


# ---- one worker ------------------------------------------------------------------------------------
def run_worker(config: NasConfig, quota: int, worker: int = 0, progress: Progress | None = None) -> int:
    """Evaluate `quota` trials of the shared study (plus any rejected ones); returns trials evaluated.
    `progress(what, frac)` after each trial, counting the whole study's evaluated trials."""
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(config.proxy_config.threads)
    space, budget = config.space_obj(), config.budget()
    params = space.searchable()
    # Optuna >= 5 reads constraints set on the trial; older releases take a constraints_func
    legacy = {} if _TRIAL_CONSTRAINTS() else {"constraints_func": _constraints}
    samp = SAMPLERS[config.sampler](config.seed * 1000 + worker, config.trials, legacy)
    study = optuna.load_study(study_name=config.study_name(), storage=config.storage_url(), sampler=samp)
    store = _open_store(config)
    evaluated = rejected = 0
    try:
        while evaluated < quota:
            trial = study.ask()
            arch = space.check({k: trial.suggest_categorical(k, list(v)) for k, v in params.items()})
            rec = _evaluate(config, space, budget, study, trial, arch, worker)
            study.tell(trial, [rec.accuracy or 0.0, rec.objective])
            if store is not None:
                store.put(_run(config, space, rec))
            if rec.feasible:
                evaluated += 1
            else:
                rejected += 1
                if rejected > config.max_rejections:
                    raise EffmlError(f"worker {worker}: {rejected} proposals broke the budget in a row of "
                                     f"{evaluated + rejected}; the feasible region of {space.name!r} is too "
                                     "small for this sampler: loosen the budget")
            if progress is not None:
                _report(progress, len(_evaluated(study)), config.trials, rec)
    finally:
        if store is not None:
            store.close()
    return evaluated


def _evaluate(config: NasConfig, space: Space, budget: Budget, study, trial, arch: dict, worker: int) -> NasTrial:
    cost = cost_of(space, arch, budget.device, config.dtype)
    objective = OBJECTIVES[config.objective](cost)
    over = budget.violations(cost)
    attrs = {"arch": arch, "name": space.describe(arch), "cost": cost.to_dict(), "objective": objective,
             "constraints": budget.constraints(cost), "worker": worker, "accuracy": None, "rejected": "",
             "reused_from": None, "seconds": 0.0}
    if over:
        attrs["rejected"] = "breaks " + ", ".join(over) + f" ({budget.explain(cost)})"
    else:
        twin = _twin(study, trial.params)
        if twin is not None:
            attrs["accuracy"], attrs["reused_from"] = twin.user_attrs["accuracy"], twin.number
        else:
            res = run_proxy(config.proxy, space, arch, config.proxy_config)
            attrs["accuracy"], attrs["seconds"] = res.accuracy, res.seconds
            if res.note:
                attrs["note"] = res.note
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if _TRIAL_CONSTRAINTS():
        for k, v in budget.constraints(cost).items():
            trial.set_constraint(k, v)
    return _to_trial(trial, number=trial.number, attrs=attrs)


def _twin(study, params: dict):
    """A finished, evaluated trial of the study with exactly these parameters (its accuracy is reused)."""
    for t in study.get_trials(deepcopy=False, states=_complete()):
        if t.params == params and t.user_attrs.get("accuracy") is not None:
            return t
    return None


def _complete():
    from optuna.trial import TrialState

    return (TrialState.COMPLETE,)


def _constraints(trial) -> list[float]:
    return list(trial.user_attrs.get("constraints", {"unknown": 1.0}).values())


def _TRIAL_CONSTRAINTS() -> bool:
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def _to_trial(t, number: int | None = None, attrs: dict | None = None) -> NasTrial:
    a = attrs if attrs is not None else t.user_attrs
    return NasTrial(t.number if number is None else number, dict(a["arch"]), a["name"], Cost(**a["cost"]),
                    float(a["objective"]), a["accuracy"], a["rejected"], a["reused_from"], float(a["seconds"]),
                    int(a["worker"]))


def _evaluated(study) -> list:
    return [t for t in study.get_trials(deepcopy=False, states=_complete()) if not t.user_attrs.get("rejected")]


def _study(config: NasConfig):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(study_name=config.study_name(), storage=config.storage_url(),
                                   directions=["maximize", "minimize"], load_if_exists=True)
    except ImportError as exc:  # e.g. postgresql:// without psycopg2
        raise ConfigError(f"storage {_redact(config.storage_url())}: driver missing ({exc}); "
                          "pip install psycopg2-binary for PostgreSQL") from None
    except Exception as exc:  # sqlalchemy.exc.OperationalError and friends: a server down, a bad path
        if "sqlalchemy" in type(exc).__module__:
            raise ConfigError(f"storage {_redact(config.storage_url())}: cannot open it "
                              f"({str(exc).splitlines()[0]})") from None
        raise


def _driver(url: str) -> str:
    from effml.study.store_pg import driver_url  # one rule for the NAS storage and the study store

    return driver_url(url)


def _redact(url: str) -> str:
    from effml.study.store_pg import mask_url

    return mask_url(url)


# ---- several workers ----------------------------------------------------------------------------------
def _worker_main(config: NasConfig, quota: int, worker: int) -> None:
    run_worker(config, quota, worker)


def _spawn(config: NasConfig, quotas: list[int], study, report) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(config, q, i), daemon=True) for i, q in enumerate(quotas) if q]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(0.5)
            report(len(_evaluated(study)), config.trials, None)
    finally:
        for p in procs:
            p.join(timeout=1 if any(p.is_alive() for p in procs) else None)
            if p.is_alive():
                p.terminate()
    failed = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise EffmlError(f"NAS worker(s) {', '.join(map(str, failed))} failed (exit codes "
                         f"{', '.join(str(procs[i].exitcode) for i in failed)}); their finished trials are kept "
                         "in the storage: run the same command again to resume")
    report(len(_evaluated(study)), config.trials, None)


# ---- the study store -----------------------------------------------------------------------------------
def _open_store(config: NasConfig):
    if not config.store:
        return None
    from effml.study.store import Store

    return Store(config.store)


def _run(config: NasConfig, space: Space, t: NasTrial):
    """One study-store row per trial: key 'nas:<trial>@<optuna study name>' (the report groups by it)."""
    from effml.study.store import Run

    c = t.cost
    devices = [(config.hw, config.dtype)] + [(d, None) for d in STUDY_DEVICES if d != c.device]
    preds = predictions(space, t.arch, devices)
    if config.hw != c.device:  # the store keys predictions by catalog key
        preds[c.device] = preds.pop(config.hw)
    metrics = {"accuracy": t.accuracy, "params": c.params, "model_bytes": c.flash_bytes,
               "flops": c.flops, "macs": c.macs, "sram_bytes": c.sram_bytes,
               "flash_bytes": c.flash_bytes, "objective": t.objective, "rejected": t.rejected or None,
               "reused_from": t.reused_from, "proxy_seconds": t.seconds, "lower_bound": c.lower_bound}
    chain = [{"technique": "nas", "config": {"space": space.name, "arch": t.arch, "trial": t.number,
                                             "sampler": config.sampler, "proxy": config.to_dict()["proxy"],
                                             "proxy_config": config.proxy_config.to_dict()}}]
    return Run(config.store_study, f"nas:{t.number}@{config.study_name()}", f"nas#{t.number} {t.name}", chain,
               metrics, preds, {"worker": t.worker})
