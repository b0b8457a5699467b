"""Prompt lookup's matching (speculative decoding with it: test_llm_speculative.py)."""

import pytest

from effml.errors import ConfigError
from effml.llm.lookup import LOOKUP_FIRST_MIN_NGRAM, LookupFirst, PromptLookup
from effml.llm.model import ModelArgs, build


def test_prompt_lookup_proposes_what_followed_the_latest_match_of_the_longest_ngram():
    lk = PromptLookup(max_ngram=3)
    assert lk.propose([7, 1, 2, 3, 9, 1, 2, 3, 4, 5, 1, 2, 3], 2) == [4, 5]  # latest "1 2 3" is followed by 4 5
    assert lk.propose([1, 2, 3], 4) == []  # nothing earlier matches: no proposal (a plain step)
    # "8 1 2" never occurred before, "1 2" did (followed by 3 4): a 2-gram match, the 3 tokens after it
    assert lk.match([1, 2, 3, 4, 8, 1, 2], 3) == (2, [3, 4, 8])
    # only the last token repeats: a 1-gram match with the default min_ngram = 1, none with min_ngram = 2
    assert lk.match([5, 6, 9, 5], 2) == (1, [6, 9])
    assert PromptLookup(3, 2).match([5, 6, 9, 5], 2) == (0, [])
    assert lk.match([4, 4], 3) == (1, [4])  # a proposal runs up to the end of what is known


def test_bad_lookups_are_refused():
    with pytest.raises(ConfigError, match="1 <= min_ngram <= max_ngram"):
        PromptLookup(max_ngram=2, min_ngram=3)
    with pytest.raises(ConfigError, match="LookupFirst's draft model"):
        LookupFirst(PromptLookup())


def test_lookup_first_matches_two_grams_and_longer_by_default():
    model = build(ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64, vocab_size=50, max_seq_len=32))
    lf = LookupFirst(model)
    assert lf.model is model and LOOKUP_FIRST_MIN_NGRAM == 2 and lf.lookup.min_ngram == 2
    assert lf.lookup.match([5, 6, 9, 5], 2) == (0, [])  # a 1-token match leaves the round to the model
