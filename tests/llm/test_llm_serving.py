"""The serving types: the Poisson trace's statistics, the result's percentiles, the side-by-side clock."""

import itertools

import pytest
import torch

from effml.errors import ConfigError
from effml.llm.serving import RequestResult, ServeResult, TraceConfig, _Clock, _drive, poisson_trace


def test_poisson_trace_statistics():
    tr = poisson_trace([[1, 2, 3]], TraceConfig(n_requests=4000, rate=5.0, mean_output=40, min_output=1,
                                                max_output=10_000, seed=0))
    gaps = torch.tensor([b.arrival_s - a.arrival_s for a, b in itertools.pairwise(tr)])
    assert (gaps >= 0).all()
    # exponential gaps, mean 1/rate = 0.2 s; the sample mean of 4000 has sd 0.2/√4000 = 0.0032 -> within 5 sd
    assert abs(float(gaps.mean()) - 0.2) < 0.016
    outs = torch.tensor([r.max_new_tokens for r in tr], dtype=torch.float)
    assert abs(float(outs.mean()) - 40.5) < 3.2  # ceil of an exponential(mean 40): mean ≈ 40.5, sd of mean 0.63
    assert poisson_trace([[1]], TraceConfig(n_requests=5, seed=3)) == poisson_trace([[1]], TraceConfig(n_requests=5,
                                                                                                        seed=3))
    clipped = poisson_trace([[1]], TraceConfig(n_requests=200, mean_output=40, min_output=8, max_output=16))
    assert {r.max_new_tokens for r in clipped} <= set(range(8, 17))


def test_bad_trace_input():
    with pytest.raises(ConfigError, match="non-empty prompts"):
        poisson_trace([[]], TraceConfig())
    with pytest.raises(ConfigError, match="rate"):
        TraceConfig(rate=0)
    with pytest.raises(ConfigError, match="min_output <= max_output"):
        TraceConfig(min_output=9, max_output=8)


def test_serve_result_throughput_and_percentiles():
    # four requests arriving at 0, 1, 2, 3 s, first tokens 0.5 s later, finishing at 2, 4, 6, 8 s with 10, 20,
    # 30, 40 tokens: latencies 2, 3, 4, 5 s, TTFT 0.5 s each; 100 tokens over an 8 s makespan = 12.5 tok/s
    reqs = [RequestResult(i, float(i), i + 0.5, 2.0 * (i + 1), 7, list(range(10 * (i + 1)))) for i in range(4)]
    res = ServeResult("continuous", reqs, makespan_s=8.0, steps=40, kv={})
    assert res.generated_tokens == 100 and res.prompt_tokens == 28
    assert res.throughput == pytest.approx(12.5)
    # linear interpolation between order statistics (torch.quantile): p50 of 2, 3, 4, 5 = 3.5; p99 = 4 + 0.97 = 4.97
    assert res.latency_p(50) == pytest.approx(3.5) and res.latency_p(99) == pytest.approx(4.97)
    assert res.ttft_p(50) == pytest.approx(0.5)
    d = res.to_dict()
    assert d["throughput_tok_s"] == pytest.approx(12.5) and [r["tokens"] for r in d["per_request"]] == [10, 20, 30, 40]


def test_drive_alternates_engines_and_times_each_on_its_own_clock():
    calls = []

    def engine(name, n):
        total = 0
        for i in range(n):
            total += yield (lambda k: calls.append((name, k)) or k), (i,), {}
        return total

    clocks = [_Clock(), _Clock()]
    outs = _drive([engine("a", 3), engine("b", 2)], clocks)
    assert outs == [0 + 1 + 2, 0 + 1]  # each engine got back what its own calls returned
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)]  # round robin until each one is done
    assert all(c.now > 0 for c in clocks)
