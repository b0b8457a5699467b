"""Auto-γ's parts: the speedup formula, the measured call times, the draft model's tally carried across calls."""

import pytest
import torch

from effml.llm.autogamma import (
    PRIOR_TOKENS,
    CallCosts,
    _keep_prior,
    best_gamma,
    expected_speedup,
    expected_tokens_per_call,
    model_prior,
    target_costs,
)
from effml.llm.model import ModelArgs, build


def test_formula_values():
    # (1 − 0.8^5) / (1 − 0.8) = 0.67232 / 0.2 = 3.3616 tokens per call; / (4·0.05 + 1) = 2.8013x
    assert expected_tokens_per_call(0.8, 4) == pytest.approx(3.3616)
    assert expected_speedup(0.8, 4, 0.05) == pytest.approx(3.3616 / 1.2)
    assert expected_tokens_per_call(1.0, 4) == 5
    # α = 0.8, c = 0.05: speedups for γ = 5, 6, 7, 8: 3.689/1.25 = 2.951, 3.951/1.3 = 3.039, 4.161/1.35 = 3.082,
    # 4.329/1.4 = 3.092, γ=9: 4.463/1.45 = 3.078 -> γ* = 8
    assert best_gamma(0.8, 0.05) == 8
    # a draft as slow as the target (c = 1) never pays for itself beyond γ = 1: 1.8/2 = 0.9 > 2.44/3 = 0.81
    assert best_gamma(0.8, 1.0) == 1
    assert best_gamma(0.99, 0.01, max_gamma=12) == 12


def test_formula_with_a_verification_pass_that_costs_more_than_a_step():
    # a CPU where a pass over γ+1 tokens costs v(γ) = 1 + 0.5γ steps: α = 0.8, c = 0.05, γ = 4 gives
    # 3.3616 / (4·0.05 + 3) = 1.0505x instead of 2.80x; γ = 1: 1.8 / 1.55 = 1.1613, γ = 2: 2.44 / 2.1 = 1.1619
    v = lambda g: 1 + 0.5 * g
    assert expected_speedup(0.8, 4, 0.05, v(4)) == pytest.approx(3.3616 / 3.2)
    assert best_gamma(0.8, 0.05, verify_cost=v, min_gamma=0) == 2
    # α = 0.3: γ = 1 gives 1.3 / 1.55 = 0.84 < 1, so no speculation (γ = 0, a plain step) is best
    assert best_gamma(0.3, 0.05, verify_cost=v, min_gamma=0) == 0


def test_call_costs_interpolate_the_median_call_time_by_tokens():
    costs = CallCosts()
    for n, t in ((1, 0.1), (1, 0.3), (2, 0.25), (5, 0.4)):
        costs.add(n, t)
    # t(1) = median(0.1, 0.3) = 0.2; t(3) between 2 and 5: 0.25 + 0.15/3 = 0.3; t(8): last slope 0.05/token
    assert costs.t(1) == pytest.approx(0.2) and costs.t(3) == pytest.approx(0.3)
    assert costs.t(8) == pytest.approx(0.55) and costs.v(4) == pytest.approx(2.0)
    costs.add(1, 0.5)  # the medians are kept between adds: a new call is counted at once, median(0.1, 0.3, 0.5)
    assert costs.t(1) == pytest.approx(0.3) and costs.v(4) == pytest.approx(0.4 / 0.3)


def test_a_draft_models_tally_is_kept_per_target_and_law_and_scaled_down():
    args = ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64, vocab_size=50, max_seq_len=32)
    torch.manual_seed(0)
    target, draft = build(args), build(args)
    prior = model_prior(target, draft, (0.0, 0))
    assert prior == [0.0, 0.0] and model_prior(target, draft, (0.0, 0)) is prior  # the same tally next time
    assert model_prior(target, draft, (0.7, 0)) is not prior  # another sampling law: its own α
    _keep_prior(prior, [90, 100])  # 90 of 100 accepted: kept as α = 0.9 over PRIOR_TOKENS (32) tested
    assert prior == pytest.approx([0.9 * PRIOR_TOKENS, PRIOR_TOKENS])
    _keep_prior(prior, [2, 8])  # 28.8 + 2 of 32 + 8 = 30.8 / 40, scaled to 32 tested: α = 0.77
    assert prior[1] == pytest.approx(PRIOR_TOKENS) and prior[0] / prior[1] == pytest.approx(30.8 / 40)
    _keep_prior(small := [0.0, 0.0], [3, 4])  # fewer than PRIOR_TOKENS tested: kept as counted
    assert small == [3, 4]
    assert target_costs(target, "paged") is target_costs(target, "paged")
    assert target_costs(target, "paged") is not target_costs(target, "contiguous")
