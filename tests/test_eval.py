"""effml.eval: perplexity against hand-computed values, the window bookkeeping, the KJV split, bad input."""

import math

import pytest
import torch
from torch import nn

from effml.errors import ConfigError
from effml.eval import (calibration_chapters, calibration_tokens, heldout_chapters, heldout_tokens, perplexity,
                        windows)
from effml.llm.model import build


class FixedProbs(nn.Module):
    """Every position predicts the same distribution `probs` (context ignored)."""

    def __init__(self, probs):
        super().__init__()
        self.logp = torch.tensor(probs).log()

    def forward(self, x):  # (B, T) -> (B, T, V)
        return self.logp.expand(*x.shape, -1).clone()


def test_hand_computed_perplexity():
    # targets (tokens after the first) are 0, 1, 0, 1 with p(0) = 0.75, p(1) = 0.25:
    # mean NLL = -(2 ln .75 + 2 ln .25) / 4, ppl = 1 / sqrt(.75 * .25) = 2.309401...
    res = perplexity(FixedProbs([0.75, 0.25]), torch.tensor([0, 0, 1, 0, 1]), ctx=2)
    assert res.tokens == 4
    assert res.perplexity == pytest.approx(1 / math.sqrt(0.75 * 0.25), rel=1e-6)
    assert res.nll == pytest.approx(-(2 * math.log(0.75) + 2 * math.log(0.25)) / 4, rel=1e-6)


def test_uniform_model_has_perplexity_vocab():
    toks = torch.randint(0, 7, (50,), generator=torch.Generator().manual_seed(0))
    res = perplexity(FixedProbs([1 / 7] * 7), toks, ctx=8, stride=3, batch_size=4)
    assert res.perplexity == pytest.approx(7.0, rel=1e-6) and res.tokens == 49


@pytest.mark.parametrize("n,ctx,stride", [(10, 4, 4), (10, 4, 1), (33, 8, 3), (5, 16, 16), (2, 1, 1)])
def test_windows_score_every_token_once(n, ctx, stride):
    scored = []
    for s, e, k in windows(n, ctx, stride):
        assert e - s <= ctx and 1 <= k <= e - s
        scored += list(range(e + 1 - k, e + 1))  # target indices counted by this window
    assert scored == list(range(1, n))


def test_matches_per_token_nll_with_exact_context():
    model = build("tiny", std=0.3)
    toks = torch.randint(0, 97, (21,), generator=torch.Generator().manual_seed(1))
    ctx, stride = 8, 3
    res = perplexity(model, toks, ctx, stride=stride, batch_size=3)
    torch.set_grad_enabled(False)
    # by hand: the window that scores token j starts at the largest multiple of stride s with s < j <= s + ctx
    total = 0.0
    for j in range(1, 21):
        s = next(s for s in range(0, 21, stride) if s < j <= s + ctx)
        logp = torch.log_softmax(model(toks[None, s:j])[0, -1], -1)  # prediction of token j from toks[s:j]
        total -= float(logp[toks[j]])
    torch.set_grad_enabled(True)
    assert res.nll == pytest.approx(total / 20, rel=1e-5)


def test_hf_causal_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=1, n_head=2)).eval()
    toks = torch.randint(0, 50, (40,), generator=torch.Generator().manual_seed(2))
    res = perplexity(hf, toks, ctx=16)
    ref = 0.0  # disjoint windows: inputs [0,16), [16,32), [32,39)
    for s in (0, 16, 32):
        e = min(s + 16, 39)
        with torch.no_grad():
            logp = torch.log_softmax(hf(toks[None, s:e]).logits[0], -1)  # (e - s, V)
        ref -= float(logp.gather(-1, toks[s + 1:e + 1, None]).sum())
    assert res.nll == pytest.approx(ref / 39, rel=1e-5) and res.windows == 3
    with pytest.raises(ConfigError, match="exceeds the model's context of 32"):
        perplexity(hf, toks, ctx=64)


def test_bad_input_is_named():
    model = build("tiny", std=0.3)
    with pytest.raises(ConfigError, match="outside the model's vocabulary of 97"):
        perplexity(model, torch.tensor([1, 2, 500]), ctx=4)
    with pytest.raises(ConfigError, match="stride"):
        perplexity(model, torch.tensor([1, 2, 3]), ctx=4, stride=5)
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        perplexity(model, torch.tensor([1]), ctx=4)


def test_split_is_disjoint_and_fixed():
    held, calib = heldout_chapters(), calibration_chapters()
    assert len(held) == 12  # chapters 9, 109, ..., 1109 of 1189
    assert held[0].startswith("Now these are the generations of the sons of Noah")  # Genesis 10:1
    assert not set(held) & set(calib)
    assert len(calib) == 1189 - 118  # every chapter but i % 10 == 9 (i = 9, 19, ..., 1179: 118 of them)


def test_tokens_from_the_split():
    from effml.zoo.text import CharTokenizer, kjv_text

    tok = CharTokenizer.from_text(kjv_text())
    held = heldout_tokens(tok, 1000)
    assert held.shape == (1000,) and tok.decode(held[:10]) == "Now these "
    cal = calibration_tokens(tok, n_samples=4, seq_len=64, seed=0)
    assert cal.shape == (4, 64)
    assert torch.equal(cal, calibration_tokens(tok, n_samples=4, seq_len=64, seed=0))
    with pytest.raises(ConfigError, match="asked for"):
        heldout_tokens(tok, 10 ** 7)
