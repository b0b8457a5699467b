"""Pareto frontier and efficiency ratio η over study runs, for any pair (or set) of objectives.

A point dominates another when it is at least as good in every objective and strictly better in one.
Accuracy-like objectives are maximised, costs (latency, size, FLOPs, energy, $) minimised. Identical
points do not dominate each other, so duplicates and ties all stay on the frontier. η = accuracy / cost
(the seed's efficiency ratio), per cost objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from effml.errors import ConfigError

MAXIMIZE = frozenset({"accuracy", "top1", "agreement", "cosine", "throughput"})


@dataclass
class Frontier:
    objectives: tuple[str, ...]
    frontier: list[str]  # keys on the frontier, sorted by the first cost objective
    dominated_by: dict[str, list[str]]  # key -> keys that dominate it ([] on the frontier)
    efficiency: dict[str, dict[str, float]] = field(default_factory=dict)  # key -> {cost: η}

    def on_frontier(self, key: str) -> bool:
        return not self.dominated_by[key]

    def to_dict(self) -> dict:
        return {"objectives": list(self.objectives), "frontier": self.frontier,
                "dominated_by": self.dominated_by, "efficiency": self.efficiency}


def _better_or_equal(a: float, b: float, maximize: bool) -> bool:
    return a >= b if maximize else a <= b


def dominates(a: Mapping[str, float], b: Mapping[str, float], objectives: Sequence[str],
              maximize: frozenset[str] = MAXIMIZE) -> bool:
    """True when `a` is at least as good as `b` in every objective and strictly better in one."""
    strictly = False
    for obj in objectives:
        up = obj in maximize
        if not _better_or_equal(a[obj], b[obj], up):
            return False
        strictly |= a[obj] != b[obj]
    return strictly


def pareto(points: Sequence[Mapping], objectives: Sequence[str] = ("accuracy", "latency"), key: str = "key",
           maximize: frozenset[str] = MAXIMIZE) -> Frontier:
    """The frontier of `points` (mappings holding `key` and every objective). O(n²), fine for studies."""
    objectives = tuple(objectives)
    if len(objectives) < 2:
        raise ConfigError(f"pareto needs at least two objectives, got {objectives}")
    for p in points:
        missing = [o for o in (key, *objectives) if o not in p or p[o] is None]
        if missing:
            raise ConfigError(f"point {p.get(key, '?')!r} has no value for {', '.join(missing)}")
    keys = [p[key] for p in points]
    if len(set(keys)) != len(keys):
        raise ConfigError("pareto points need unique keys")
    dominated_by = {p[key]: [q[key] for q in points if q is not p and dominates(q, p, objectives, maximize)]
                    for p in points}
    costs = [o for o in objectives if o not in maximize]
    gains = [o for o in objectives if o in maximize]
    order = costs[0] if costs else objectives[0]
    front = sorted((p for p in points if not dominated_by[p[key]]), key=lambda p: (p[order], p[key]))
    efficiency = {}
    if gains:
        for p in points:
            efficiency[p[key]] = {c: (p[gains[0]] / p[c] if p[c] else float("inf")) for c in costs}
    return Frontier(objectives, [p[key] for p in front], dominated_by, efficiency)
