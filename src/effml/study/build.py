"""Rebuild a study's report from the store alone (what `effml study` writes and `effml report` re-reads)."""

from __future__ import annotations

import json

from effml.errors import ConfigError
from effml.study import report
from effml.study.rows import Objective, best_within, headline, metric_value, objective_of, report_rows
from effml.study.store import Run, Store


def latest_runs(store: Store, study: str) -> list[Run]:
    """The runs of the study's most recent settings (keys end in '@<fingerprint>'), per kind of row."""
    runs = store.runs(study)
    if not runs:
        known = ", ".join(store.studies()) or "none"
        raise ConfigError(f"the store {str(store.path)!r} has no runs of study {study!r} (studies: {known})")
    # each kind of row (compression variants of `effml study`, NAS trials of `effml nas`) keeps its latest settings
    latest = {kind(r): r.key.rpartition("@")[2] for r in runs}
    return [r for r in runs if r.key.rpartition("@")[2] == latest[kind(r)]]


def kind(run: Run) -> str:
    """'nas' for a trial of `effml nas` (its chain is one 'nas' step), else 'study'."""
    return "nas" if run.chain and run.chain[0].get("technique") == "nas" else "study"


def best_run(runs: list[Run], devices: list[str], objective: Objective | None = None) -> Run:
    """The headline variant: fastest (measured beside the baseline) within 1 pt of its accuracy (within 1% of
    the baseline's value, for another objective); else the baseline."""
    objective = objective or objective_of(runs)
    rows = [r for r in report_rows(runs, devices, objective) if r["status"] == "ok"]
    best = best_within(rows, "latency_beside_ms", objective)
    base = next((r for r in runs if not r.chain), runs[0])
    return next(r for r in runs if r.key == best["key"]) if best else base


def build(store: Store, study: str, devices: list[str] | None = None, title: str | None = None,
          roofline_device: str | None = None, objective: str | None = None) -> tuple[str, list[str]]:
    """(HTML, headline sentences) for the study's latest runs; `objective`: the metric to draw (default: the one
    the runs stored, accuracy for the default study)."""
    from effml.hardware import predict
    from effml.hardware.plot import roofline_figure

    latest = latest_runs(store, study)
    goal = objective_of(latest, objective)
    # the variants with a value of the objective, and the failed ones (listed with their error); not NAS rejects
    runs = [r for r in latest if r.metrics.get("status") == "failed" or metric_value(r, goal.name) is not None]
    if not any(metric_value(r, goal.name) is not None for r in runs):
        raise ConfigError(f"the store {str(store.path)!r} has no run of study {study!r} with a value of "
                          f"{goal.name!r}")
    devices = devices or sorted({d for r in runs for d in r.predictions})
    best = best_run(runs, devices, goal)
    profile = _profile(store, study, best.key)
    roof, note = None, None
    if profile is not None and devices:
        dev = roofline_device or devices[-1]
        dtype = best.predictions.get(dev, {}).get("dtype")
        try:
            roof = roofline_figure({dev: predict(profile, dev, dtype=dtype)}, f"roofline of {best.name} on {dev}")
        except ConfigError as e:  # a device (or dtype) the catalog no longer has, or hand-edited: no roofline
            if roofline_device is not None:
                raise
            note = f"no roofline: {e}"
    base = next((r for r in runs if not r.chain), None)
    meta = {"title": title or f"effml study '{study}'", "objective": goal.label, "best": best.name,
            "variants": len(runs),
            "measured at batch": (base or best).metrics.get("batch"),
            "machine": ", ".join(f"{k} {v}" for k, v in (base or best).machine.items()),
            "devices": ", ".join(devices)}
    if note:
        meta["note"] = note
    rows = [r for r in report_rows(runs, devices, goal) if r["status"] == "ok"]
    html = report.render(runs, devices, best_profile=profile, roofline=roof, meta=meta, objective=goal,
                         skipped=skipped_plans(store, study, runs))
    return html, headline(rows, goal)


def skipped_plans(store: Store, study: str, runs: list[Run]) -> list[tuple[str, str]]:
    """(plan, reason) of the plans a user study skipped, as it stored them (artifact 'skipped@<fingerprint>' of
    the runs' settings); [] when none were stored."""
    fps = {r.key.rpartition("@")[2] for r in runs if kind(r) == "study"}
    out = []
    for fp in sorted(fps):
        blob = store.get_artifact(study, f"skipped@{fp}")
        if blob is None:
            continue
        try:
            items = json.loads(blob)
            out += [(str(name), str(why)) for name, why in items]
        except (ValueError, TypeError) as e:
            raise ConfigError(f"store {str(store.path)!r}, table artifacts, key 'skipped@{fp}' (study {study!r}) is "
                              f"not a list of [plan, reason] ({type(e).__name__}: {e}); delete that row") from None
    return out


def _profile(store: Store, study: str, key: str):
    """The stored profile of a run, or None; a ConfigError naming the artifact when it is not one."""
    from effml.cost.profile import Profile

    blob = store.get_artifact(study, f"profile:{key}")
    if blob is None:
        return None
    try:
        return Profile.from_dict(json.loads(blob))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"store {str(store.path)!r}, table artifacts, key 'profile:{key}' (study {study!r}) is not "
                          f"an effml profile ({type(e).__name__}: {e}); delete that row and rerun the study") from None
