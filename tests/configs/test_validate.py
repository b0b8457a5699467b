"""Absurd HF config values refused by effml, naming the field, before transformers sees them."""

import json

import pytest

from effml import configs
from effml.configs.validate import validate_hf_config
from effml.errors import ConfigError

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
         "max_position_embeddings": 64, "rms_norm_eps": 1e-5}

ABSURD = [  # (field, value, what the message says)
    ("hidden_size", 0, "'hidden_size' is 0, must be a positive integer"),
    ("hidden_size", -64, "'hidden_size' is -64, must be a positive integer"),
    ("hidden_size", 64.5, "'hidden_size' is 64.5, must be a positive integer"),
    ("hidden_size", "64", "'hidden_size' is '64', must be a positive integer"),
    ("hidden_size", True, "'hidden_size' is True, must be a positive integer"),
    ("hidden_size", None, "'hidden_size' is None, must be a positive integer"),
    ("num_attention_heads", 0, "'num_attention_heads' is 0, must be a positive integer"),
    ("num_attention_heads", 3, r"'num_attention_heads' \(3\) does not divide field 'hidden_size' \(64\)"),
    ("num_key_value_heads", 3, r"'num_key_value_heads' \(3\) does not divide field 'num_attention_heads' \(4\)"),
    ("num_key_value_heads", 0, r"'num_key_value_heads' is 0, must be a positive integer \(or null\)"),
    ("num_hidden_layers", -1, "'num_hidden_layers' is -1, must be an integer >= 0"),
    ("num_hidden_layers", 2.5, "'num_hidden_layers' is 2.5, must be an integer >= 0"),
    ("vocab_size", -100, "'vocab_size' is -100, must be a positive integer"),
    ("vocab_size", 0, "'vocab_size' is 0, must be a positive integer"),
    ("intermediate_size", 0, r"'intermediate_size' is 0, must be a positive integer \(or null\)"),
    ("max_position_embeddings", -5, r"'max_position_embeddings' is -5, must be a positive integer \(or null\)"),
    ("rms_norm_eps", 0, "'rms_norm_eps' is 0, must be a finite number > 0"),
    ("rms_norm_eps", float("nan"), "'rms_norm_eps' is nan, must be a finite number > 0"),
    ("attention_dropout", 1.5, r"'attention_dropout' is 1.5, must be a probability in \[0, 1\]"),
]


@pytest.mark.parametrize("field,value,message", ABSURD, ids=[f"{f}={v!r}" for f, v, _ in ABSURD])
def test_absurd_values_are_named(tmp_path, field, value, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**LLAMA, field: value}))
    with pytest.raises(ConfigError, match=f"model config 'tmp_path_name' .*: field {message}".replace(
            "tmp_path_name", tmp_path.name)):
        configs.load(str(path))


def test_a_zero_layer_model_and_an_explicit_head_dim_are_allowed():
    validate_hf_config({**LLAMA, "num_hidden_layers": 0}, "x")  # a zero-layer transformer is a model
    # Gemma-style: head_dim given, heads x head_dim need not equal hidden_size
    validate_hf_config({**LLAMA, "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 32}, "x")
    validate_hf_config({**LLAMA, "intermediate_size": None, "sliding_window": None}, "x")  # null: the default


@pytest.mark.parametrize("hf,message", [
    ({"model_type": "gpt2", "n_embd": 100, "n_head": 12}, r"'n_head' \(12\) does not divide field 'n_embd' \(100\)"),
    ({"model_type": "resnet", "hidden_sizes": [256, 0]}, r"'hidden_sizes' is \[256, 0\], must be a non-empty list"),
    ({"model_type": "vit", "image_size": [224, -1]}, r"'image_size' is \[224, -1\], must be a positive integer or"),
    ({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 9},
     r"'num_experts_per_tok' \(9\) exceeds field 'num_local_experts' \(8\)"),
])
def test_other_architectures(hf, message):
    with pytest.raises(ConfigError, match=f"where: field {message}"):
        validate_hf_config(hf, "where")


def test_every_bundled_config_passes():
    for name in configs.available():
        validate_hf_config(configs.load(name).hf_config, name)  # published models are not absurd


def test_refused_before_transformers(monkeypatch, tmp_path):
    import transformers

    called = []
    monkeypatch.setattr(transformers.AutoConfig, "for_model", lambda *a, **k: called.append(a))
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**LLAMA, "hidden_size": 0}))
    with pytest.raises(ConfigError, match="'hidden_size' is 0"):
        configs.hf_config(configs.load(str(path)))
    assert called == []
