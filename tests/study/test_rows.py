"""Report rows: the objective read from the stored runs, the latency frontier on side-by-side ratios."""

import pytest

from effml.errors import ConfigError
from effml.study.rows import ACCURACY, Objective, frontier_keys, headline, objective_of, report_rows
from effml.study.store import Run


def _run(name, value=None, size=100_000, p50=None, speedup=None, objective=None, up=True, **extra):
    """A hand-made run; with `objective` a user-study run (metrics.metrics, metrics.directions)."""
    chain = [] if name == "baseline" else [{"technique": name.split("-")[0], "config": {}}]
    m = {"model_bytes": size, "latency_p50_s": p50, "speedup_measured": speedup, **extra}
    if objective is None:
        m["accuracy"] = value
    else:
        m.update(status="ok", objective=objective, metrics={objective: value}, directions={objective: up})
    return Run("t", f"{name}@fp", name, chain, m)


def test_speedup_one_variant_is_not_on_the_frontier():
    runs = [
        _run("baseline", 0.90, 400_000, 2.0e-3),
        # timed 1.00x beside the baseline; its own p50, read minutes later, was lower (1.9 ms): it is no faster
        _run("noop-0%", 0.90, 400_000, 1.9e-3, speedup=1.00),
        # 2.00x beside the baseline, though its own p50 (1.2 ms, a busier moment) is only 1.67x below 2.0 ms
        _run("int8", 0.898, 100_000, 1.2e-3, speedup=2.00),
    ]
    rows = report_rows(runs, [])
    beside = {r["name"]: r["latency_beside_ms"] for r in rows}
    assert beside == {"baseline": 2.0, "noop-0%": 2.0, "int8": 1.0}  # 2.0 ms / 1.00, 2.0 ms / 2.00
    assert frontier_keys(rows, "latency_beside_ms") == ["int8@fp", "baseline@fp"]  # noop ties: the baseline stays
    # on the absolute p50s, noop (1.9 ms, 90%) would beat the baseline (2.0 ms, 90%) and sit on the frontier
    assert frontier_keys(rows, "latency_ms") == ["int8@fp", "noop-0%@fp"]
    assert [r["latency_ms"] for r in rows] == pytest.approx([2.0, 1.9, 1.2])  # the table keeps the raw p50
    # fastest within 1 pt: int8, 2.00x (the ratio measured beside the baseline, not 2.0 / 1.2 = 1.67x)
    assert headline(rows)[0] == ("int8 is 4.0× smaller and 2.00× faster (measured) at -0.2 pt accuracy (89.8% vs "
                                 "90.0%): the fastest within 1 pt.")


def _ppl_runs():
    o = dict(objective="perplexity", up=False)
    return [
        _run("baseline", 12.0, 400_000, 2.0e-3, **o),
        _run("int8", 12.1, 100_000, 1.1e-3, speedup=2.0, **o),  # beside: 2.0 / 2.0 = 1.0 ms
        _run("prune-30%", 15.0, 300_000, 1.5e-3, speedup=1.5, **o),  # 1.33 ms and worse than int8: dominated
        _run("int4", 20.0, 50_000, 0.6e-3, speedup=4.0, **o),  # 0.5 ms
    ]


def test_perplexity_objective_minimizes():
    runs = _ppl_runs()
    goal = objective_of(runs)
    assert goal == Objective("perplexity", False) and goal.label == "perplexity (lower is better)"
    rows = report_rows(runs, [], goal)
    assert frontier_keys(rows, "latency_beside_ms", goal) == ["int4@fp", "int8@fp", "baseline@fp"]
    # read as higher-is-better, int4 (0.5 ms, 20) would dominate every other row
    assert frontier_keys(rows, "latency_beside_ms", Objective("perplexity", True)) == ["int4@fp"]
    # within 1% of 12.0 (<= 12.12) only int8 (12.1): the fastest and the smallest; (12.1 - 12) / 12 = +0.8%,
    # 400k / 100k = 4.0x smaller, 2.00x faster beside the baseline
    line = "int8 is 4.0× smaller and 2.00× faster (measured) at perplexity 12.1 vs 12 (+0.8%), lower is better: the "
    assert headline(rows, goal) == [line + "fastest within 1% of the baseline.",
                                    line + "smallest within 1% of the baseline."]


def test_objective_read_from_the_runs():
    assert objective_of([_run("baseline", 0.9, p50=1e-3)]) == ACCURACY  # the default study
    f1 = [_run("baseline", 0.7, p50=1e-3, objective="f1"), _run("int8", 0.69, p50=1e-3, objective="f1")]
    assert objective_of(f1).label == "f1 (higher is better)"
    acc = [_run("baseline", 0.9, p50=1e-3, objective="accuracy")]
    assert objective_of(acc).percent  # a fraction: shown in % like the default study
    f1[1].metrics["directions"] = {"f1": False}
    with pytest.raises(ConfigError, match="objective 'f1': the stored runs give no single direction"):
        objective_of(f1)
    with pytest.raises(ConfigError, match="objective 'bleu': these runs are of the default study"):
        objective_of([_run("baseline", 0.9)], "bleu")


def test_failed_rows_have_no_metric():
    runs = _ppl_runs() + [Run("t", "gptq@fp", "gptq", [{"technique": "quantize", "config": {}}],
                              {"status": "failed", "error": "evaluating: RuntimeError: boom"})]
    rows = report_rows(runs, ["rpi5"], objective_of(runs))
    failed = rows[-1]
    assert (failed["status"], failed["error"], failed["metric"], failed["latency_beside_ms"]) == (
        "failed", "evaluating: RuntimeError: boom", None, None)
    assert frontier_keys(rows, "latency_beside_ms", objective_of(runs)) == ["int4@fp", "int8@fp", "baseline@fp"]


def test_headline_says_slower_and_larger_when_the_variant_is():
    runs = [
        _run("baseline", 0.90, 400_000, 2.0e-3),
        # the only variant: 0.96x the baseline's speed beside it (slower) and 600k / 400k = 1.5x its size
        _run("wide", 0.90, 600_000, 2.1e-3, speedup=0.96),
    ]
    rows = report_rows(runs, [])
    tail = " at +0.0 pt accuracy (90.0% vs 90.0%): the {} within 1 pt."
    # not "0.96× faster" nor "0.7× smaller": 2.0 ms / (2.0 ms / 0.96) = 0.96 of the speed; 400k / 600k -> 1.5x larger
    line = "wide is 1.5× larger and 0.96× the baseline's speed (measured: slower)" + tail
    assert headline(rows) == [line.format("fastest"), line.format("smallest")]
