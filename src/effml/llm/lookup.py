"""Drafts without a draft model: prompt lookup (Saxena 2023), and prompt lookup in front of a draft model.
speculative_generate takes either as its `draft`; registry.py names them for the CLI (`--draft lookup`,
`--draft lookup+int4`, ...).
"""

from __future__ import annotations

from effml.errors import ConfigError
from effml.llm.model import Transformer


class PromptLookup:
    """A draft without a model (prompt-lookup decoding, Saxena 2023): find the latest earlier occurrence of the
    sequence's last n tokens (n = max_ngram down to min_ngram) and propose the tokens that followed it. Free to
    run (c ≈ 0) and right whenever the answer copies its input (editing, quoting, retrieval-grounded answers).
    Its proposal law is a point mass, so rejection sampling stays exact: accept x with probability p(x), else
    sample from p with x removed."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ConfigError(f"PromptLookup needs 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, seq: list[int], gamma: int) -> list[int]:
        return self.match(seq, gamma)[1]

    def match(self, seq: list[int], gamma: int) -> tuple[int, list[int]]:
        """(n, proposal): the length of the n-gram matched (0: none) and the up to γ tokens that followed it."""
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            tail = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):  # latest match first, never the tail itself
                if seq[start:start + n] == tail:
                    return n, seq[start + n:start + n + gamma]
        return 0, []


LOOKUP_FIRST_MIN_NGRAM = 2  # LookupFirst's default: a 1-token match leaves the round to the model draft


class LookupFirst:
    """Prompt lookup where the text repeats what came before, a draft model everywhere else: each round proposes
    the lookup's tokens when the last n-gram occurred earlier (free, point-mass law) and asks `model` otherwise.
    Which one proposes depends only on the committed tokens, so each round's acceptance test is the usual one for
    its proposal law and the output law stays the target's. For answers that mix copying and writing (editing,
    grounded answers): copied spans cost no draft steps, the rest gets a model draft's higher α. With γ = "auto"
    a round where both can propose goes to the one whose measured α and cost promise the larger speedup (the
    lookup's α kept per length of the n-gram matched; a lookup passed over RETEST_AFTER (autogamma.py) times in a
    row proposes the next round, so its α keeps being measured), so a weak match no longer displaces a strong
    model draft; the choice depends only on past rounds, so each round's test stays exact.

    The default lookup matches 2- and 3-grams only (`LOOKUP_FIRST_MIN_NGRAM`): a single repeated token says
    little about what follows. On SmolLM2-135M's greedy answers to bench_speculative's 6 held-out prompts (its
    lookup table, 306 answer positions), the 6 tokens proposed after a 1-gram match led the target's own
    continuation by 0.46 tokens on average, after a 2-gram by 2.0, after a 3-gram by 4.5; the int4 self-draft's
    α ≈ 0.95 gives ~3.5 of 4."""

    def __init__(self, model: Transformer, lookup: PromptLookup | None = None):
        if not isinstance(model, Transformer):
            raise ConfigError(f"LookupFirst's draft model must be an effml.llm.model.Transformer, not "
                              f"{type(model).__name__}")
        self.model = model
        self.lookup = lookup or PromptLookup(min_ngram=LOOKUP_FIRST_MIN_NGRAM)
