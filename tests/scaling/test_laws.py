"""Scaling laws as data: presets, validation, the closed form against brute force, isoFLOP curves."""

import math

import numpy as np
import pytest

from effml.errors import ConfigError, EffmlError
from effml.scaling import (LAWS, ScalingLaw, compute_optimal, get_law, isoflop, loss, optimal_for_params,
                           tokens_per_param_allocation)


def test_presets_are_the_published_constants():
    c = get_law("chinchilla")
    assert (c.E, c.A, c.B, c.alpha, c.beta) == (1.69, 406.4, 410.7, 0.34, 0.28)
    full = get_law("chinchilla-full")
    # ln A = 6.00734 -> A = 406.40; ln B = 6.01792 -> B = 410.72 (the rounded preset's 406.4, 410.7)
    assert full.A == pytest.approx(406.4, abs=0.01) and full.B == pytest.approx(410.7, abs=0.03)
    b = get_law("besiroglu")
    assert (b.E, b.A, b.B, b.alpha, b.beta) == (1.8172, 482.01, 2085.43, 0.3478, 0.3658)
    assert {"chinchilla", "chinchilla-full", "besiroglu"} <= set(LAWS)


def test_derived_exponents_and_G():
    law = get_law("chinchilla")
    # a = β/(α+β) = 0.28/0.62 = 0.45161, b = 0.34/0.62 = 0.54839
    assert law.a == pytest.approx(0.28 / 0.62) and law.b == pytest.approx(0.34 / 0.62)
    # G = (0.34·406.4 / (0.28·410.7))^(1/0.62) = (138.176/114.996)^1.6129 = 1.3447
    assert law.G == pytest.approx(1.3447, abs=1e-4)


@pytest.mark.parametrize("law", ["chinchilla", "chinchilla-full", "besiroglu"])
@pytest.mark.parametrize("C", [1e19, 5.76e23, 1e26])
def test_closed_form_is_the_minimum_along_the_isoflop_line(law, C):
    opt = compute_optimal(C, law)
    # C = 6·N_opt·D_opt exactly, because a + b = 1
    assert 6 * opt.params * opt.tokens == pytest.approx(C, rel=1e-12)
    # brute force: loss on 20001 log-spaced N within ×100 of the optimum, D = C/6N; the argmin is within one
    # grid step (ratio 100^(2/20000) = 1.00046) of the closed form
    N = np.geomspace(opt.params / 100, opt.params * 100, 20001)
    L = loss(N, C / (6 * N), law)
    assert N[np.argmin(L)] == pytest.approx(opt.params, rel=1e-3)
    assert L.min() == pytest.approx(opt.loss, abs=1e-9)


@pytest.mark.parametrize("law", ["chinchilla", "besiroglu"])
def test_reverse_given_params_inverts_compute_optimal(law):
    # optimal_for_params(N) must return the C whose optimum is N: round trip through the closed form
    for N in (1e8, 7e9, 7e10):
        rev = optimal_for_params(N, law)
        assert compute_optimal(rev.compute, law).params == pytest.approx(N, rel=1e-10)
        assert compute_optimal(rev.compute, law).tokens == pytest.approx(rev.tokens, rel=1e-10)


def test_reverse_7b_with_rounded_constants():
    # D = (N/G)^(α/β)/G = (7e9/1.3447)^(0.34/0.28)/1.3447 = 4.677e11 tokens (66.8 per param), C = 6ND = 1.964e22
    rev = optimal_for_params(7e9)
    assert rev.tokens == pytest.approx(4.677e11, rel=1e-3)
    assert rev.compute == pytest.approx(1.964e22, rel=1e-3)


def test_twenty_tokens_rule_from_compute_and_from_params():
    # N = sqrt(C/(6·20)) = sqrt(5.76e23/120) = 6.928e10, D = 1.386e12
    a = tokens_per_param_allocation(5.76e23)
    assert a.params == pytest.approx(6.928e10, rel=1e-3) and a.tokens == pytest.approx(1.386e12, rel=1e-3)
    b = tokens_per_param_allocation(params=7e9)  # C = 6·20·(7e9)^2 = 5.88e21
    assert b.compute == pytest.approx(5.88e21, rel=1e-12)
    with pytest.raises(ConfigError, match="exactly one"):
        tokens_per_param_allocation(1e20, params=1e9)


def test_isoflop_curve_minimum_and_shape():
    curve = isoflop(1e21, "chinchilla", points=41, span=30)
    assert len(curve.params) == 41 and curve.params[20] == pytest.approx(curve.optimum.params)
    # the middle point is the optimum and both ends are higher (a convex valley in log N)
    assert int(np.argmin(curve.losses)) == 20
    assert curve.losses[0] > curve.losses[20] < curve.losses[-1]
    for N, D in zip(curve.params, curve.tokens):
        assert 6 * N * D == pytest.approx(1e21, rel=1e-12)
    d = curve.to_dict()
    assert d["optimum"]["rule"] == "closed-form" and len(d["losses"]) == 41


def test_custom_law_and_round_trip():
    law = ScalingLaw(2.0, 100.0, 200.0, 0.5, 0.25, name="mine")
    # L(1e4, 1e4) = 2 + 100/100 + 200/10 = 23
    assert loss(1e4, 1e4, law) == pytest.approx(23.0)
    again = ScalingLaw.from_dict(law.to_dict())
    assert again == law
    assert ScalingLaw.from_dict({"law": law.to_dict()}) == law


@pytest.mark.parametrize("kwargs, field", [
    (dict(E=1.7, A=-1, B=400, alpha=0.3, beta=0.3), "A"),
    (dict(E=1.7, A=400, B=400, alpha=0.0, beta=0.3), "alpha"),
    (dict(E=-0.1, A=400, B=400, alpha=0.3, beta=0.3), "E"),
    (dict(E=1.7, A=400, B=float("nan"), alpha=0.3, beta=0.3), "B"),
])
def test_invalid_laws_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"ScalingLaw\.{field}\b"):
        ScalingLaw(**kwargs)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(EffmlError, match="compute"):
        compute_optimal(0)
    with pytest.raises(EffmlError, match="compute"):
        compute_optimal(-5.76e23)
    with pytest.raises(EffmlError, match="N \\(parameters\\)"):
        loss(-1, 1e9)
    with pytest.raises(EffmlError, match="unknown scaling law 'kaplan'"):
        loss(1e9, 1e9, law="kaplan")
    with pytest.raises(ValueError, match="scaling law 'chinchilla' is registered twice"):
        LAWS.add("chinchilla", ScalingLaw(1, 1, 1, 1, 1, name="chinchilla"))
    with pytest.raises(ConfigError, match="missing alpha"):
        ScalingLaw.from_dict({"E": 1, "A": 1, "B": 1, "beta": 1})


def test_loss_broadcasts_over_arrays():
    N = np.array([1e9, 1e10])
    L = loss(N, 2e11)
    assert L.shape == (2,) and L[0] > L[1]
    assert math.isclose(L[1], loss(1e10, 2e11))
