"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a draft proposes γ tokens, the target checks
them all in one forward pass.

    res = speculative_generate(target, draft, prompt_ids, SpecConfig(gamma=4, max_new_tokens=128))
    res.tokens        # greedy: identical to generate(target, ...) token for token
    res.alpha, res.tokens_per_target_call, res.c, res.formula_speedup

Greedy (temperature 0): accept draft tokens while they equal the target's argmax; at the first mismatch emit the
target's argmax instead; if all γ match, the target's next argmax is a free bonus token. Sampling: accept x ~ q
with probability min(1, p(x)/q(x)); on rejection sample from norm(max(0, p − q)); the output distribution is
exactly the target's p (Leviathan et al. Thm 1).

Measured: α = accepted / tested draft tokens (each round tests tokens until the first rejection). Expected tokens
per target call (1−α^(γ+1))/(1−α) (Leviathan eq. 1); expected speedup (1−α^(γ+1))/((1−α)(γc+v)) with c = draft
step / target one-token step and v = target pass over γ+1 tokens / target one-token step. Leviathan et al.
(Thm 3.8) take v = 1: on an accelerator a pass over 5 tokens costs what a pass over 1 does (both read the weights
once). On a 2-core CPU it does not: fp32 matmuls with 2-8 rows are already compute-bound, v(4) ≈ 2-2.5 here, and
that, not the draft, caps the speedup at max_γ (γ+1)/v(γ) even for a perfect, free draft.
`gamma="auto"` first tries γ = 0 (a plain target step), 1, 2, 4, 6 to measure the target's call time t(T) by the
number of tokens T it is fed, then re-picks γ in 0..max_gamma every round by maximising the formula with the
running α, c = draft step / t(1) and v(γ) = t(γ+1) / t(1); γ = 0 (no speculation) when nothing pays. A proposer
with no verdict yet (the model draft, a lookup's match of each n-gram length) gets its first round at the γ the
formula picks for an optimistic α = 0.8 (`FIRST_ALPHA`) on the same measured times. The times
belong to the target and the machine, not the prompt: later calls on the same target keep them (the last 64 of
each T, `SpecConfig.reuse_costs`) and skip the warm-up rounds already timed. So does a draft model's α (the pair's:
its tally from earlier prompts, scaled to PRIOR_TOKENS tested, starts the next; with ~10 rounds a prompt, one early
rejection read afresh each time held SmolLM2's int4 draft at γ 1-2 for half an answer), while a lookup's α, the
text's, starts afresh with each prompt; a lookup passed over for the model RETEST_AFTER times is retested at a
first round's γ.

Self-speculation (a quantized copy of the target as its draft) shares the target's KV cache (`share_kv`, on by
default when the draft has the target's architecture): the draft attends to the target's K/V for every committed
token and writes its own only for the tokens it drafts, which the verification pass then overwrites. No prompt pass
through the draft, no catch-up call after a round, half the cache memory; the proposals stay a function of the
committed tokens alone, so greedy output and the sampling law are unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from effml.errors import ConfigError
from effml.llm.autogamma import (
    FIRST_ALPHA,
    RETEST_AFTER,
    CallCosts,
    _keep_prior,
    best_gamma,
    expected_speedup,
    expected_tokens_per_call,
    model_prior,
    target_costs,
)
from effml.llm.generate import SESSIONS, argmax, check_request, new_session, next_probs
from effml.llm.lookup import LookupFirst, PromptLookup
from effml.llm.model import Transformer, compute_dtype


@dataclass(frozen=True)
class SpecConfig:
    gamma: int | str = 4  # or "auto"
    max_gamma: int = 12
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    kv: str = "contiguous"
    stop_token: int | None = None
    seed: int = 0
    warmup_gammas: tuple[int, ...] = (0, 1, 2, 4, 6)  # auto: one round each (capped at max_gamma) before choosing
    share_kv: bool | None = None  # the draft reads the target's KV cache; None: when the architectures match
    reuse_costs: bool = True  # auto: keep the target's t(T) (same kv) and the draft model's α from earlier calls

    def __post_init__(self):
        if self.gamma != "auto" and (not isinstance(self.gamma, int) or self.gamma < 1):
            raise ConfigError(f"SpecConfig.gamma must be a positive int or 'auto', got {self.gamma!r}")
        if self.max_gamma < 1 or self.max_new_tokens < 1:
            raise ConfigError(f"SpecConfig.max_gamma and max_new_tokens must be positive, got {self.max_gamma}, "
                              f"{self.max_new_tokens}")
        if self.temperature < 0 or self.top_k < 0:
            raise ConfigError(f"SpecConfig.temperature and top_k must be >= 0, got {self.temperature}, {self.top_k}")
        if self.kv not in SESSIONS:
            raise ConfigError(f"SpecConfig.kv {self.kv!r} is not one of {', '.join(SESSIONS)}")
        if not self.warmup_gammas or 0 not in self.warmup_gammas or min(self.warmup_gammas) < 0:
            raise ConfigError(f"SpecConfig.warmup_gammas must be non-negative and include 0 (a plain target step, "
                              f"the unit of v and c), got {self.warmup_gammas}")
        if self.share_kv not in (None, True, False):
            raise ConfigError(f"SpecConfig.share_kv must be True, False or None (auto), got {self.share_kv!r}")


@dataclass
class SpecResult:
    prompt_tokens: int
    tokens: list[int]
    gamma: int  # the last γ used (auto: the chosen one)
    accepted: int  # draft tokens accepted
    tested: int  # draft tokens checked (accepted + rejections)
    proposed: int  # draft tokens drafted
    target_calls: int  # target passes after the prefill: verifications + plain steps (auto's γ = 0 rounds)
    draft_calls: int
    draft_time_s: float
    target_time_s: float
    time_s: float
    verify_calls: int = 0  # passes that checked >= 1 draft token
    verify_time_s: float = 0.0
    step_s: float = 0.0  # median one-token target pass on this target (auto; reused costs too); 0: not measured
    lookup_rounds: int = 0  # rounds proposed by prompt lookup (PromptLookup, LookupFirst)
    prefill_s: float = 0.0  # the prompt's pass through the target and the draft model (all but the last token)
    gamma_history: list[int] = field(default_factory=list, repr=False)
    shared_kv: bool = False  # the draft model ran on the target's KV cache (SpecConfig.share_kv)

    @property
    def alpha(self) -> float:
        return self.accepted / self.tested if self.tested else 0.0

    @property
    def c(self) -> float:
        """Draft call time / target one-token step (step_s), or / the mean verification pass if no step was
        measured (Leviathan's reading, where a pass costs one step whatever its length)."""
        if not self.draft_calls or not self.verify_calls:
            return 0.0
        unit = self.step_s or self.verify_time_s / self.verify_calls
        return (self.draft_time_s / self.draft_calls) / unit

    @property
    def v(self) -> float:
        """Mean verification pass / one-token step (1.0 when no step was measured)."""
        if not self.step_s or not self.verify_calls:
            return 1.0
        return self.verify_time_s / self.verify_calls / self.step_s

    @property
    def tokens_per_target_call(self) -> float:
        return len(self.tokens) / self.target_calls if self.target_calls else 0.0

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.time_s if self.time_s > 0 else float("inf")

    @property
    def formula_speedup(self) -> float:
        # γ = 0 (auto's plain steps): a one-token pass, v = 1 by definition
        return expected_speedup(min(self.alpha, 0.999999), self.gamma, self.c, self.v if self.gamma else 1.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("gamma_history")
        return {**d, "new_tokens": len(self.tokens), "alpha": self.alpha, "c": self.c, "v": self.v,
                "tokens_per_target_call": self.tokens_per_target_call, "tokens_per_s": self.tokens_per_s,
                "formula_tokens_per_call": expected_tokens_per_call(min(self.alpha, 0.999999), self.gamma),
                "formula_speedup": self.formula_speedup}


def check_pair(target: Transformer, draft: Transformer) -> None:
    """A draft must score the same vocabulary as the target (same ids, same size)."""
    vt, vd = target.args.vocab_size, draft.args.vocab_size
    if vt != vd:
        raise ConfigError(f"draft vocabulary ({vd} tokens) differs from the target's ({vt}): a draft must share "
                          f"the target's tokenizer")


def shares_kv(target: Transformer, draft: Transformer, share: bool | None) -> bool:
    """Whether `draft` runs on the target's KV cache: asked (share=True: an error if it cannot) or, for None,
    whenever it can: the same architecture (a quantized copy of the target: self-speculation) and cache dtype."""
    same = draft.args == target.args and compute_dtype(draft) == compute_dtype(target)
    if share and not same:
        diff = [k for k, v in draft.args.to_dict().items() if target.args.to_dict().get(k) != v]
        what = f"ModelArgs fields {', '.join(diff)}" if diff else \
            f"cache dtype {compute_dtype(draft)} vs {compute_dtype(target)}"
        raise ConfigError(f"SpecConfig.share_kv=True needs a draft with the target's architecture and cache dtype; "
                          f"they differ in {what}")
    return same if share is None else share


class _Timed:
    def __init__(self, costs: CallCosts | None = None):
        self.calls, self.time, self.costs = 0, 0.0, costs

    def __call__(self, session, tokens, last=None):
        t = time.perf_counter()
        out = session.feed(tokens, last=last)
        dt = time.perf_counter() - t
        self.time += dt
        self.calls += 1
        if self.costs is not None:
            self.costs.add(len(tokens), dt)
        return out


def _accept(p: torch.Tensor, q: torch.Tensor, x: int, greedy: bool, gen) -> tuple[bool, int | None]:
    """One draft token x against target probs/logits p and draft probs q (V,). -> (accepted, replacement)."""
    if greedy:
        best = argmax(p)
        return (best == x), (None if best == x else best)
    if q is None:  # a point-mass proposal (prompt lookup): q(x) = 1
        q = torch.zeros_like(p)
        q[x] = 1.0
    if float(torch.rand((), generator=gen)) * float(q[x]) < float(p[x]):  # u < p(x)/q(x), no division by 0
        return True, None
    residual = (p - q).clamp_min(0)
    residual = residual / residual.sum() if residual.sum() > 0 else p
    return False, int(torch.multinomial(residual, 1, generator=gen))


@torch.no_grad()
def speculative_generate(target: Transformer, draft: Transformer, prompt: list[int], config: SpecConfig = SpecConfig(),
                         on_token: Callable[[int], None] | None = None) -> SpecResult:
    prompt = [int(t) for t in prompt]
    check_request(target, prompt, config.max_new_tokens)
    if isinstance(draft, LookupFirst):
        lookup, model = draft.lookup, draft.model
    elif isinstance(draft, (PromptLookup, Transformer)):
        lookup = draft if isinstance(draft, PromptLookup) else None
        model = draft if isinstance(draft, Transformer) else None
    else:
        raise ConfigError(f"the draft must be an effml.llm.model.Transformer, a PromptLookup or a LookupFirst, not "
                          f"{type(draft).__name__}")
    if model is not None:
        check_pair(target, model)
    greedy = config.temperature == 0
    gen = torch.Generator().manual_seed(config.seed)
    auto = config.gamma == "auto"
    costs = target_costs(target, config.kv) if auto and config.reuse_costs else CallCosts()
    # auto's warm-up: one round at each γ whose pass (γ + 1 tokens) has not been timed on this target yet
    warmup = [g for g in dict.fromkeys(min(g, config.max_gamma) for g in config.warmup_gammas)
              if g + 1 not in costs.by_tokens] if auto else []
    span = len(prompt) + config.max_new_tokens + config.max_gamma + 1
    ts = new_session(config.kv, target, span)
    shared = model is not None and shares_kv(target, model, config.share_kv)
    ds = None if model is None else ts.view(model) if shared else new_session(config.kv, model, span)
    tcall, dcall = _Timed(costs), _Timed()
    dist = (lambda lg: lg) if greedy else (lambda lg: next_probs(lg, config.temperature, config.top_k))
    seq, out = list(prompt), []
    proposed = verify_calls = lookup_rounds = 0
    by_kind: dict[str, list[int]] = {}  # accepted, tested per proposer: "model", "lookup:n" (an n-gram match)
    verify_time = 0.0
    history = []
    t0 = time.perf_counter()
    if len(prompt) > 1:  # both caches hold all but the last token (no logits); it is fed with the first proposal
        ts.feed(prompt[:-1], last=0)
        if ds is not None and not shared:
            ds.feed(prompt[:-1], last=0)
    prefill = time.perf_counter() - t0

    # auto, reuse_costs: the draft model's α on this target from earlier prompts (pseudo-counts, not in the result)
    prior = model_prior(target, model, (config.temperature, config.top_k)) if auto and config.reuse_costs and \
        model is not None else [0.0, 0.0]
    idle: dict[str, int] = {}  # auto: rounds in a row a proposer was given γ = 0
    passed: dict[str, int] = {}  # auto: rounds in a row a matching lookup was passed over for the model draft

    def choose(kind: str, retesting: bool = False) -> tuple[int, float]:
        """(γ, expected speedup) for a proposer: the fixed γ or a warm-up round's (speedup unknown: inf); for a
        proposer not checked yet, or one retested after being passed over, the best γ ≥ 1 at α = FIRST_ALPHA (inf:
        it gets the round), else the best γ for its α and cost."""
        if not auto:
            return config.gamma, math.inf
        if len(history) < len(warmup):
            return warmup[len(history)], math.inf
        acc, n = by_kind.get(kind, (0, 0))
        if kind == "model":
            acc, n = acc + prior[0], n + prior[1]
        c = (dcall.time / dcall.calls) / costs.t(1) if kind == "model" and dcall.calls else 0.0
        # at most one token past the longest pass measured: t(T) beyond it is an extrapolation, and a kernel's next
        # block of rows costs more than the slope before it shows (gemv_tiles on AVX2, 6 rows a block: SmolLM2 fp32
        # at 7 tokens 1.2x its cost at 6)
        limit = min(config.max_gamma, max(costs.by_tokens))
        if not n or retesting:
            return best_gamma(FIRST_ALPHA, c, limit, costs.v, min_gamma=1), math.inf
        # α with Laplace's prior, (accepted + 1) / (tested + 2): one rejected first token (0 of 1) reads as 1/3,
        # not 0
        a = min((acc + 1) / (n + 2), 0.999)
        g = best_gamma(a, c, limit, costs.v, min_gamma=0)
        return g, (expected_speedup(a, g, c, costs.v(g)) if g else 1.0)

    def retest(kind: str, g: int) -> int:
        """γ = 0 tests nothing, so α would never be revised once it is chosen: after RETEST_AFTER such rounds in a
        row, one γ = 1 round tests the proposer again (the text may have turned to what it predicts)."""
        if not auto or len(history) < len(warmup):
            return g
        idle[kind] = idle.get(kind, 0) + 1 if g == 0 else 0
        if idle[kind] > RETEST_AFTER:
            idle[kind], g = 0, 1
        return g

    while len(out) < config.max_new_tokens:
        base = len(seq)  # tokens committed
        drafts, qs, kind = [], [], "model"
        if lookup is not None:  # up to γ copied tokens, point-mass law; none when nothing matches
            n_gram, found = lookup.match(seq, config.max_gamma)
            if found:
                kind = f"lookup:{n_gram}"  # α per match length: a 3-gram's proposals hold more often than a 2-gram's
                g, gain = choose(kind)
                # auto: the model draft promises more here; a lookup passed over RETEST_AFTER times in a row gets
                # the next round anyway (an α read off a round or two must not shut it out for the whole answer),
                # sized as a first round: at the γ its own low α picks (1-2), a copying span could never prove itself
                passed[kind] = passed.get(kind, 0) + 1 if model is not None and gain < choose("model")[1] else 0
                if 0 < passed[kind] <= RETEST_AFTER:
                    kind = "model"
                else:
                    if passed[kind]:
                        g = choose(kind, retesting=True)[0]
                    passed[kind] = 0
                    drafts = found[:retest(kind, g)]
                    qs = [None] * len(drafts)
        gamma = len(drafts)
        if not drafts and model is not None:
            kind, gamma = "model", retest("model", choose("model")[0])
        elif drafts:
            lookup_rounds += 1
        history.append(gamma)
        held = ts.length  # a shared cache: the draft's K/V past here are dropped before the verification
        for _ in range(gamma if kind == "model" else 0):  # draft γ tokens, one call each (the first catches up)
            lg = dcall(ds, seq[ds.length:] if not drafts else drafts[-1:], last=1)[-1]
            q = dist(lg)
            x = argmax(q) if greedy else int(torch.multinomial(q, 1, generator=gen))
            drafts.append(x)
            qs.append(q)
        if shared and ts.length > held:
            ts.truncate(held)
        t_before = tcall.time
        proposed += gamma
        logits = tcall(ts, seq[ts.length:] + drafts, last=gamma + 1)  # (γ+1, V): one verification pass
        if gamma:
            verify_calls += 1
            verify_time += tcall.time - t_before
        ps = [dist(logits[i]) for i in range(gamma + 1)]
        n, nxt = 0, None
        for i, x in enumerate(drafts):
            ok, repl = _accept(ps[i], qs[i], x, greedy, gen)
            if not ok:
                nxt = repl
                break
            n += 1
        tally = by_kind.setdefault(kind, [0, 0])
        tally[0] += n
        tally[1] += min(n + 1, gamma)
        if nxt is None:  # all γ accepted: the target's next token comes free
            nxt = argmax(ps[gamma]) if greedy else int(torch.multinomial(ps[gamma], 1, generator=gen))
        new = drafts[:n] + [nxt]
        ts.truncate(base + n)  # keep the accepted drafts' K/V; nxt is fed next round
        if ds is not None and not shared:  # a shared cache went with the target's truncate
            ds.truncate(min(ds.length, base + n))
        stop = False
        for tok in new:
            if len(out) == config.max_new_tokens:
                break
            out.append(tok)
            seq.append(tok)
            if on_token is not None:
                on_token(tok)
            if config.stop_token is not None and tok == config.stop_token:
                stop = True
                break
        if stop:
            break
    if auto and config.reuse_costs and model is not None and "model" in by_kind:
        _keep_prior(prior, by_kind["model"])
    step = costs.t(1) if auto and 1 in costs.by_tokens else 0.0
    accepted, tested = sum(a for a, _ in by_kind.values()), sum(t for _, t in by_kind.values())
    return SpecResult(len(prompt), out, gamma, accepted, tested, proposed, tcall.calls, dcall.calls,
                      dcall.time, tcall.time, time.perf_counter() - t0, verify_calls, verify_time, step, lookup_rounds,
                      prefill, history, shared)
