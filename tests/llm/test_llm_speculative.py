"""Speculative decoding: greedy output identical to the target's; sampling matches the target's distribution."""

import pytest
import torch
from scipy.stats import chisquare

from effml.errors import ConfigError
from effml.llm.autogamma import CallCosts
from effml.llm.draft import layer_subset
from effml.llm.generate import GenerateConfig, generate, next_probs
from effml.llm.model import ModelArgs, build
from effml.llm.speculative import SpecConfig, speculative_generate


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models: a forward is a few hundred small ops, so thread hand-offs cost more than they save, and on a
    # shared, loaded CPU a second thread mostly waits (these tests took > 300 s under load with 2 threads)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def target():
    return build(ModelArgs.preset("tiny", n_layers=3), seed=0, std=0.3)


@pytest.fixture(scope="module")
def drafts(target):
    return {"independent": build(ModelArgs.preset("tiny", n_layers=1), seed=1, std=0.3),
            "layer-subset": layer_subset(target, (0,)),
            "frequent-head": layer_subset(target, (0, 2), torch.arange(0, 97, 2)),  # even ids only: q=0 for odd
            "self": target}


def test_greedy_output_is_identical_to_the_targets_on_many_prompts(target, drafts):
    g = torch.Generator().manual_seed(0)
    kinds = ("contiguous", "paged", "none")
    checked = 0
    for i in range(16):  # 16 prompts x 4 drafts (rotating) x 3 γ, the KV strategy rotating too: 48 checks
        prompt = torch.randint(0, 97, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g).tolist()
        ref = generate(target, prompt, GenerateConfig(max_new_tokens=24)).tokens
        name = list(drafts)[i % len(drafts)]
        for j, gamma in enumerate((1, 4, "auto")):
            kv = kinds[(i + j) % 3]
            res = speculative_generate(target, drafts[name], prompt, SpecConfig(gamma=gamma, max_new_tokens=24, kv=kv))
            assert res.tokens == ref, (i, name, gamma, kv)
            checked += 1
    assert checked == 48


def test_a_perfect_draft_is_always_accepted(target):
    # draft = target: α = 1, every call yields γ accepted + 1 bonus token = γ + 1 tokens (Leviathan eq. 1 at α→1)
    res = speculative_generate(target, target, [3, 1, 4], SpecConfig(gamma=4, max_new_tokens=40))
    assert res.alpha == 1.0 and res.target_calls == 8 and res.tokens_per_target_call == 5.0  # 40 / (4 + 1)


def test_counters_are_consistent(target, drafts):
    res = speculative_generate(target, drafts["independent"], [1, 2], SpecConfig(gamma=3, max_new_tokens=30))
    assert res.proposed == 3 * res.target_calls and res.draft_calls == res.proposed
    assert res.accepted <= res.tested <= res.proposed
    # every target call emits its accepted drafts + one token of its own (the last call may be cut at 30)
    assert len(res.tokens) <= res.accepted + res.target_calls
    d = res.to_dict()
    assert d["alpha"] == res.accepted / res.tested and d["new_tokens"] == 30


def test_auto_measures_a_plain_step_and_reports_v(target, drafts):
    res = speculative_generate(target, drafts["layer-subset"], [5, 6, 7], SpecConfig(gamma="auto", max_new_tokens=30,
                                                                                     reuse_costs=False))
    assert res.gamma_history[:5] == [0, 1, 2, 4, 6]  # the warm-up: a plain step, then γ = 1, 2, 4, 6
    assert res.step_s > 0 and res.verify_calls == sum(g > 0 for g in res.gamma_history)
    assert res.v == pytest.approx(res.verify_time_s / res.verify_calls / res.step_s)


def test_auto_keeps_the_targets_call_times_for_later_prompts(drafts):
    # t(T) is the target's and the machine's: a second prompt on the same target skips the warm-up rounds whose
    # pass lengths are already timed; reuse_costs=False warms up again. A fresh target (no shared state with the
    # other tests) so the first call starts with nothing timed
    from effml.llm.autogamma import target_costs

    t = build(ModelArgs.preset("tiny", vocab_size=97))
    cfg = SpecConfig(gamma="auto", max_new_tokens=24)
    first = speculative_generate(t, drafts["layer-subset"], [5, 6, 7], cfg)
    assert first.gamma_history[:5] == [0, 1, 2, 4, 6]
    timed = set(target_costs(t, "contiguous").by_tokens)
    assert {1, 2, 3, 5, 7} <= timed  # the warm-up's passes: γ + 1 tokens each
    second = speculative_generate(t, drafts["layer-subset"], [8, 9, 10], cfg)
    assert second.gamma_history[:5] != [0, 1, 2, 4, 6] and second.step_s > 0
    assert second.tokens == generate(t, [8, 9, 10], GenerateConfig(max_new_tokens=24)).tokens
    again = speculative_generate(t, drafts["layer-subset"], [8, 9, 10], SpecConfig(gamma="auto", max_new_tokens=24,
                                                                                 reuse_costs=False))
    assert again.gamma_history[:5] == [0, 1, 2, 4, 6]
    costs = CallCosts(keep=3)
    for i in range(5):
        costs.add(1, float(i))
    assert list(costs.by_tokens[1]) == [2.0, 3.0, 4.0]  # the last `keep` calls: t(T) follows the machine's drift


def test_vocabulary_mismatch_is_refused(target):
    other = build(ModelArgs.preset("tiny", vocab_size=50))
    with pytest.raises(ConfigError, match="draft vocabulary \\(50 tokens\\) differs from the target's \\(97\\)"):
        speculative_generate(target, other, [1, 2, 3])


def test_bad_requests(target, drafts):
    with pytest.raises(ConfigError, match="prompt is empty"):
        speculative_generate(target, drafts["self"], [])
    with pytest.raises(ConfigError, match="exceeds the model's context of 256"):
        speculative_generate(target, drafts["self"], [1] * 250, SpecConfig(max_new_tokens=10))
    with pytest.raises(ConfigError, match="gamma"):
        SpecConfig(gamma=0)


# ---- sampling: the output distribution is the target's -------------------------------------------------
V = 6  # a 6-token vocabulary: the joint law of two tokens has 36 cells, enumerable exactly


def _exact_two_token_law(model, prompt, temperature):
    """P(x1, x2 | prompt) = p(x1 | prompt) · p(x2 | prompt, x1), computed from the model (36 cells)."""
    with torch.no_grad():
        p1 = next_probs(model(torch.tensor([prompt]))[0, -1], temperature)  # (V,)
        seqs = torch.tensor([prompt + [x] for x in range(V)])  # (V, T+1)
        p2 = next_probs(model(seqs)[:, -1], temperature)  # (V, V)
    return (p1[:, None] * p2).flatten().double()  # (V*V,)


def _chi2(samples, law):
    """Pearson's test of the samples against `law`; cells expected < 5 times are pooled into one (the χ²
    approximation needs expected counts of about 5 or more)."""
    counts = torch.zeros(V * V, dtype=torch.float64)
    for a, b in samples:
        counts[a * V + b] += 1
    law = law.double() / law.double().sum()  # fp32 probabilities sum to 1 only to ~1e-7; scipy checks 1.5e-8
    expected = law * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    return chisquare(obs.numpy(), exp.numpy()).pvalue


def test_sampling_matches_the_targets_distribution():
    target = build(ModelArgs.preset("tiny", vocab_size=V), seed=0, std=0.15)
    draft = build(ModelArgs.preset("tiny", vocab_size=V, n_layers=1), seed=5, std=0.15)
    prompt, temp, n = [1, 4, 2], 1.0, 400
    law = _exact_two_token_law(target, prompt, temp)
    draft_law = _exact_two_token_law(draft, prompt, temp)
    assert 0.5 * (law - draft_law).abs().sum() > 0.5  # the draft is really different (total variation 0.76)
    # power: Σ (q − p)² / p = 43.8 per sample here, so a sampler that returned the draft's law would give a
    # non-central χ² with λ ≈ 400 · 43.8 ≈ 17,500 on ≤ 35 d.o.f. (rejected at any level); n = 400 keeps the
    # test a few seconds while most of the 36 cells still expect >= 5 samples
    spec = [speculative_generate(target, draft, prompt, SpecConfig(gamma=2, max_new_tokens=2, temperature=temp,
                                                                   seed=s)).tokens for s in range(n)]
    # H0: samples ~ target law. Seeds are fixed, so the p-value is a fixed number; a correct sampler gives a
    # uniform p (so > 0.01 with probability 0.99), a wrong one p ≈ 0 at n = 400.
    assert _chi2(spec, law) > 0.01
    # power check: the draft's own samples (what "always accept" would output) are rejected by the same test
    naive = [generate(draft, prompt, GenerateConfig(max_new_tokens=2, temperature=temp, seed=s)).tokens
             for s in range(n)]
    assert _chi2(naive, law) < 1e-6


def test_prompt_lookup_proposes_the_latest_continuation_and_keeps_greedy_identical(target):
    from effml.llm.lookup import PromptLookup

    lk = PromptLookup(max_ngram=3)  # its matching: test_llm_lookup.py
    for prompt in ([5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [3, 1, 4, 1, 5, 9, 2, 6], [11]):
        ref = generate(target, prompt, GenerateConfig(max_new_tokens=24)).tokens
        for gamma in (2, "auto"):
            res = speculative_generate(target, lk, prompt, SpecConfig(gamma=gamma, max_new_tokens=24))
            assert res.tokens == ref and res.draft_calls == 0


def test_prompt_lookup_sampling_matches_the_targets_distribution():
    from effml.llm.lookup import PromptLookup

    target = build(ModelArgs.preset("tiny", vocab_size=V), seed=0, std=0.15)
    prompt, temp, n = [1, 4, 2, 1, 4], 1.0, 400  # the lookup proposes "2 1" (what followed "1 4") every time
    law = _exact_two_token_law(target, prompt, temp)
    law = law / law.sum()  # float32 probabilities: the sum is 1 only to ~1e-7, scipy wants 1.5e-8
    spec = [speculative_generate(target, PromptLookup(), prompt, SpecConfig(gamma=2, max_new_tokens=2,
                                                                             temperature=temp, seed=s)).tokens
            for s in range(n)]
    # the same test as above: a correct sampler gives p > 0.01 with probability 0.99; one that kept the
    # proposal "2 1" whenever p(2) > 0 would put far more than law[2 * V + 1] of the mass on that cell
    assert law[2 * V + 1] < 0.2  # so "always accept" (every sample "2 1") is far from the target's law
    assert _chi2(spec, law) > 0.01
    assert _chi2([[2, 1]] * n, law) < 1e-6



def test_lookup_first_uses_both_proposers_and_keeps_greedy_identical(target, drafts):
    from effml.llm.lookup import LookupFirst

    both = LookupFirst(drafts["independent"])
    used = {"lookup": 0, "model": 0}
    for prompt in ([5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [3, 1, 4, 1, 5, 9, 2, 6], [11, 12, 13, 11, 12]):
        ref = generate(target, prompt, GenerateConfig(max_new_tokens=24)).tokens
        for gamma in (2, "auto"):
            res = speculative_generate(target, both, prompt, SpecConfig(gamma=gamma, max_new_tokens=24))
            assert res.tokens == ref, (prompt, gamma)
            used["lookup"] += res.lookup_rounds
            used["model"] += res.draft_calls
    assert used["lookup"] > 0 and used["model"] > 0  # both kinds of round ran (else this tests one of them only)


def test_auto_retests_a_draft_it_stopped_using(target, drafts, monkeypatch):
    # γ = 0 tests nothing, so α is never revised once auto chooses it: after RETEST_AFTER plain steps in a row one
    # γ = 1 round tests the draft again. A formula that always prefers plain steps shows the pattern
    import effml.llm.speculative as spec

    monkeypatch.setattr(spec, "best_gamma", lambda a, c, max_gamma, v, min_gamma: 0)
    cfg = SpecConfig(gamma="auto", max_new_tokens=30, reuse_costs=False)
    res = speculative_generate(target, drafts["independent"], [3, 1, 4], cfg)
    warm, k = len(SpecConfig().warmup_gammas), spec.RETEST_AFTER
    after = res.gamma_history[warm:]
    assert after[:2 * (k + 1)] == ([0] * k + [1]) * 2
    assert res.tokens == generate(target, [3, 1, 4], GenerateConfig(max_new_tokens=30)).tokens


def test_auto_gives_a_round_to_the_proposer_that_promises_more(target, drafts, monkeypatch):
    # γ = auto with both proposers: where the lookup matches, the round still goes to the model draft when its
    # measured α and cost promise more. The formula is replaced by a fixed verdict (model: `model_gain`, lookup:
    # 1.0; γ = 4 for both) so the outcome does not depend on this machine's timings
    import effml.llm.speculative as spec
    from effml.llm.lookup import LookupFirst, PromptLookup

    both = LookupFirst(drafts["independent"], PromptLookup(min_ngram=1))
    prompt = [5, 6, 7, 5, 6, 7, 5, 6, 7, 5, 6]
    ref = generate(target, prompt, GenerateConfig(max_new_tokens=40)).tokens
    warm = len(SpecConfig().warmup_gammas)
    monkeypatch.setattr(spec, "best_gamma", lambda a, c, max_gamma, v, min_gamma: 4)
    lookups, rounds = {}, {}
    for model_gain in (3.0, 0.5):
        monkeypatch.setattr(spec, "expected_speedup", lambda a, g, c, v=1.0, m=model_gain: m if c > 0 else 1.0)
        res = speculative_generate(target, both, prompt, SpecConfig(gamma="auto", max_new_tokens=40,
                                                                    reuse_costs=False))
        assert res.tokens == ref
        lookups[model_gain], rounds[model_gain] = res.lookup_rounds, len(res.gamma_history)
    # the model promising more: lookup in the warm-up rounds (no verdict yet), the first round after it (the
    # model's α not measured yet) and one round in RETEST_AFTER + 1 after that (its α kept measured); promising
    # less: lookup wherever it matches
    assert lookups[3.0] <= warm + 1 + (rounds[3.0] - warm) // (spec.RETEST_AFTER + 1) < lookups[0.5]


def test_a_lookup_retested_after_being_passed_over_gets_a_first_rounds_gamma(target, drafts, monkeypatch):
    # a lookup passed over RETEST_AFTER times proposes the next round at the γ of a first round (α = FIRST_ALPHA),
    # not at the short γ its own low α picks: a copying span must be able to prove itself. best_gamma is replaced
    # by a verdict that tells the two apart (5 at FIRST_ALPHA, 2 otherwise) and the model always promises more
    import effml.llm.speculative as spec
    from effml.llm.autogamma import FIRST_ALPHA
    from effml.llm.lookup import LookupFirst, PromptLookup

    both = LookupFirst(drafts["independent"], PromptLookup(min_ngram=1))
    found, match = [], both.lookup.match
    monkeypatch.setattr(both.lookup, "match", lambda seq, g: found.append(len(match(seq, g)[1])) or match(seq, g))
    monkeypatch.setattr(spec, "best_gamma", lambda a, c, max_gamma, v, min_gamma: 5 if a == FIRST_ALPHA else 2)
    monkeypatch.setattr(spec, "expected_speedup", lambda a, g, c, v=1.0: 3.0 if c > 0 else 1.0)
    prompt = [5, 6, 7, 5, 6, 7, 5, 6, 7, 5, 6]
    res = speculative_generate(target, both, prompt, SpecConfig(gamma="auto", max_new_tokens=40, reuse_costs=False))
    assert res.tokens == generate(target, prompt, GenerateConfig(max_new_tokens=40)).tokens
    warm = len(SpecConfig().warmup_gammas)
    sized = [i for i in range(warm, len(res.gamma_history)) if res.gamma_history[i] != 2]
    # every such round is a lookup's at the first-round γ (its proposal may be shorter); its first + >= 2 retests
    assert all(found[i] and res.gamma_history[i] == min(5, found[i]) for i in sized) and len(sized) >= 3


def test_auto_carries_the_draft_models_alpha_to_later_prompts(target, drafts):
    # α of a draft model is the pair's (unlike a lookup's, the text's): auto keeps its tally from earlier calls,
    # scaled down to PRIOR_TOKENS tested, as pseudo-counts that the result's own counts leave out
    import copy

    import effml.llm.autogamma as spec

    t, d = copy.deepcopy(target), drafts["layer-subset"]  # a fresh entry in the per-target tables
    cfg = SpecConfig(gamma="auto", max_new_tokens=24)
    first = speculative_generate(t, d, [5, 6, 7], cfg)
    prior = spec.model_prior(t, d, (0.0, 0))
    scale = min(1.0, spec.PRIOR_TOKENS / first.tested)
    assert first.tested > 0 and prior == pytest.approx([first.accepted * scale, first.tested * scale])
    acc0, n0 = prior
    second = speculative_generate(t, d, [8, 9, 10], cfg)
    assert second.tokens == generate(t, [8, 9, 10], GenerateConfig(max_new_tokens=24)).tokens
    scale = min(1.0, spec.PRIOR_TOKENS / (n0 + second.tested))
    assert spec.model_prior(t, d, (0.0, 0)) == pytest.approx([(acc0 + second.accepted) * scale,
                                                               (n0 + second.tested) * scale])
    before = list(spec.model_prior(t, d, (0.0, 0)))
    speculative_generate(t, d, [8, 9, 10], SpecConfig(gamma="auto", max_new_tokens=24, reuse_costs=False))
    assert spec.model_prior(t, d, (0.0, 0)) == before  # reuse_costs=False: neither read nor kept
    assert spec.model_prior(t, d, (1.0, 0)) == [0.0, 0.0]  # sampling's law has its own tally


def test_lookup_first_sampling_matches_the_targets_distribution():
    from effml.llm.lookup import LookupFirst

    target = build(ModelArgs.preset("tiny", vocab_size=V), seed=0, std=0.15)
    draft = build(ModelArgs.preset("tiny", vocab_size=V, n_layers=1), seed=5, std=0.15)
    prompt, temp, n = [1, 4, 2, 1, 4], 1.0, 400  # round 1: lookup proposes "2 1"; after a rejection, often the model
    law = _exact_two_token_law(target, prompt, temp)
    law = law / law.sum()
    runs = [speculative_generate(target, LookupFirst(draft), prompt, SpecConfig(gamma=2, max_new_tokens=2,
                                                                                temperature=temp, seed=s))
            for s in range(n)]
    assert sum(r.draft_calls > 0 for r in runs) > 20 and all(r.lookup_rounds >= 1 for r in runs)
    # a correct sampler gives p > 0.01 with probability 0.99 (see the two tests above)
    assert _chi2([r.tokens for r in runs], law) > 0.01


# ---- self-speculation on the target's KV cache ------------------------------------------------------------
def _tokens_fed(model):
    """Count the tokens every forward of `model` is fed (a forward pre-hook on the embedding)."""
    fed = [0]
    model.tok_embeddings.register_forward_pre_hook(lambda m, a: fed.__setitem__(0, fed[0] + a[0].numel()))
    return fed


def test_a_self_int4_draft_shares_the_targets_cache_and_keeps_greedy_identical(target):
    import copy

    from effml.llm.engine import FormatConfig, prepare, to_format

    prompt = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 9, 1]
    ref = generate(target, prompt, GenerateConfig(max_new_tokens=24)).tokens
    for kv in ("contiguous", "paged", "none"):
        runs = {}
        for share in (True, False):
            draft = copy.deepcopy(target)  # the target with int4 weights: the same architecture, other numbers
            to_format(draft, FormatConfig("int4"))
            prepare(draft)
            fed = _tokens_fed(draft)
            res = speculative_generate(target, draft, prompt, SpecConfig(gamma=3, max_new_tokens=24, kv=kv,
                                                                         share_kv=share))
            assert res.tokens == ref and res.shared_kv == share and res.to_dict()["shared_kv"] == share, (kv, share)
            runs[share] = (res, fed[0])
        shared, own = runs[True], runs[False]
        # shared: one token per draft call (the round's last committed token, then its own drafts), no prompt pass
        if kv != "none":  # (without a cache, every call re-feeds the whole history: counted differently)
            assert shared[1] == shared[0].draft_calls
            # its own cache: the prompt (all but its last token) plus the catch-up of every round's accepted tokens
            assert own[1] >= own[0].draft_calls + len(prompt) - 1


def test_a_shared_cache_keeps_the_sampling_law_exact():
    # a same-architecture draft with other weights reads the target's K/V for the committed tokens: its proposals
    # are still a function of the committed tokens alone, so the output law is the target's (same test as above)
    target = build(ModelArgs.preset("tiny", vocab_size=V), seed=0, std=0.15)
    draft = build(ModelArgs.preset("tiny", vocab_size=V), seed=5, std=0.15)
    prompt, temp, n = [1, 4, 2], 1.0, 400
    law = _exact_two_token_law(target, prompt, temp)
    assert 0.5 * (law - _exact_two_token_law(draft, prompt, temp)).abs().sum() > 0.3  # a different model
    spec = [speculative_generate(target, draft, prompt, SpecConfig(gamma=2, max_new_tokens=2, temperature=temp,
                                                                   seed=s, share_kv=True)).tokens for s in range(n)]
    assert _chi2(spec, law) > 0.01


def test_sharing_needs_the_same_architecture(target, drafts):
    with pytest.raises(ConfigError, match="share_kv=True.*n_layers"):
        speculative_generate(target, drafts["layer-subset"], [1, 2], SpecConfig(share_kv=True))
    with pytest.raises(ConfigError, match="share_kv must be"):
        SpecConfig(share_kv="yes")
    # auto: a different architecture runs on its own cache (the layer-subset draft works as before)
    res = speculative_generate(target, drafts["layer-subset"], [1, 2], SpecConfig(gamma=2, max_new_tokens=8))
    assert res.tokens == generate(target, [1, 2], GenerateConfig(max_new_tokens=8)).tokens


@pytest.mark.parametrize("curve", ["flat", "steps of 4"])
def test_an_untested_proposer_starts_at_the_gamma_its_costs_favour(target, curve):
    """A proposer with no verdict yet gets the γ the formula picks for α = FIRST_ALPHA on the target's measured
    call times: long where a long pass costs little, short where passes past 4 tokens cost a second block of rows
    (gemv_tiles' 4-row passes on AVX2). The times are given (a fresh CallCosts with every warm-up pass recorded, so
    no warm-up round runs): the choice, not this machine's timings, is under test."""
    import copy

    import effml.llm.speculative as spec
    from effml.llm.autogamma import FIRST_ALPHA, best_gamma
    from effml.llm.lookup import PromptLookup

    t = copy.deepcopy(target)  # its own entry in the per-target cost table
    ratios = {"flat": [1.0, 1.02, 1.05, 1.08, 1.12, 1.16, 1.2],
              "steps of 4": [1.0, 1.1, 1.2, 1.3, 1.9, 2.0, 2.3]}[curve]  # t(T) / t(1) for T = 1..7
    costs = spec.target_costs(t, "contiguous")
    for T, r in enumerate(ratios, start=1):
        costs.add(T, 0.02 * r)
    want = best_gamma(FIRST_ALPHA, 0.0, 7, costs.v, min_gamma=1)
    assert want == (7 if curve == "flat" else 3)  # the two regimes this rule separates
    prompt = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14] * 3  # a 3-gram match with a long continuation
    res = speculative_generate(t, PromptLookup(), prompt, SpecConfig(gamma="auto", max_new_tokens=8))
    assert res.gamma_history[0] == want
    assert res.tokens == generate(t, prompt, GenerateConfig(max_new_tokens=8)).tokens


def test_auto_gamma_goes_at_most_one_token_past_the_longest_pass_measured(target, monkeypatch):
    # t(T) past the longest verification measured is an extrapolation, so γ may grow by at most one per round
    # beyond the warm-up's. A chooser that always wants the longest γ it is allowed (what a perfect free draft
    # makes the formula do) shows the allowance round by round, independent of the machine's timings
    import effml.llm.speculative as spec

    allowed = []
    monkeypatch.setattr(spec, "best_gamma", lambda a, c, max_gamma, v, min_gamma: allowed.append(max_gamma) or
                        max_gamma)
    res = speculative_generate(target, target, [3, 1, 4], SpecConfig(gamma="auto", max_new_tokens=120, max_gamma=12,
                                                                     reuse_costs=False))
    warm = len(SpecConfig().warmup_gammas)
    assert res.gamma_history[:warm] == [0, 1, 2, 4, 6]  # passes of 1, 2, 3, 5, 7 tokens measured
    assert allowed[:6] == [7, 8, 9, 10, 11, 12] and set(allowed[6:]) == {12}  # then 8, 9, ... tokens, up to max_gamma
    assert res.gamma_history[warm:warm + 6] == [7, 8, 9, 10, 11, 12]
