"""Structured pruning of transformers: heads (MHA and GQA), MLP channels and blocks on effml, HF Llama, GPT-2, BERT."""

import copy
import math

import pytest
import torch
from transformers import (BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM)

from effml.compress.transformer_prune import (BlockPrune, FFNPrune, HeadPrune, block_prune, block_scores,
                                              ffn_prune, head_prune)
from effml.errors import ConfigError
from effml.llm.model import build


def _gpt2(n_layer=2):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=n_layer, n_head=4)).eval()


def _llama(n_layer=2, heads=6, kv=2):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=96, intermediate_size=128, num_hidden_layers=n_layer,
                                        num_attention_heads=heads, num_key_value_heads=kv,
                                        max_position_embeddings=64)).eval()


def _bert():
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128)).eval()


def _ids(vocab=64, n=2, T=16, seed=0):
    return torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(seed))


def test_head_pruning_removes_exactly_the_chosen_heads_gpt2():
    # pruning heads = zeroing their o-projection columns in the unpruned model: the outputs must agree
    model = _gpt2()
    ref = copy.deepcopy(model)
    res = head_prune(model, HeadPrune(0.5, "magnitude"))
    x = _ids()
    attn = model.transformer.h[0].attn
    assert attn.num_heads == 2 and attn.c_attn.weight.shape == (64, 3 * 32) and attn.c_proj.weight.shape == (32, 64)
    # which heads were kept: match the pruned q rows against the original's
    kept = [h for h in range(4) for k in range(2)
            if torch.equal(ref.transformer.h[0].attn.c_attn.weight[:, h * 16:(h + 1) * 16],
                           attn.c_attn.weight[:, k * 16:(k + 1) * 16])]
    assert len(kept) == 2
    with torch.no_grad():
        for blk, pblk in zip(ref.transformer.h, model.transformer.h):
            hd = 16
            keep = [h for h in range(4) if any(torch.equal(blk.attn.c_attn.weight[:, h * hd:(h + 1) * hd],
                                                            pblk.attn.c_attn.weight[:, k * hd:(k + 1) * hd])
                                               for k in range(2))]
            for h in set(range(4)) - set(keep):
                blk.attn.c_proj.weight[h * hd:(h + 1) * hd] = 0  # Conv1D (in, out): head h's input rows
        assert torch.allclose(model(x).logits, ref(x).logits, atol=1e-5)
    assert res.params_after == res.params_before - 2 * 2 * (64 * 3 * 16 + 3 * 16 + 16 * 64)
    assert model.generate(x[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 7)


def test_gqa_keeps_groups_consistent_and_rope_intact():
    model = _llama(heads=6, kv=2)  # 3 query heads per KV head, head_dim 16
    ref = copy.deepcopy(model)
    head_prune(model, HeadPrune(0.34, "activation"), data=_ids())  # round(0.34 x 3) = 1 query head per group
    a = model.model.layers[0].self_attn
    assert a.q_proj.out_features == 4 * 16 and a.k_proj.out_features == 2 * 16 and a.num_key_value_groups == 2
    # every kept query head is a whole original head (all 16 RoPE dims) of the KV group it belonged to
    qo, qn = ref.model.layers[0].self_attn.q_proj.weight.reshape(6, 16, -1), a.q_proj.weight.reshape(4, 16, -1)
    origin = [next(h for h in range(6) if torch.equal(qo[h], qn[k])) for k in range(4)]
    assert [h // 3 for h in origin] == [0, 0, 1, 1]
    x = _ids()
    assert model(x).logits.shape == (2, 16, 64)
    assert model.generate(x[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 7)


def test_effml_transformer_heads_ffn_and_blocks_still_decode():
    from effml.llm.generate import GenerateConfig, generate

    model = build("tiny", std=0.3)
    data = _ids(97, 4, 32)
    head_prune(model, HeadPrune(0.5, "taylor"), data=data)
    ffn_prune(model, FFNPrune(0.5, "activation"), data=data)
    res = block_prune(model, BlockPrune(n_blocks=1), data=data)
    assert model.layers[0].attention.n_heads == 2 and model.layers[0].feed_forward.w2.in_features == 64
    assert len(model.layers) == 1 and model.args.n_layers == 1 and "removed blocks" in res.notes[0]
    assert model(data).shape == (4, 32, 97)
    # effml's engine with its KV cache (sized from model.args): the cached decode matches the uncached argmax
    out = generate(model, [1, 2, 3], GenerateConfig(max_new_tokens=4))
    seq = [1, 2, 3]
    for _ in range(4):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert out.tokens == seq[3:]


def test_bert_heads_and_ffn():
    model = _bert()
    x = _ids()
    res_h = head_prune(model, HeadPrune(0.5))
    res_f = ffn_prune(model, FFNPrune(0.5))
    sa = model.encoder.layer[0].attention.self
    assert sa.num_attention_heads == 2 and sa.all_head_size == 32
    assert model.encoder.layer[0].intermediate.dense.out_features == 64
    assert res_f.params_after < res_h.params_after < res_h.params_before
    assert model(x).last_hidden_state.shape == (2, 16, 64)


def test_block_importance_is_measured():
    # a block made an identity (its residual branches zeroed) has cos(h_in, h_out) = 1: importance 0, removed first
    model = _llama(n_layer=3)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    scores = block_scores(model, _ids())
    assert scores[1] == pytest.approx(0.0, abs=1e-6) and min(scores[0], scores[2]) > 1e-4
    angular = block_scores(model, _ids(), "angular")
    assert all(0 <= a <= 1 for a in angular) and angular[1] == pytest.approx(0.0, abs=2e-3)
    block_prune(model, BlockPrune(n_blocks=1), data=_ids())
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    assert [blk.self_attn.layer_idx for blk in model.model.layers] == [0, 1]  # KV cache indices renumbered
    assert model.generate(_ids()[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 7)


def test_block_scores_take_keyword_batches_like_a_data_loader():
    """An encoder calibrated the way its users feed it (dicts of input_ids + attention_mask): the same scores as
    the plain token ids when the mask is all ones, and a half-masked batch changes what the blocks see."""
    model = _bert()
    ids = _ids()  # (n, T)
    plain = block_scores(model, ids)
    batches = [{"input_ids": ids[i:i + 1], "attention_mask": torch.ones_like(ids[i:i + 1])} for i in range(len(ids))]
    assert block_scores(model, batches) == pytest.approx(plain, rel=1e-5)
    half = [{"input_ids": b["input_ids"], "attention_mask": torch.cat(
        [torch.ones(1, ids.shape[1] // 2, dtype=torch.long), torch.zeros(1, ids.shape[1] - ids.shape[1] // 2,
                                                                          dtype=torch.long)], 1)} for b in batches]
    assert block_scores(model, half) != pytest.approx(plain, rel=1e-5)
    res = block_prune(model, BlockPrune(n_blocks=1), data=batches)
    assert len(model.encoder.layer) == 1 and res.params_after < res.params_before
    with pytest.raises(ConfigError, match="calibration batch 0 is str"):
        block_scores(_bert(), ["not a batch"])
    with pytest.raises(ConfigError, match="vocabulary has 64 tokens"):
        block_scores(_bert(), [{"input_ids": torch.full((1, 8), 99)}])


def test_bad_input_is_named():
    with pytest.raises(ConfigError, match=r"would remove all 3 query heads of each of its 2 KV groups"):
        head_prune(_llama(heads=6, kv=2), HeadPrune(0.9))  # round(0.9 x 3) = 3
    with pytest.raises(ConfigError, match=r"transformer\.h\.0\.attn at ratio 0\.9 would remove all 4 heads"):
        head_prune(_gpt2(), HeadPrune(0.9))
    with pytest.raises(ConfigError, match="needs calibration data"):
        head_prune(_gpt2(), HeadPrune(0.5, "activation"))
    with pytest.raises(ConfigError, match="keep at least one"):
        block_prune(_gpt2(), BlockPrune(n_blocks=2), data=_ids())
    with pytest.raises(ConfigError, match="exactly one of n_blocks and ratio"):
        BlockPrune()
    with pytest.raises(ConfigError, match="unknown transformer channel importance"):
        HeadPrune(0.5, "nope")
    with pytest.raises(ConfigError, match="recognise"):
        head_prune(torch.nn.Sequential(torch.nn.Linear(4, 4)), HeadPrune(0.5))
    assert math.isfinite(HeadPrune(0.0).ratio)


def test_through_prune_and_configs():
    from effml.compress.configs import config_from_dict
    from effml.compress.prune import prune

    model = _gpt2(n_layer=3)
    res = prune(model, config_from_dict({"method": "blocks", "n_blocks": 1}), data=_ids())
    assert res.model is model and len(model.transformer.h) == 2 and res.params_after < res.params_before
    res = prune(model, config_from_dict({"method": "heads", "ratio": 0.5}))
    assert model.transformer.h[0].attn.num_heads == 2 and res.method == "heads"


def test_unbalanced_gqa_heads_are_refused():
    from effml.compress.structured import cut
    from effml.compress.transformer import transformer_groups

    model = _llama(heads=6, kv=2)
    g = next(g for g in transformer_groups(model) if g.kind == "heads")
    with pytest.raises(ConfigError, match=r"same number of query heads kept in each of its 2 KV groups, got \[3, 1\]"):
        cut(model, {g.name: (g, torch.tensor([0, 1, 2, 3]))})  # 3 heads of group 0, 1 of group 1


def test_channel_prune_of_gpt2_needs_no_tracing():
    # ChannelPrune used to fail on GPT2LMHeadModel ("could not trace ... with torch.fx"): the Conv1D rules group it
    from effml.compress import ChannelPrune, prune

    model = _gpt2()
    res = prune(model, ChannelPrune(sparsity=0.5), example_inputs=(_ids(),))
    # per block: 2 of 4 heads (c_attn 64x(3x16) + bias, c_proj 16x64 each) and 128 of 256 MLP channels
    per_block = 2 * (64 * 48 + 48 + 16 * 64) + 128 * (64 + 1 + 64)
    assert res.params_before - res.params_after == 2 * per_block
    assert [s[0] for s in res.skipped] == ["lm_head"]
    assert model.generate(_ids()[:1, :4], max_new_tokens=2, do_sample=False, pad_token_id=0).shape == (1, 6)
