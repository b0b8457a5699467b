"""Search, not only a list: compositions (prune ratio x format) searched with Optuna multi-objective.

    res = search(model, evaluate, example_inputs=(x,), calibration=batches, trials=8)

The fixed plans run first (effml.study.user); those that are a point of the search space (a channel or FFN
pruning ratio, then a format) are told to the sampler as finished trials, so the search starts from them.
Each trial is a plan `search:<prune>-<ratio>%+<format>` run through the same session (stored as it finishes,
resumed from the store when a trial proposes a composition already measured). The objectives are the study's
metric (its direction) and the latency relative to the baseline, 1 / speedup measured beside it.
"""

from __future__ import annotations

import time

from effml.errors import ConfigError
from effml.study.plans import UserPlan, model_kinds
from effml.study.user import UserStudyResult, prepare

RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def space(model, have: set[str]) -> tuple[str | None, dict[str, tuple]]:
    """(the pruning method the model takes, {format name: its quantize steps}) for `model`."""
    kinds = model_kinds(model)
    prune = "channel" if "conv" in kinds else "ffn" if "heads" in kinds else "fine" if "linear" in kinds else None
    formats: dict[str, tuple] = {"fp32": (), "linear-8b": (("quantize", {"method": "linear", "bits": 8}),)}
    if "conv" in kinds and "calibration" in have:
        formats["int8-static"] = (("quantize", {"method": "int8-static"}),)
    if "linear" in kinds:
        formats["int8-dynamic"] = (("quantize", {"method": "int8-dynamic"}),)
    return prune, formats


def composition(prune: str | None, ratio: float, fmt: str, formats: dict) -> UserPlan | None:
    steps: tuple = ()
    if prune is not None and ratio > 0:
        key = "sparsity" if prune in ("channel", "fine") else "ratio"
        steps += (("prune", {"method": prune, key: ratio}),)
    steps += formats[fmt]
    if not steps:
        return None  # the baseline itself
    label = (f"{prune}-{round(100 * ratio)}%" if steps[0][0] == "prune" else "") + \
        ("+" if steps[0][0] == "prune" and fmt != "fp32" else "") + (fmt if fmt != "fp32" else "")
    return UserPlan(f"search:{label}", steps, ("conv", "linear", "heads"))


def _point(chain: list[dict], prune: str | None, formats: dict) -> tuple[float, str] | None:
    """(ratio, format) when a stored chain is a point of the search space, else None."""
    ratio, rest = 0.0, list(chain)
    if rest and rest[0]["technique"] == "prune":
        cfg = rest[0]["config"]
        if cfg.get("method") != prune:
            return None
        ratio = cfg.get("sparsity", cfg.get("ratio"))
        rest = rest[1:]
        if ratio not in RATIOS:
            return None
    for name, steps in formats.items():
        if [{"technique": t, "config": dict(c)} for t, c in steps] == rest:
            return ratio, name
    return None


def search(model, evaluate, *, trials: int, budget_s: float | None = None, seed: int = 0, **kw) -> UserStudyResult:
    """Run the fixed plans (those kw selects), then `trials` Optuna trials (TPE, multi-objective) under
    `budget_s` (the whole call); the number run is kept in the store, so a rerun resumes rather than adds (a
    proposal of a point already measured costs a trial but no work). Returns every stored variant, fixed and
    searched."""
    import optuna

    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 0:
        raise ConfigError(f"search trials must be an integer >= 0, got {trials!r}")
    t0 = time.perf_counter()
    kw.pop("extra_plans", None)
    session, fixed = prepare(model, evaluate, **kw)
    try:
        res = session.run(fixed, budget_s)
        have = {n for n in ("train", "calibration") if kw.get(n) is not None}
        prune, formats = space(model, have)
        up = session.dirs[session.objective]
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        dists = {"ratio": optuna.distributions.CategoricalDistribution(RATIOS if prune else (0.0,)),
                 "format": optuna.distributions.CategoricalDistribution(tuple(formats))}
        ost = optuna.create_study(directions=["maximize" if up else "minimize", "minimize"],
                                  sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=2))
        seen: dict[tuple, dict] = {}  # (ratio, format) -> its stored row

        def values(row) -> list[float]:
            return [row["metrics"][session.objective], 1.0 / row["speedup_measured"]]

        for row in res.rows:  # seeds: the fixed plans (and earlier searches) that are points of the space
            pt = (0.0, "fp32") if row["name"] == "baseline" else _point(row["chain"], prune, formats)
            if pt is not None and pt not in seen and pt[0] in dists["ratio"].choices:
                seen[pt] = row
                ost.add_trial(optuna.trial.create_trial(params={"ratio": pt[0], "format": pt[1]},
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
            pt = (trial.params["ratio"], trial.params["format"])
            if pt in seen:  # measured already (a fixed plan, the baseline, or an earlier trial)
                ost.tell(trial, values(seen[pt]))
                session.st.put_artifact(session.name, count_key, str(i + 1).encode())
                continue
            plan = composition(prune, pt[0], pt[1], formats)
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
