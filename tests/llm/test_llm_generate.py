"""Generation: the three KV strategies give the same tokens; sampling is seeded; bad requests are refused."""

import pytest
import torch

from effml.errors import ConfigError
from effml.llm.generate import SESSIONS, GenerateConfig, generate, next_probs, pick


def _prompts(n, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(torch.randint(1, 15, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_none_contiguous_and_paged_give_identical_greedy_tokens(model):
    for prompt in _prompts(8, model.vocab_size):
        outs = {kv: generate(model, prompt, GenerateConfig(max_new_tokens=40, kv=kv)).tokens for kv in SESSIONS}
        assert outs["none"] == outs["contiguous"] == outs["paged"]
        assert len(outs["none"]) == 40


def test_sampling_is_seeded_and_respects_top_k(model):
    cfg = GenerateConfig(max_new_tokens=30, temperature=1.0, seed=3)
    a = generate(model, [1, 2, 3], cfg).tokens
    assert a == generate(model, [1, 2, 3], cfg).tokens
    assert a != generate(model, [1, 2, 3], GenerateConfig(max_new_tokens=30, temperature=1.0, seed=4)).tokens
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0])
    p = next_probs(logits, 1.0, top_k=2)
    assert p[:2].sum() == 0 and abs(float(p[3] / p[2]) - 2.718281828) < 1e-5  # e^(3-2)
    assert pick(logits, 0.0, 0, None) == 3


def test_stop_token_ends_generation(model):
    free = generate(model, [5, 6, 7], GenerateConfig(max_new_tokens=30)).tokens
    stop = free[4]
    res = generate(model, [5, 6, 7], GenerateConfig(max_new_tokens=30, stop_token=stop))
    assert res.tokens == free[:free.index(stop) + 1] and res.stopped == "stop_token"
    d = res.to_dict()
    assert d["new_tokens"] == len(res.tokens) and d["prompt_tokens"] == 3 and "step_times_s" not in d


def test_streaming_callback_sees_every_token_in_order(model):
    seen = []
    res = generate(model, [9, 9], GenerateConfig(max_new_tokens=12, kv="paged"), on_token=seen.append)
    assert seen == res.tokens


def test_bad_requests(model):
    with pytest.raises(ConfigError, match="prompt is empty"):
        generate(model, [], GenerateConfig())
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        generate(model, [model.vocab_size], GenerateConfig())
    # tiny context = 256: 200 prompt + 64 new = 264 tokens is longer than the context
    with pytest.raises(ConfigError, match="264 exceeds the model's context of 256"):
        generate(model, [1] * 200, GenerateConfig(max_new_tokens=64))
    with pytest.raises(ConfigError, match="kv 'ring'"):
        GenerateConfig(kv="ring")
    with pytest.raises(ConfigError, match="max_new_tokens"):
        GenerateConfig(max_new_tokens=0)


def test_timings_are_ordered(model):
    """prefill_s (the prompt's pass) <= ttft_s (prefill + first token) <= time_s; a one-token prompt has no prompt
    pass (its token is fed by the first decode step); speculative decoding reports its prompt pass the same way."""
    from effml.llm.speculative import SpecConfig, speculative_generate

    r = generate(model, list(range(1, 30)), GenerateConfig(max_new_tokens=8))
    assert 0 < r.prefill_s <= r.ttft_s <= r.time_s
    assert r.step_times_s[0] == r.ttft_s and r.step_times_s == sorted(r.step_times_s)
    assert generate(model, [5], GenerateConfig(max_new_tokens=4)).prefill_s < r.prefill_s
    s = speculative_generate(model, model, list(range(1, 30)), SpecConfig(gamma=2, max_new_tokens=8))
    assert 0 < s.prefill_s < s.time_s and s.target_time_s + s.draft_time_s <= s.time_s - s.prefill_s + 1e-6


def test_argmax_is_torchs():
    """generate.argmax (numpy's on CPU) picks what torch.argmax picks: the lowest id among ties, NaN as largest,
    row by row for (B, V) logits, on strided views too."""
    from effml.llm.generate import argmax

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 97, generator=g)
    assert argmax(x[:, -1]) == x[:, -1].argmax(-1).tolist()  # a strided (B, V) view
    assert argmax(x[2, 1]) == int(x[2, 1].argmax())
    tie = torch.tensor([0.5, 2.0, -1.0, 2.0])
    assert argmax(tie) == int(tie.argmax()) == 1
    nan = torch.tensor([0.5, 2.0, float("nan"), 9.0])
    assert argmax(nan) == int(nan.argmax()) == 2
    assert argmax(torch.zeros(0, 7)) == []
