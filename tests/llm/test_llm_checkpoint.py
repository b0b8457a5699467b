"""Hugging Face checkpoint directories (Llama, Qwen2, Qwen3, Mistral, Phi-3, SmolLM2) load into effml's decoder;
bad ones refused."""

import json

import pytest
import torch

from effml.errors import ConfigError
from effml.llm.checkpoint import from_transformers, load_checkpoint
from effml.llm.generate import GenerateConfig, generate

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=97, max_position_embeddings=128)


def _hf(kind: str, tie: bool, **extra):
    import transformers as tf

    cfg = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config, "mistral": tf.MistralConfig,
           "phi3": tf.Phi3Config}[kind](**{**SMALL, "tie_word_embeddings": tie, "rope_theta": 500.0, "pad_token_id": 0,
                                          "bos_token_id": 1, "eos_token_id": 2, **extra})
    torch.manual_seed(0)
    cls = {"llama": tf.LlamaForCausalLM, "qwen2": tf.Qwen2ForCausalLM, "qwen3": tf.Qwen3ForCausalLM,
           "mistral": tf.MistralForCausalLM, "phi3": tf.Phi3ForCausalLM}[kind]
    hf = cls(cfg).eval()
    with torch.no_grad():  # random init at std 0.02 is near-uniform; wider weights make logits differ clearly
        for p in hf.parameters():
            p.mul_(5)
        if kind == "qwen2":  # its q/k/v biases start at 0: give them values so that a dropped bias shows
            for layer in hf.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
        if kind == "qwen3":  # its q/k norm weights start at 1 (5 after the scaling): per-channel values show a swap
            for layer in hf.model.layers:
                layer.self_attn.q_norm.weight.normal_(1, 0.5)
                layer.self_attn.k_norm.weight.normal_(1, 0.5)
    return hf


# Qwen3's heads are wider than hidden_size / heads (Qwen3-0.6B: 16 heads of 128 in 1024): head_dim 32 against
# 64 / 4 = 16 here; a Llama with heads narrower than that (head_dim 8) as Mistral Nemo-style configs have
@pytest.mark.parametrize("kind, tie, extra", [("llama", False, {}), ("llama", True, {}), ("qwen2", False, {}),
                                              ("mistral", False, {}), ("qwen3", True, {"head_dim": 32}),
                                              ("qwen3", False, {"head_dim": 16}), ("llama", False, {"head_dim": 8}),
                                              ("phi3", False, {"sliding_window": 100})],
                         ids=["llama", "llama-tied", "qwen2", "mistral", "qwen3-hd32", "qwen3", "llama-hd8", "phi3"])
def test_saved_checkpoint_loads_with_logits_matching_transformers(tmp_path, kind, tie, extra):
    hf = _hf(kind, tie, **extra)
    hf.save_pretrained(tmp_path)  # config.json + model.safetensors
    model, tok = load_checkpoint(tmp_path)
    assert model.args.head_dim == hf.config.to_dict().get("head_dim", 16)
    assert model.args.qk_norm == (kind == "qwen3")
    assert model.args.params() == sum(p.numel() for p in hf.parameters())  # the count, from the args alone
    assert model.args.max_seq_len == (100 if kind == "phi3" else 128)  # Phi-3's sliding window caps the context
    assert tok is None  # no tokenizer files written
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]])
    with torch.no_grad():
        ours, ref = model(ids), hf(ids).logits  # (1, 8, 97)
    # the same fp32 arithmetic in a different order: agreement to float rounding (logits are O(10) here)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
    assert ref.std() > 1  # not a degenerate near-constant output
    # and through the engine: greedy decoding equals transformers' greedy generate
    out = generate(model, ids[0].tolist(), GenerateConfig(max_new_tokens=8)).tokens
    hf_out = hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[0, 8:].tolist()
    assert out == hf_out
    assert from_transformers(hf)(ids).sub(ref).abs().max() < 2e-4
    from effml.llm.engine import prepare

    prepare(model)  # fused q/k/v (with Qwen2's biases), effml's kernels and C++ step where they build: same tokens
    assert generate(model, ids[0].tolist(), GenerateConfig(max_new_tokens=8)).tokens == hf_out
    from effml.llm.batching import serve
    from effml.llm.serving import EngineConfig, Request

    # several sequences in one pass over the paged cache (the C++ rows loop, q/k norms included): the same tokens
    trace = [Request(0, 0.0, tuple(ids[0].tolist()), 8), Request(1, 0.0, tuple(ids[0, :5].tolist()), 8)]
    alone = generate(model, ids[0, :5].tolist(), GenerateConfig(max_new_tokens=8)).tokens
    got = {r.rid: r.tokens for r in serve(model, trace, "chunked", EngineConfig(max_batch=2, block_size=4)).requests}
    assert got == {0: hf_out, 1: alone}


# Llama 3.1/3.2's scaling at this model's scale: with head_dim 16 and theta 500, the 8 wavelengths run from 6.3 to
# ~2000 positions; original context 64 with low / high factors 1 / 4 puts them in all three bands (kept: < 16,
# interpolated: 16..64, divided by `factor`: > 64), so a wrong band or a missing smoothing shows in the logits
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


@pytest.mark.parametrize("scaling", [LLAMA3, {"rope_type": "linear", "factor": 4.0}], ids=["llama3", "linear"])
def test_rope_scaling_checkpoints_match_transformers(tmp_path, scaling):
    from effml.llm.rope import RoPE

    hf = _hf("llama", True, rope_scaling=scaling)
    hf.save_pretrained(tmp_path)
    model, _ = load_checkpoint(tmp_path)
    assert from_transformers(hf).args.rope_scaling == model.args.rope_scaling  # the in-memory path reads it too
    assert model.args.rope_scaling is not None and model.args.rope_scaling.kind == scaling["rope_type"]
    plain = RoPE(model.args.head_dim, model.args.rope_theta).inv_freq
    changed = (model.rope.inv_freq != plain)
    assert changed.any() and (scaling["rope_type"] == "linear" or not changed.all())  # llama3 keeps the fast ones
    assert torch.equal(model.rope.inv_freq, hf.model.rotary_emb.inv_freq)  # the same frequencies, bit for bit
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79, 50, 28, 84, 19] * 3])
    with torch.no_grad():  # 60 positions: the slow frequencies' rotations differ from unscaled ones by then
        ours, ref = model(ids), hf(ids).logits
    # fp32 sums in another order over 60 positions: logits of O(10) agree to ~3e-5 relative
    torch.testing.assert_close(ours, ref, atol=5e-4, rtol=1e-4)
    hf_out = hf.generate(ids[:, :8], max_new_tokens=8, do_sample=False, pad_token_id=0)[0, 8:].tolist()
    assert generate(model, ids[0, :8].tolist(), GenerateConfig(max_new_tokens=8)).tokens == hf_out
    from effml.llm.engine import prepare

    prepare(model)  # the engine's RoPE table (and effml's fused step where its kernels build) from the same frequencies
    assert generate(model, ids[0, :8].tolist(), GenerateConfig(max_new_tokens=8)).tokens == hf_out
    from effml.llm.model import ModelArgs

    assert ModelArgs.from_dict(model.args.to_dict()) == model.args  # the scaling survives a round trip


def test_bundled_llm_configs_give_their_published_parameter_counts():
    """Every bundled causal-LM config of an architecture the decoder runs (Llama 2 / 3 / 3.2, Mistral, SmolLM2,
    Qwen3) maps to ModelArgs with the published parameter count (the JSONs cite it; tests/configs checks the same
    number against transformers' own model); the others (Mixtral's experts, GPT-2) are refused by name."""
    from effml import configs
    from effml.llm.checkpoint import ARCHITECTURES, args_from_config

    ran = []
    for name in configs.available():
        cfg = configs.load(name)
        if cfg.task != "causal-lm":
            continue
        arch = (cfg.hf_config.get("architectures") or [""])[0]
        if arch not in ARCHITECTURES:
            with pytest.raises(ConfigError, match=f"architecture '{arch}' is not supported"):
                args_from_config(cfg.hf_config, name)
            continue
        assert args_from_config(cfg.hf_config, name).params() == cfg.published_params, name
        ran.append(name)
    assert {"llama-2-7b", "llama-3-8b", "llama-3.2-1b", "mistral-7b", "qwen3-0.6b"} <= set(ran)


def test_smollm2_cache_directory_is_an_hf_checkpoint():
    from effml.llm.weights import converted_dir, ensure_converted, load_smollm2

    ensure_converted()
    model, tok = load_checkpoint(converted_dir())
    ref, _ = load_smollm2()
    ids = torch.tensor([tok.chat("Hi")])
    with torch.no_grad():
        assert torch.equal(model(ids), ref(ids))  # the same tensors, the same code path


def test_a_tokenizer_without_a_chat_template_is_refused_by_name(tmp_path):
    """A base model's directory (tokenizer files, no chat_template.jinja): the chat wrapping says to feed raw text
    instead of failing inside transformers."""
    import shutil

    from effml.llm.checkpoint import load_checkpoint_llm
    from effml.llm.weights import converted_dir, ensure_converted

    ensure_converted()
    for f in converted_dir().iterdir():
        if f.name != "chat_template.jinja":
            shutil.copy(f, tmp_path)
    lm = load_checkpoint_llm(tmp_path)
    with pytest.raises(ConfigError, match=rf"tokenizer '{tmp_path.name}' has no chat template .* --raw"):
        lm.tokenizer.chat("Hi")
    from effml.llm.weights import Tokenizer

    assert lm.tokenizer.encode("Hi") == Tokenizer.from_dir(converted_dir()).encode("Hi")  # plain text still encodes


def test_bad_checkpoints_are_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(ConfigError, match="has no config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], **SMALL}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"no \*.safetensors weights \(found .bin: pytorch_model.bin\)"):
        load_checkpoint(tmp_path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "n_embd": 64}))
    with pytest.raises(ConfigError, match="architecture 'GPT2LMHeadModel' is not supported"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], **SMALL,
                                                      "rope_scaling": {"rope_type": "yarn", "factor": 8.0}}))
    with pytest.raises(ConfigError, match="RoPE scaling 'yarn' is not implemented"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], **SMALL,
                                                      "rope_scaling": {"rope_type": "llama3"}}))
    with pytest.raises(ConfigError, match="rope_scaling 'llama3' has no 'factor'"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Phi3ForCausalLM"], **SMALL,
                                                      "partial_rotary_factor": 0.75}))  # Phi-4-mini's
    with pytest.raises(ConfigError, match=r"partial_rotary_factor=0.75 \(RoPE on part of each head\)"):
        load_checkpoint(tmp_path)
    from effml.errors import ModelError
    from effml.llm.checkpoint import from_state_dict

    # a fused q|k|v of the wrong height (here 64 rows where 4 heads of 16 + 2 x 2 KV heads of 16 make 128)
    cfg = {"architectures": ["Phi3ForCausalLM"], **SMALL}
    with pytest.raises(ModelError, match=r"layers.0.self_attn.qkv_proj.weight: 64 rows, .* 64 \+ 32 \+ 32"):
        from_state_dict(cfg, {"model.layers.0.self_attn.qkv_proj.weight": torch.zeros(64, 64)})


def test_transformers_models_the_engine_cannot_run_are_refused_clearly():
    import transformers as tf

    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ConfigError, match="runs effml.llm.model.Transformer, not GPT2LMHeadModel"):
        generate(gpt2, [1, 2, 3])
    with pytest.raises(ConfigError, match="architecture 'GPT2LMHeadModel' is not supported"):
        from_transformers(gpt2)


def test_a_prompt_longer_than_the_context_is_refused(tmp_path):
    hf = _hf("mistral", False)  # max_position_embeddings 128 (sliding window 4096 is longer: no cap)
    hf.save_pretrained(tmp_path)
    model, _ = load_checkpoint(tmp_path)
    assert model.args.max_seq_len == 128
    with pytest.raises(ConfigError, match="exceeds the model's context of 128 tokens"):
        generate(model, [1] * 120, GenerateConfig(max_new_tokens=16))
