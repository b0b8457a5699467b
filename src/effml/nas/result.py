"""What a search returns: every trial, the Pareto front of the feasible ones, and its hypervolume."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from effml.nas.budgets import Budget, Cost

if TYPE_CHECKING:
    from effml.nas.search import NasConfig


@dataclass
class NasTrial:
    """One Optuna trial: the architecture, its counted cost, and its proxy accuracy (None when rejected)."""

    number: int
    arch: dict
    name: str
    cost: Cost
    objective: float  # the device cost the search minimises (e.g. latency_s)
    accuracy: float | None
    rejected: str = ""  # why the budget rejected it before training ("" when it fitted)
    reused_from: int | None = None  # an identical architecture's trial whose accuracy was reused
    seconds: float = 0.0  # proxy time
    worker: int = 0

    @property
    def feasible(self) -> bool:
        return not self.rejected

    def to_dict(self) -> dict:
        return asdict(self)  # the Cost nested as a dict


def trial_line(trial: NasTrial | None) -> str:
    """' · last: NAME 41.2%' (or 'rejected') for a progress line; '' before the first trial."""
    if trial is None:
        return ""
    return f" · last: {trial.name[:48]} {'rejected' if trial.rejected else f'{trial.accuracy:.1%}'}"


def pareto_front(trials: list[NasTrial]) -> list[NasTrial]:
    """Feasible trials no other feasible trial dominates on (accuracy up, objective down), by objective."""
    pts = [t for t in trials if t.feasible and t.accuracy is not None]
    front = [t for t in pts if not any(
        o.accuracy >= t.accuracy and o.objective <= t.objective and (o.accuracy, o.objective) != (t.accuracy,
                                                                                                  t.objective)
        for o in pts)]
    return sorted(front, key=lambda t: (t.objective, -t.accuracy, t.number))


def hypervolume(points: list[tuple[float, float]], ref_cost: float, ref_accuracy: float = 0.0) -> float:
    """Area dominated by (accuracy, cost) points inside the box [ref_accuracy, 1] x [0, ref_cost]
    (accuracy maximised, cost minimised); points outside the box add nothing.

    Sweep by cost ascending: each point adds (its accuracy - the best accuracy at lower cost) x (ref - cost).
    """
    area, best = 0.0, ref_accuracy
    for acc, cost in sorted(points, key=lambda p: (p[1], -p[0])):
        if cost >= ref_cost or acc <= best:
            continue
        area += (acc - best) * (ref_cost - cost)
        best = acc
    return area


@dataclass
class NasResult:
    config: NasConfig
    budget: Budget
    study_name: str
    storage: str  # password redacted
    objective: str
    trials: list[NasTrial] = field(default_factory=list)
    note: str = ""  # e.g. the data set the proxy really used

    @property
    def evaluated(self) -> list[NasTrial]:
        return [t for t in self.trials if t.feasible]

    @property
    def rejected(self) -> list[NasTrial]:
        return [t for t in self.trials if not t.feasible]

    @property
    def front(self) -> list[NasTrial]:
        return pareto_front(self.trials)

    @property
    def best(self) -> NasTrial | None:
        ok = [t for t in self.evaluated if t.accuracy is not None]
        return max(ok, key=lambda t: (t.accuracy, -t.objective)) if ok else None

    def hypervolume(self, ref_cost: float | None = None) -> float:
        """Hypervolume of the feasible trials; reference cost: the largest feasible objective (default)."""
        pts = [(t.accuracy, t.objective) for t in self.evaluated if t.accuracy is not None]
        if not pts:
            return 0.0
        return hypervolume(pts, ref_cost if ref_cost is not None else max(c for _, c in pts) * 1.0001)

    def to_dict(self) -> dict:
        best = self.best
        return {"config": self.config.to_dict(), "budget": self.budget.to_dict(), "study_name": self.study_name,
                "storage": self.storage, "objective": self.objective, "note": self.note,
                "trials_evaluated": len(self.evaluated), "trials_rejected": len(self.rejected),
                "best": best.to_dict() if best else None, "front": [t.to_dict() for t in self.front],
                "hypervolume": self.hypervolume(), "trials": [t.to_dict() for t in self.trials]}
