"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a draft proposes γ tokens, the target checks
them all in one forward pass.

    res = speculative_generate(target, draft, prompt_ids, SpecConfig(gamma=4, max_new_tokens=128))
    res.tokens        # greedy: identical to generate(target, ...) token for token
    res.alpha, res.tokens_per_target_call, res.c, res.formula_speedup

Greedy (temperature 0): accept draft tokens while they equal the target's argmax; at the first mismatch emit the
target's argmax instead; if all γ match, the target's next argmax is a free bonus token. Sampling: accept x ~ q
with probability min(1, p(x)/q(x)); on rejection sample from norm(max(0, p − q)); the output distribution is
exactly the target's p (Leviathan et al. Thm 1).

Measured: α = accepted / tested draft tokens (each round tests tokens until the first rejection), c = mean draft
call time / mean target call time. Expected tokens per target call (1−α^(γ+1))/(1−α), expected speedup
(1−α^(γ+1))/((1−α)(γc+1)) (Leviathan eq. 1 and Thm 3.8). `gamma="auto"` re-picks γ every round from the running
α and c by maximising that formula.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from effml.errors import ConfigError
from effml.llm.generate import SESSIONS, check_request, new_session, next_probs
from effml.llm.model import Transformer


def expected_tokens_per_call(alpha: float, gamma: int) -> float:
    """(1 − α^(γ+1)) / (1 − α): accepted drafts + the target's own token, per target call."""
    return gamma + 1.0 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def expected_speedup(alpha: float, gamma: int, c: float) -> float:
    """(1 − α^(γ+1)) / ((1 − α)(γc + 1)): wall-time speedup over the target alone."""
    return expected_tokens_per_call(alpha, gamma) / (gamma * c + 1)


def best_gamma(alpha: float, c: float, max_gamma: int = 12) -> int:
    """The γ in 1..max_gamma with the largest expected speedup (ties: the smaller γ)."""
    return max(range(1, max_gamma + 1), key=lambda g: (round(expected_speedup(alpha, g, c), 9), -g))


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
    warmup_rounds: int = 3  # auto: rounds at the initial γ before choosing from measured α and c

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


@dataclass
class SpecResult:
    prompt_tokens: int
    tokens: list[int]
    gamma: int  # the last γ used (auto: the chosen one)
    accepted: int  # draft tokens accepted
    tested: int  # draft tokens checked (accepted + rejections)
    proposed: int  # draft tokens drafted
    target_calls: int  # verification passes (prefill excluded)
    draft_calls: int
    draft_time_s: float
    target_time_s: float
    time_s: float
    gamma_history: list[int] = field(default_factory=list, repr=False)

    @property
    def alpha(self) -> float:
        return self.accepted / self.tested if self.tested else 0.0

    @property
    def c(self) -> float:
        """Draft forward time / target forward time (per call)."""
        if not self.draft_calls or not self.target_calls:
            return 0.0
        return (self.draft_time_s / self.draft_calls) / (self.target_time_s / self.target_calls)

    @property
    def tokens_per_target_call(self) -> float:
        return len(self.tokens) / self.target_calls if self.target_calls else 0.0

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.time_s if self.time_s > 0 else float("inf")

    @property
    def formula_speedup(self) -> float:
        return expected_speedup(min(self.alpha, 0.999999), self.gamma, self.c)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("gamma_history")
        return {**d, "new_tokens": len(self.tokens), "alpha": self.alpha, "c": self.c,
                "tokens_per_target_call": self.tokens_per_target_call, "tokens_per_s": self.tokens_per_s,
                "formula_tokens_per_call": expected_tokens_per_call(min(self.alpha, 0.999999), self.gamma),
                "formula_speedup": self.formula_speedup}


def check_pair(target: Transformer, draft: Transformer) -> None:
    """A draft must score the same vocabulary as the target (same ids, same size)."""
    vt, vd = target.args.vocab_size, draft.args.vocab_size
    if vt != vd:
        raise ConfigError(f"draft vocabulary ({vd} tokens) differs from the target's ({vt}): a draft must share "
                          f"the target's tokenizer")


class _Timed:
    def __init__(self):
        self.calls, self.time = 0, 0.0

    def __call__(self, session, tokens, last=None):
        t = time.perf_counter()
        out = session.feed(tokens, last=last)
        self.time += time.perf_counter() - t
        self.calls += 1
        return out


def _accept(p: torch.Tensor, q: torch.Tensor, x: int, greedy: bool, gen) -> tuple[bool, int | None]:
    """One draft token x against target probs/logits p and draft probs q (V,). -> (accepted, replacement)."""
    if greedy:
        best = int(p.argmax())
        return (best == x), (None if best == x else best)
    if float(torch.rand((), generator=gen)) * float(q[x]) < float(p[x]):  # u < p(x)/q(x), no division by 0
        return True, None
    residual = (p - q).clamp_min(0)
    residual = residual / residual.sum() if residual.sum() > 0 else p
    return False, int(torch.multinomial(residual, 1, generator=gen))


@torch.no_grad()
def speculative_generate(target: Transformer, draft: Transformer, prompt: list[int], config: SpecConfig = SpecConfig(),
                         on_token: Callable[[int], None] | None = None) -> SpecResult:
    check_pair(target, draft)
    prompt = [int(t) for t in prompt]
    check_request(target, prompt, config.max_new_tokens)
    greedy = config.temperature == 0
    gen = torch.Generator().manual_seed(config.seed)
    gamma = config.gamma if isinstance(config.gamma, int) else min(4, config.max_gamma)
    span = len(prompt) + config.max_new_tokens + max(gamma, config.max_gamma) + 1
    ts, ds = new_session(config.kv, target, span), new_session(config.kv, draft, span)
    tcall, dcall = _Timed(), _Timed()
    dist = (lambda lg: lg) if greedy else (lambda lg: next_probs(lg, config.temperature, config.top_k))
    seq, out = list(prompt), []
    accepted = tested = proposed = 0
    history = []
    t0 = time.perf_counter()
    if len(prompt) > 1:  # both caches hold all but the last token; it is fed with the first proposal
        ts.feed(prompt[:-1], last=1)
        ds.feed(prompt[:-1], last=1)
    while len(out) < config.max_new_tokens:
        if config.gamma == "auto" and len(history) >= config.warmup_rounds and tested:
            c = (dcall.time / dcall.calls) / (tcall.time / tcall.calls)
            gamma = best_gamma(min(accepted / tested, 0.999), c, config.max_gamma)
        history.append(gamma)
        base = len(seq)  # tokens committed
        drafts, qs = [], []
        for _ in range(gamma):  # draft γ tokens, one call each (the first also catches the draft up)
            lg = dcall(ds, seq[ds.length:] if not drafts else drafts[-1:], last=1)[-1]
            q = dist(lg)
            x = int(q.argmax()) if greedy else int(torch.multinomial(q, 1, generator=gen))
            drafts.append(x)
            qs.append(q)
        proposed += gamma
        logits = tcall(ts, seq[ts.length:] + drafts, last=gamma + 1)  # (γ+1, V): one verification pass
        ps = [dist(logits[i]) for i in range(gamma + 1)]
        n, nxt = 0, None
        for i, x in enumerate(drafts):
            tested += 1
            ok, repl = _accept(ps[i], qs[i], x, greedy, gen)
            if not ok:
                nxt = repl
                break
            n += 1
        accepted += n
        if nxt is None:  # all γ accepted: the target's next token comes free
            nxt = int(ps[gamma].argmax()) if greedy else int(torch.multinomial(ps[gamma], 1, generator=gen))
        new = drafts[:n] + [nxt]
        ts.truncate(base + n)  # keep the accepted drafts' K/V; nxt is fed next round
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
    return SpecResult(len(prompt), out, gamma, accepted, tested, proposed, tcall.calls, dcall.calls,
                      dcall.time, tcall.time, time.perf_counter() - t0, history)
