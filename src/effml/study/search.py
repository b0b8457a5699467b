"""Search, not only a list: compositions (prune ratio per layer group x format) searched with Optuna
multi-objective.

    res = search(model, evaluate, example_inputs=(x,), calibration=batches, trials=8)

The fixed plans run first (effml.study.user); those that are a point of the search space (a channel-pruning
ratio, or with per_group=True one per channel group of a CNN of up to MAX_GROUPS groups; then a format) are
told to the sampler as finished trials, so the search starts from them. Each trial is a plan
`search:channel-30%+int8-static` (per group: `channel-30/50/20/40%`, in graph order) run through the same
session (stored as it finishes, resumed from the store when a trial proposes a composition already measured).
The objectives are the study's metric (its direction) and the latency relative to the baseline, 1 / speedup
measured beside it.
"""

from __future__ import annotations

import time

from effml.errors import ConfigError
from effml.study.plans import UserPlan, model_kinds
from effml.study.user import UserStudyResult, prepare

RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


MAX_GROUPS = 6  # a ratio per channel group up to this many groups; more share one ratio


def space(model, have: set[str], example_inputs: tuple | None = None,
          per_group: bool = False) -> tuple[str | None, list[str], dict]:
    """(the pruning method the model takes, its channel groups searched one ratio each ([] = one ratio for
    all), {format name: its quantize steps})."""
    kinds = model_kinds(model)
    prune = "channel" if "conv" in kinds else "ffn" if "heads" in kinds else "fine" if "linear" in kinds else None
    groups: list[str] = []
    if prune == "channel" and per_group:
        from effml.compress.prune import channel_groups

        try:
            names = [g.name for g in channel_groups(model, example_inputs)]
        except Exception:  # noqa: BLE001 - a graph the tracer cannot follow: one ratio for all groups
            names = []
        groups = names if 1 < len(names) <= MAX_GROUPS else []
    formats: dict[str, tuple] = {"fp32": (), "linear-8b": (("quantize", {"method": "linear", "bits": 8}),)}
    if "conv" in kinds and "calibration" in have:
        formats["int8-static"] = (("quantize", {"method": "int8-static"}),)
    if "linear" in kinds:
        formats["int8-dynamic"] = (("quantize", {"method": "int8-dynamic"}),)
    return prune, groups, formats


def _prune_step(prune: str, ratios: tuple[float, ...], groups: list[str]) -> tuple | None:
    if not any(ratios):
        return None
    if groups:  # one ratio per channel group
        return ("prune", {"method": prune, "sparsity": 0.0, "per_layer": dict(zip(groups, ratios))})
    return ("prune", {"method": prune, ("sparsity" if prune in ("channel", "fine") else "ratio"): ratios[0]})


def composition(prune: str | None, ratios: tuple[float, ...], fmt: str, formats: dict,
                groups: list[str] = ()) -> UserPlan | None:
    """The plan of one point of the space (None for the baseline itself)."""
    step = _prune_step(prune, ratios, list(groups)) if prune is not None else None
    steps = ((step,) if step else ()) + formats[fmt]
    if not steps:
        return None
    label = f"{prune}-{'/'.join(str(round(100 * r)) for r in ratios)}%" if step else ""
    label += ("+" if step and fmt != "fp32" else "") + (fmt if fmt != "fp32" else "")
    return UserPlan(f"search:{label}", steps, ("conv", "linear", "heads"))


def _point(chain: list[dict], prune: str | None, groups: list[str], formats: dict) -> tuple | None:
    """(ratios, format) when a stored chain is a point of the search space, else None."""
    n = max(1, len(groups))
    ratios, rest = (0.0,) * n, list(chain)
    if rest and rest[0]["technique"] == "prune":
        cfg = rest[0]["config"]
        if cfg.get("method") != prune:
            return None
        if groups and cfg.get("per_layer"):
            ratios = tuple(cfg["per_layer"].get(g, cfg.get("sparsity", 0.0)) for g in groups)
        else:
            ratios = (cfg.get("sparsity", cfg.get("ratio")),) * n
        rest = rest[1:]
        if not all(r in RATIOS for r in ratios):
            return None
    for name, steps in formats.items():
        if [{"technique": t, "config": dict(c)} for t, c in steps] == rest:
            return ratios, name
    return None


def search(model, evaluate, *, trials: int, budget_s: float | None = None, seed: int = 0, per_group: bool = False,
           **kw) -> UserStudyResult:
    """Run the fixed plans (those kw selects), then `trials` Optuna trials (TPE, multi-objective) under
    `budget_s` (the whole call); the number run is kept in the store, so a rerun resumes rather than adds (a
    proposal of a point already measured costs a trial but no work). Returns every stored variant, fixed and
    searched. per_group: a channel-pruning ratio per channel group (a larger space: give it more trials)."""
    import optuna

    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 0:
        raise ConfigError(f"search trials must be an integer >= 0, got {trials!r}")
    t0 = time.perf_counter()
    kw.pop("extra_plans", None)
    session, fixed = prepare(model, evaluate, **kw)
    try:
        res = session.run(fixed, budget_s)
        have = {n for n in ("train", "calibration") if kw.get(n) is not None}
        prune, groups, formats = space(model, have, session.inputs.args or None, per_group)
        up = session.dirs[session.objective]
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        ratio_keys = [f"ratio:{g}" for g in groups] or ["ratio"]
        dists = {**{k: optuna.distributions.CategoricalDistribution(RATIOS if prune else (0.0,))
                    for k in ratio_keys},
                 "format": optuna.distributions.CategoricalDistribution(tuple(formats))}
        ost = optuna.create_study(directions=["maximize" if up else "minimize", "minimize"],
                                  sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=2))
        seen: dict[tuple, dict] = {}  # (ratios, format) -> its stored row

        def values(row) -> list[float]:
            return [row["metrics"][session.objective], 1.0 / row["speedup_measured"]]

        for row in res.rows:  # seeds: the fixed plans (and earlier searches) that are points of the space
            pt = ((0.0,) * len(ratio_keys), "fp32") if row["name"] == "baseline" else \
                _point(row["chain"], prune, groups, formats)
            if pt is not None and pt not in seen and (prune or not any(pt[0])):
                seen[pt] = row
                ost.add_trial(optuna.trial.create_trial(params={**dict(zip(ratio_keys, pt[0])), "format": pt[1]},
                                                        distributions=dists, values=values(row)))
        searched: list[str] = []
        # `trials` counts the trials run under this study's settings (kept in the store): a rerun resumes
        count_key = f"search-trials@{session.fp}"
        blob = session.st.get_artifact(session.name, count_key)
        done_before = int(blob.decode()) if blob and blob.decode().isdigit() else 0
        for i in range(done_before, trials):
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
            trial = ost.ask(dists)
            pt = (tuple(trial.params[k] for k in ratio_keys), trial.params["format"])
            if pt in seen:  # measured already (a fixed plan, the baseline, or an earlier trial)
                ost.tell(trial, values(seen[pt]))
                session.st.put_artifact(session.name, count_key, str(i + 1).encode())
                continue
            plan = composition(prune, pt[0], pt[1], formats, groups)
            out = session.run([plan])
            searched += out.done
            row = next((r for r in out.rows if r["name"] == plan.name), None)
            if row is None:  # failed (stored with its error)
                ost.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                seen[pt] = row
                ost.tell(trial, values(row))
            session.st.put_artifact(session.name, count_key, str(i + 1).encode())
        final = session.run([])
        final.skipped, final.done = res.skipped, res.done + searched
        return final
    finally:
        session.close()
