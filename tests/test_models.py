"""The model-spec resolver: configs on meta, `package.module:callable` on cpu, and the errors it gives."""

import json

import pytest
import torch

from effml.errors import ConfigError, ModelError
from effml.models import ModelSpec, load_callable, resolve
from effml.zoo import lenet5


def test_exactly_one_of_config_or_model():
    with pytest.raises(ConfigError, match="exactly one"):
        resolve()
    with pytest.raises(ConfigError, match="exactly one"):
        resolve(config="gpt2", model="effml.zoo:lenet5")


def test_config_resolves_on_meta():
    spec = resolve(config="gpt2", batch=2, seq=16)
    assert isinstance(spec, ModelSpec)
    assert (spec.name, spec.source) == ("gpt2", "config:gpt2")
    assert spec.args[0].shape == (2, 16) and spec.args[0].device.type == "meta"
    assert spec.kwargs == {"use_cache": True}
    assert not spec.model.training
    with torch.no_grad():
        assert spec.model(*spec.args, **spec.kwargs).logits.shape == (2, 16, 50257)  # (B, T, GPT-2 vocab)
    d = spec.to_dict()
    assert d["published_params"] == 124_439_808 and d["args"] == [{"shape": [2, 16], "dtype": "int64"}]


def test_config_default_seq_and_dtype():
    spec = resolve(config="llama-2-7b", dtype="bf16")
    assert spec.args[0].shape == (1, 2048)  # default causal-LM seq 2048 (< 4096 positions)
    assert next(spec.model.parameters()).dtype == torch.bfloat16


def test_config_errors():
    with pytest.raises(ConfigError, match="seq 5000 exceeds 'llama-2-7b'.*4096"):
        resolve(config="llama-2-7b", seq=5000)
    with pytest.raises(ConfigError, match="unknown model config 'gpt3'"):
        resolve(config="gpt3")
    with pytest.raises(ConfigError, match="--input-shape does not apply"):
        resolve(config="gpt2", input_shape=(1, 16))
    with pytest.raises(ConfigError, match="float dtype"):
        resolve(config="gpt2", dtype="int8")


def test_config_path_on_cpu_is_seeded(tmp_path):
    cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 32, "n_layer": 1, "n_head": 2,
           "n_positions": 64, "vocab_size": 50}
    (tmp_path / "tiny-gpt2").mkdir()
    path = tmp_path / "tiny-gpt2" / "config.json"
    path.write_text(json.dumps(cfg))
    a = resolve(config=str(path), seq=8, device="cpu")
    b = resolve(config=str(path), seq=8, device="cpu")
    assert a.name == "tiny-gpt2" and a.config.task == "causal-lm"
    assert torch.equal(a.args[0], b.args[0])  # same seed -> same token ids
    with torch.no_grad():
        assert a.model(*a.args, **a.kwargs).logits.shape == (1, 8, 50)  # (B, T, vocab)


def test_zoo_callable_uses_its_entry_input():
    spec = resolve(model="effml.zoo:lenet5", batch=4)
    assert (spec.name, spec.source) == ("lenet5", "callable:effml.zoo:lenet5")
    assert spec.args[0].shape == (4, 1, 28, 28)  # the zoo entry's (1, 1, 28, 28) at batch 4
    assert next(spec.model.parameters()).device.type == "cpu" and not spec.model.training
    with torch.no_grad():
        assert spec.model(*spec.args).shape == (4, 10)  # 10 classes
    # LeNet-5 as the zoo docstring states: 61,706 parameters
    assert sum(p.numel() for p in spec.model.parameters()) == 61_706


def test_zoo_token_model_keeps_int_ids_with_input_shape():
    spec = resolve(model="effml.zoo:tiny_gpt", input_shape=(3, 16), dtype="bf16")
    assert spec.args[0].shape == (3, 16) and spec.args[0].dtype == torch.int64  # ids are not cast to bf16
    assert next(spec.model.parameters()).dtype == torch.bfloat16


def test_plain_callable_needs_input_shape():
    with pytest.raises(ConfigError, match="--input-shape is required"):
        resolve(model="torch.nn:Identity")  # an nn.Module class with no zoo_entry
    spec = resolve(model="torch.nn:Identity", input_shape=(2, 5), dtype="fp16")
    assert spec.args[0].shape == (2, 5) and spec.args[0].dtype == torch.float16  # float input cast to dtype
    again = resolve(model="torch.nn:Identity", input_shape=(2, 5), dtype="fp16")
    assert torch.equal(spec.args[0], again.args[0])  # seeded randn


def test_callable_on_meta():
    spec = resolve(model="effml.zoo:lenet5", device="meta")
    assert spec.args[0].device.type == "meta"
    assert {p.device.type for p in spec.model.parameters()} == {"meta"}


@pytest.mark.parametrize("bad, text", [
    ("effml.zoo.lenet5", "'effml.zoo.lenet5' is not a known zoo model name"),  # neither NAME nor module:callable
    ("effml.zoo:lenet5:x", "must look like package.module:callable"),
    ("effml zoo:lenet5", "is not a module path"),
    ("effml.zoo:", "is not a callable name"),
    ("no_such_pkg_xyz.models:net", "no module named 'no_such_pkg_xyz'"),
    ("effml.no_such_module:net", "no module named 'effml.no_such_module'"),
    ("effml.zoo:lenet6", "'effml.zoo' has no attribute 'lenet6'; did you mean lenet5"),
    ("effml.units:FLOPS_PER_MAC", "'FLOPS_PER_MAC' is not callable"),
    ("builtins:dict", "model spec 'builtins:dict' returned a dict, not a torch.nn.Module"),
])
def test_bad_specs_name_what_was_wrong(bad, text):
    with pytest.raises(ConfigError) as e:
        resolve(model=bad)
    assert text in str(e.value)


def test_callable_that_raises_is_a_model_error():
    with pytest.raises(ModelError, match="effml.units:si.*TypeError"):
        resolve(model="effml.units:si")  # si() needs an argument


def test_load_callable_returns_the_object():
    assert load_callable("effml.zoo:lenet5") is lenet5
    assert load_callable("effml.zoo.registry:ZooEntry.example_inputs").__name__ == "example_inputs"
