"""Rebuild a study's report from the store alone (what `effml study` writes and `effml report` re-reads)."""

from __future__ import annotations

import json

from effml.errors import ConfigError
from effml.study import report
from effml.study.rows import flatten, headline
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


def best_run(runs: list[Run], devices: list[str]) -> Run:
    """The headline variant: fastest (measured) within 1 pt of the baseline; else the baseline."""
    rows = {r.key: flatten(r, devices) for r in runs}
    base = next((r for r in runs if not r.chain), runs[0])
    b = rows[base.key]
    ok = [r for r in runs if r is not base and rows[r.key]["latency_ms"] and rows[r.key]["accuracy"] is not None
          and 100 * (b["accuracy"] - rows[r.key]["accuracy"]) <= 1.0]
    return min(ok, key=lambda r: rows[r.key]["latency_ms"]) if ok else base


def build(store: Store, study: str, devices: list[str] | None = None, title: str | None = None,
          roofline_device: str | None = None) -> tuple[str, list[str]]:
    """(HTML, headline sentences) for the study's latest runs."""
    from effml.hardware import predict
    from effml.hardware.plot import roofline_figure

    runs = [r for r in latest_runs(store, study) if r.metrics.get("accuracy") is not None]  # not NAS rejects
    if not runs:
        raise ConfigError(f"the store {str(store.path)!r} has no run of study {study!r} with an accuracy")
    devices = devices or sorted({d for r in runs for d in r.predictions})
    best = best_run(runs, devices)
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
    meta = {"title": title or f"effml study '{study}'", "best": best.name, "variants": len(runs),
            "measured at batch": (base or best).metrics.get("batch"),
            "machine": ", ".join(f"{k} {v}" for k, v in (base or best).machine.items()),
            "devices": ", ".join(devices)}
    if note:
        meta["note"] = note
    rows = [flatten(r, devices) for r in runs]
    return report.render(runs, devices, best_profile=profile, roofline=roof, meta=meta), headline(rows)


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
