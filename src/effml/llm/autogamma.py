"""Auto-γ's parts: the speedup formula (Leviathan et al. 2023, with the verification pass's measured cost v
in place of their v = 1), the target's measured call times t(T), and what auto-γ keeps from one call to the next
(the call times per target and cache kind; a draft model's acceptance tally per target and sampling law).
speculative.py's `speculative_generate` is the one user; the policy itself is described there.
"""

from __future__ import annotations

import statistics
import weakref
from collections import deque
from collections.abc import Callable

from effml.errors import ConfigError
from effml.llm.model import Transformer

RETEST_AFTER = 4  # auto: rounds in a row a proposer may go untested (γ = 0, or a lookup passed over)
# auto: the α a proposer's first round is sized for, on the target's measured call times: optimistic, so a long
# first round where a long pass costs little (AVX-512 fp32 SmolLM2: 5-6 for a lookup, 4 for the int4 draft), a short
# one where a longer pass costs a second block of rows (gemv_tiles on AVX2 when it took 4 rows a block: 3 and 2-3)
FIRST_ALPHA = 0.8


def expected_tokens_per_call(alpha: float, gamma: int) -> float:
    """(1 − α^(γ+1)) / (1 − α): accepted drafts + the target's own token, per target call."""
    return gamma + 1.0 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def expected_speedup(alpha: float, gamma: int, c: float, v: float = 1.0) -> float:
    """(1 − α^(γ+1)) / ((1 − α)(γc + v)): wall-time speedup over the target alone; c = draft step / target step,
    v = the verification pass (γ+1 tokens) / target step (Leviathan et al.: 1)."""
    return expected_tokens_per_call(alpha, gamma) / (gamma * c + v)


def best_gamma(alpha: float, c: float, max_gamma: int = 12, verify_cost: Callable[[int], float] | None = None,
               min_gamma: int = 1) -> int:
    """The γ in min_gamma..max_gamma with the largest expected speedup (ties: the smaller γ); verify_cost(γ) = v
    (1 for every γ if None). γ = 0 is plain decoding: speedup 1 / v(0) = 1."""
    v = verify_cost or (lambda g: 1.0)
    return max(range(min_gamma, max_gamma + 1), key=lambda g: (round(expected_speedup(alpha, g, c, v(g)), 9), -g))


class CallCosts:
    """A model's call time by the number of tokens fed, t(T) (medians of the last `keep` calls of each T),
    interpolated linearly between measured T and extrapolated with the last slope; v(γ) = t(γ+1) / t(1)."""

    def __init__(self, keep: int = 64):
        self.by_tokens: dict[int, deque[float]] = {}
        self.keep = keep
        self._med: dict[int, float] | None = None  # the medians by T, until the next add

    def add(self, tokens: int, seconds: float) -> None:
        self.by_tokens.setdefault(tokens, deque(maxlen=self.keep)).append(seconds)
        self._med = None

    def t(self, tokens: int) -> float:
        # auto-γ asks for t(T) ~50 times a round (every γ it weighs) and adds one call a round: sort once per add
        if self._med is None:
            self._med = {n: statistics.median(s) for n, s in sorted(self.by_tokens.items())}
        med = self._med
        if not med:
            raise ConfigError("CallCosts: no call measured yet")
        if tokens in med:
            return med[tokens]
        lo, hi = [n for n in med if n < tokens], [n for n in med if n > tokens]
        if lo and hi:
            a, b = lo[-1], hi[0]
            return med[a] + (med[b] - med[a]) * (tokens - a) / (b - a)
        if len(lo) >= 2:
            a, b = lo[-2], lo[-1]
            return med[b] + max(0.0, (med[b] - med[a]) / (b - a)) * (tokens - b)
        return med[(lo or hi)[-1 if lo else 0]]

    def v(self, gamma: int) -> float:
        return self.t(gamma + 1) / self.t(1)


_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # target -> {kv: CallCosts}


def target_costs(target: Transformer, kv: str) -> CallCosts:
    """The call times t(T) measured on `target` with a `kv` cache by earlier speculative_generate calls (auto-γ
    keeps them: they are the machine's and the model's, not the prompt's); a fresh CallCosts the first time."""
    return _COSTS.setdefault(target, {}).setdefault(kv, CallCosts())


_ALPHAS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # target -> {draft model -> {law: tally}}
PRIOR_TOKENS = 32  # auto: the draft model's tally from earlier calls weighs as this many tested tokens at most


def model_prior(target: Transformer, model: Transformer, law: tuple) -> list[float]:
    """A draft model's [accepted, tested] drafts on `target` from earlier calls under the same sampling law (auto-γ
    starts a prompt from it: α is a property of the pair, unlike a lookup's, which is the text's), scaled down
    to PRIOR_TOKENS tested so that the current prompt soon outweighs it; [0, 0] the first time."""
    return _ALPHAS.setdefault(target, weakref.WeakKeyDictionary()).setdefault(model, {}).setdefault(law, [0.0, 0.0])


def _keep_prior(prior: list[float], tally: list[int]) -> None:
    acc, n = prior[0] + tally[0], prior[1] + tally[1]
    scale = min(1.0, PRIOR_TOKENS / n) if n else 1.0
    prior[:] = [acc * scale, n * scale]
