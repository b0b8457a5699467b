"""Pareto frontier and η on hand-made points."""

import pytest

from effml.errors import ConfigError
from effml.study.pareto import dominates, pareto

POINTS = [
    {"key": "A", "accuracy": 0.90, "latency": 10.0},
    {"key": "B", "accuracy": 0.90, "latency": 10.0},  # duplicate of A: neither dominates the other
    {"key": "C", "accuracy": 0.95, "latency": 20.0},  # more accurate and slower: a trade-off, on the frontier
    {"key": "D", "accuracy": 0.80, "latency": 15.0},  # worse than A and B on both: dominated by both
    {"key": "F", "accuracy": 0.90, "latency": 12.0},  # tie on accuracy, slower: dominated by A and B
    {"key": "G", "accuracy": 0.97, "latency": 40.0},  # best accuracy: on the frontier
]


def test_frontier_with_ties_and_duplicates():
    f = pareto(POINTS)
    assert f.frontier == ["A", "B", "C", "G"]  # sorted by latency, then key
    assert sorted(f.dominated_by["D"]) == ["A", "B", "F"]  # F (0.90, 12) also beats D (0.80, 15)
    assert sorted(f.dominated_by["F"]) == ["A", "B"]
    assert f.dominated_by["A"] == [] and f.on_frontier("B")


def test_one_point_dominating_all():
    best = {"key": "X", "accuracy": 0.99, "latency": 1.0}
    f = pareto(POINTS + [best])
    assert f.frontier == ["X"]
    assert all("X" in f.dominated_by[p["key"]] for p in POINTS)


def test_efficiency_is_accuracy_over_cost():
    f = pareto(POINTS, objectives=("accuracy", "latency"))
    assert f.efficiency["A"]["latency"] == pytest.approx(0.09)  # 0.90 / 10
    assert f.efficiency["G"]["latency"] == pytest.approx(0.97 / 40)


def test_three_objectives_and_direction():
    a = {"accuracy": 0.9, "latency": 1.0, "size": 10}
    b = {"accuracy": 0.9, "latency": 1.0, "size": 11}
    assert dominates(a, b, ("accuracy", "latency", "size"))
    assert not dominates(b, a, ("accuracy", "latency", "size"))
    assert not dominates(a, a, ("accuracy", "latency"))  # equal is not dominating


def test_bad_input():
    with pytest.raises(ConfigError, match="has no value for latency"):
        pareto([{"key": "A", "accuracy": 0.9}])
    with pytest.raises(ConfigError, match="unique keys"):
        pareto([POINTS[0], dict(POINTS[0])])
    with pytest.raises(ConfigError, match="at least two objectives"):
        pareto(POINTS, objectives=("accuracy",))
