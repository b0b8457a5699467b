"""Bundled model configs: each builds on meta with exactly its published parameter count and runs a forward."""

import json
import time

import pytest
import torch

from effml import configs
from effml.configs import ModelConfig
from effml.errors import ConfigError

# The models the brief lists; the folder may hold more.
REQUIRED = {"llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "mistral-7b", "gpt2", "gpt2-xl",
            "bert-base", "vit-base", "resnet-50", "mobilenet-v2", "smollm2-135m"}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def test_available_lists_the_required_models_sorted():
    names = configs.available()
    assert REQUIRED <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", configs.available())
def test_builds_on_meta_with_published_count_and_runs(name):
    cfg = configs.load(name)
    assert cfg.name == name and cfg.published_params is not None
    model = configs.build(cfg)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert not model.training
    # The published count of each checkpoint (e.g. Llama-2-7B 6,738,415,616) is in its JSON with its source.
    assert n_params(model) == cfg.published_params

    hf = configs.hf_config(cfg)
    if "num_local_experts" in cfg.hf_config:  # torch's meta kernel of _grouped_mm (MoE experts) takes only bf16
        model = configs.build(cfg, dtype="bf16")
    seq = None if cfg.task == "image-classification" else 16
    args, kwargs = configs.example_inputs(cfg, batch=2, seq=seq)
    with torch.no_grad():
        out = model(*args, **kwargs)
    if cfg.task == "causal-lm":
        assert out.logits.shape == (2, 16, hf.vocab_size)  # (B, T, vocab): one next-token distribution per position
    elif cfg.task == "encoder":
        assert out.last_hidden_state.shape == (2, 16, hf.hidden_size)  # (B, T, d) = (2, 16, 768) for BERT-base
    else:
        assert out.logits.shape == (2, 1000)  # (B, classes): every bundled image model is an ImageNet-1k classifier


def test_llama2_7b_closed_form():
    # vocab·d·2 (embedding + untied lm_head) + L·(4d² attention + 3·d·ffn SwiGLU + 2d RMSNorms) + d final norm
    # = 32000·4096·2 + 32·(4·4096² + 3·4096·11008 + 2·4096) + 4096
    # = 262,144,000 + 32·(67,108,864 + 135,266,304 + 8,192) + 4,096
    # = 262,144,000 + 32·202,383,360 + 4,096 = 262,144,000 + 6,476,267,520 + 4,096 = 6,738,415,616
    V, d, L, ffn = 32000, 4096, 32, 11008
    closed = V * d * 2 + L * (4 * d * d + 3 * d * ffn + 2 * d) + d
    assert closed == 6_738_415_616
    assert n_params(configs.build(configs.load("llama-2-7b"))) == closed


def test_llama2_70b_gqa_closed_form():
    # GQA: q and o are d×d, k and v are d×(8 kv heads · 128) = 8192×1024
    # per layer 2·8192² + 2·8192·1024 + 3·8192·28672 + 2·8192 = 134,217,728 + 16,777,216 + 704,643,072 + 16,384
    #         = 855,654,400;  ×80 = 68,452,352,000;  + 2·32000·8192 = 524,288,000;  + 8192 = 68,976,648,192
    d, kv, L, ffn, V = 8192, 8 * 128, 80, 28672, 32000
    closed = L * (2 * d * d + 2 * d * kv + 3 * d * ffn + 2 * d) + 2 * V * d + d
    assert closed == 68_976_648_192 == configs.load("llama-2-70b").published_params


def test_build_70b_on_meta_is_fast_and_casts():
    cfg = configs.load("llama-2-70b")
    configs.build(cfg)  # the first build pays transformers' one-off imports
    t0 = time.perf_counter()
    model = configs.build(cfg, dtype="bf16")
    assert time.perf_counter() - t0 < 1.0  # measured ~0.15 s for 69 B parameters on meta
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_build_rejects_integer_dtype():
    with pytest.raises(ConfigError, match="float dtype"):
        configs.build(configs.load("gpt2"), dtype="int8")


def test_default_seq_and_input_shapes():
    ids, kw = configs.example_inputs(configs.load("llama-2-7b"))
    assert ids[0].shape == (1, 2048) and ids[0].dtype == torch.int64  # default 2048 < 4096 positions
    assert kw == {"use_cache": True} and "attention_mask" not in kw  # on meta, a mask makes transformers call .item()
    assert configs.example_inputs(configs.load("gpt2"))[0][0].shape == (1, 1024)  # 2048 capped at n_positions
    assert configs.example_inputs(configs.load("bert-base"), batch=4)[0][0].shape == (4, 128)  # encoder default
    (px,), kw = configs.example_inputs(configs.load("vit-base"), batch=3, dtype="fp16")
    assert px.shape == (3, 3, 224, 224) and px.dtype == torch.float16 and kw == {}


def test_seq_beyond_max_positions_names_the_limit():
    with pytest.raises(ConfigError, match=r"seq 4097 exceeds 'llama-2-7b'.*4096"):
        configs.example_inputs(configs.load("llama-2-7b"), seq=4097)
    with pytest.raises(ConfigError, match="1024"):  # GPT-2: n_positions 1024
        configs.example_inputs(configs.load("gpt2"), seq=1025)
    with pytest.raises(ConfigError, match="seq does not apply"):
        configs.example_inputs(configs.load("resnet-50"), seq=16)


def test_real_device_ids_are_seeded_and_in_vocab():
    cfg = configs.load("gpt2")
    (a,), _ = configs.example_inputs(cfg, batch=2, seq=64, device="cpu")
    (b,), _ = configs.example_inputs(cfg, batch=2, seq=64, device="cpu")
    assert torch.equal(a, b)  # same seed -> same ids
    assert 0 <= int(a.min()) and int(a.max()) < 50257  # GPT-2 vocab


def test_unknown_name_lists_close_matches_first():
    with pytest.raises(ConfigError) as e:
        configs.load("llama-2-8b")
    msg = str(e.value)
    assert "'llama-2-8b'" in msg and "resnet-50" in msg  # names the bad name and lists every config
    listed = msg.split("available: ")[1]
    assert listed.index("llama-2-7b") < listed.index("bert-base")  # close match before the alphabetical rest


def test_missing_file_path():
    with pytest.raises(ConfigError, match="does not exist"):
        configs.load("/no/such/dir/config.json")


def _write(tmp_path, folder, data):
    (tmp_path / folder).mkdir()
    path = tmp_path / folder / "config.json"
    path.write_text(json.dumps(data))
    return str(path)


TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 32}


def test_plain_hf_config_json_builds_and_runs_on_cpu(tmp_path):
    cfg = configs.load(_write(tmp_path, "tiny-llama", TINY_LLAMA))
    assert (cfg.name, cfg.task, cfg.published_params) == ("tiny-llama", "causal-lm", None)
    model = configs.build(cfg, device="cpu")
    # head_dim 64/4 = 16, so k and v are 64×(2·16) = 64×32:
    # 100·64·2 + 2·(2·64² + 2·64·32 + 3·64·128 + 2·64) + 64 = 12,800 + 2·(8,192 + 4,096 + 24,576 + 128) + 64
    #   = 12,800 + 2·36,992 + 64 = 86,848
    assert n_params(model) == 86_848
    args, kwargs = configs.example_inputs(cfg, seq=8, device="cpu")
    with torch.no_grad():
        assert model(*args, **kwargs).logits.shape == (1, 8, 100)
    with pytest.raises(ConfigError, match="exceeds.*32"):
        configs.example_inputs(cfg, seq=33)


def test_task_inferred_from_model_type_without_architectures(tmp_path):
    assert configs.load(_write(tmp_path, "b", {"model_type": "bert"})).task == "encoder"  # BERT is in the MLM map
    assert configs.load(_write(tmp_path, "v", {"model_type": "vit"})).task == "image-classification"
    assert configs.load(_write(tmp_path, "m", {"model_type": "mistral"})).task == "causal-lm"
    with pytest.raises(ConfigError, match="cannot infer the task.*'t5'"):
        configs.load(_write(tmp_path, "t", {"model_type": "t5"}))


def test_effml_json_by_path_round_trips(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(configs.load("gpt2").to_dict()))
    assert configs.load(str(path)) == configs.load("gpt2")


def test_model_config_validation():
    with pytest.raises(ConfigError, match="task 'seq2seq'"):
        ModelConfig("x", "seq2seq", {"model_type": "t5"})
    with pytest.raises(ConfigError, match="model_type"):
        ModelConfig("x", "encoder", {"hidden_size": 8})
    with pytest.raises(ConfigError, match="published_params"):
        ModelConfig("x", "encoder", {"model_type": "bert"}, published_params=-1)
