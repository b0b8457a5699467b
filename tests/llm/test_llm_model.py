"""The compact decoder: config validation, parameter counts, GQA attention, output selection, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from effml.errors import ConfigError
from effml.llm.model import ModelArgs, Transformer, build, gqa_attention, no_init


def test_smollm2_preset_has_the_published_parameter_count():
    # SmolLM2-135M config.json: 134,515,008 parameters (tied embeddings counted once):
    # embed 49152·576 = 28,311,552; per layer 576²·2 (q, o) + 2·576·192 (k, v) + 3·576·1536 + 2·576 = 3,540,096;
    # 30 layers = 106,202,880; final norm 576 -> 28,311,552 + 106,202,880 + 576 = 134,515,008
    args = ModelArgs.preset("smollm2-135m")
    assert args.params() == 134_515_008
    with no_init():  # uninitialised weights: only the shapes matter here
        model = Transformer(args)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # the tied head is one tensor


def test_qwen3_heads_wider_than_dim_over_heads_give_the_published_parameter_count():
    # Qwen3-0.6B config.json: hidden 1024, 28 layers, 16 heads of head_dim 128 (16·128 = 2048 > 1024), 8 KV heads,
    # intermediate 3072, vocab 151936, tied, q/k norms. Per layer: q 1024·2048 + k, v 2·1024·1024 + o 2048·1024
    # + q/k norms 2·128 + MLP 3·1024·3072 + 2 norms 2·1024 = 15,730,944; 28 layers + final norm 1024 =
    # 440,467,456 ("0.44B non-embedding" on its model card); + embedding 151936·1024 = 596,049,920 ("0.6B")
    args = ModelArgs(dim=1024, n_layers=28, n_heads=16, n_kv_heads=8, vocab_size=151936, hidden_dim=3072,
                     head_size=128, qk_norm=True, rope_theta=1e6, norm_eps=1e-6)
    assert args.head_dim == 128
    assert args.params() == 596_049_920
    assert args.params() - args.vocab_size * args.dim == 440_467_456
    with pytest.raises(ConfigError, match="head_size"):  # 1000 / 16 heads is no width: the error says what to set
        ModelArgs(dim=1000, n_heads=16, n_kv_heads=8)


def test_tiny_param_count_matches_the_module():
    model = build("tiny")
    assert sum(p.numel() for p in model.parameters()) == model.args.params()


@pytest.mark.parametrize("bad, field", [({"dim": 0}, "dim"), ({"dim": 63}, "n_heads"),
                                        ({"n_kv_heads": 3}, "n_kv_heads"), ({"head_tokens": 5}, "tie_embeddings"),
                                        ({"norm_eps": 0.0}, "norm_eps"), ({"head_size": -2}, "head_size"),
                                        ({"head_size": 7}, "even")])
def test_args_validation_names_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        ModelArgs.preset("tiny", **bad)


def test_args_are_frozen_and_unknown_presets_fail():
    args = ModelArgs.preset("tiny")
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        args.dim = 8
    with pytest.raises(ConfigError, match="unknown model preset"):
        ModelArgs.preset("gpt-5")
    assert ModelArgs.from_dict(args.to_dict()) == args


def _reference_attention(q, k, v, mask):
    """Plain multi-head attention with K/V repeated per query head (what HF's repeat_kv does)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, H, S, hd)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if mask is not None:
        s = s.masked_fill(~mask[:, None], float("-inf"))
    return s.softmax(-1) @ v


@pytest.mark.parametrize("T, S", [(1, 9), (5, 5), (3, 11)])
def test_gqa_attention_equals_repeated_kv(T, S):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, T, 8, generator=g)  # 6 query heads share 2 KV heads (rep 3)
    k, v = torch.randn(2, 2, S, 8, generator=g), torch.randn(2, 2, S, 8, generator=g)
    pos = torch.arange(S - T, S).expand(2, T)  # the queries are the last T positions
    mask = torch.arange(S)[None, None] <= pos[:, :, None]  # (B, T, S) causal
    torch.testing.assert_close(gqa_attention(q, k, v, mask), _reference_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_last_and_pick_select_positions_of_the_full_output():
    model = build("tiny", std=0.3)
    x = torch.randint(0, model.vocab_size, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(x)  # (B, T, V)
        torch.testing.assert_close(model(x, last=2), full[:, -2:])
        pick = torch.tensor([0, 3, 6])
        torch.testing.assert_close(model(x, pick=pick)[:, 0], full[torch.arange(3), pick])


def test_last_zero_fills_the_cache_without_the_head():
    """last=0 (a prompt's pass before its last token): no logits and no LM head call, the same cache as last=1, so
    the next token's logits are bit-identical either way; a count below 0 or past the tokens fed is refused."""
    from effml.llm.generate import new_session

    model = build("tiny", std=0.3).eval()
    prompt = torch.randint(0, model.vocab_size, (9,), generator=torch.Generator().manual_seed(4)).tolist()
    calls = []
    model.output.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        outs = []
        for last in (0, 1):
            s = new_session("contiguous", model, 16)
            before = len(calls)
            lg = s.feed(prompt[:-1], last=last)
            assert lg.shape == (last, model.vocab_size) and len(calls) - before == last  # the head ran only for 1
            outs.append(s.feed(prompt[-1:], last=1)[-1])
        assert torch.equal(outs[0], outs[1])
        for bad in (-1, len(prompt) + 1):  # no such number of positions
            with pytest.raises(ConfigError, match=f"last={bad}: .* 0 to the {len(prompt)} tokens fed"):
                model(torch.tensor([prompt]), last=bad)


def test_causality_a_later_token_never_changes_earlier_logits():
    model = build("tiny", std=0.3)
    x = torch.randint(0, model.vocab_size, (1, 10), generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[0, 6:] = (y[0, 6:] + 1) % model.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :6], model(y)[:, :6])


def test_head_subset_scores_only_its_tokens():
    args = ModelArgs.preset("tiny", tie_embeddings=False, head_tokens=10)
    model = build(args, std=0.3)
    with torch.no_grad():
        model.head_ids.copy_(torch.arange(0, 20, 2))  # even ids only
        logits = model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, args.vocab_size)
    assert torch.isinf(logits[..., 1::2]).all() and torch.isfinite(logits[..., 0:20:2]).all()
    assert F.softmax(logits, -1)[..., 1::2].sum() == 0  # a draft's q is exactly 0 outside its head


def test_bad_input_empty_and_over_context():
    model = build("tiny")
    with pytest.raises(ConfigError, match="at least one token"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ConfigError, match="max_seq_len=256"):  # the tiny preset's context is 256
        model(torch.zeros(1, 257, dtype=torch.long))
