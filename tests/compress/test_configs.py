"""Per-method configs: validation naming the field, dict round trips, dispatch by type, one in-place rule,
and every weight layer a method leaves alone listed with its reason."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

from effml.compress import (CONFIGS, PRUNERS, QUANTIZERS, ChannelPrune, DynamicInt8Config, FinePrune, KMeansConfig,
                            LinearQuantConfig, NMPrune, StaticInt8Config, WeightOnlyConfig, config_from_dict, prune,
                            quantize)
from effml.errors import ConfigError
from effml.zoo import lenet5, mlp

pytestmark = pytest.mark.usefixtures("one_thread")

BUILTIN = (FinePrune, ChannelPrune, NMPrune, LinearQuantConfig, KMeansConfig, DynamicInt8Config, StaticInt8Config,
           WeightOnlyConfig)


@pytest.mark.parametrize("cls", BUILTIN)
def test_dict_round_trip_and_registry(cls):
    cfg = cls()
    assert CONFIGS[cls.name] is cls
    d = cfg.to_dict()
    assert d["method"] == cls.name and config_from_dict(d) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.exclude = ("x",)


@pytest.mark.parametrize("d, match", [
    ({"method": "weight-only", "bits": 8, "group_size": 64}, "WeightOnlyConfig.group_size applies to bits=4 only"),
    ({"method": "weight-only", "bits": 3}, "WeightOnlyConfig.bits must be 8 or 4"),
    ({"method": "weight-only", "bits": 4, "kernel": "fast"}, "WeightOnlyConfig.kernel 'fast' unknown"),
    ({"method": "linear", "group_size": 32}, "LinearQuantConfig.group_size applies to granularity='group' only"),
    ({"method": "linear", "granularity": "group"}, "granularity='group' needs group_size >= 1"),
    ({"method": "kmeans", "train": "centroids"}, "KMeansConfig.train='centroids' applies to qat=True only"),
    ({"method": "kmeans", "bits": 17}, r"KMeansConfig.bits must be an integer in \[1, 16\]"),
    ({"method": "int8-dynamic", "smooth_alpha": 1.5}, r"DynamicInt8Config.smooth_alpha must be in \[0, 1\]"),
    ({"method": "int8-static", "per_channel": False}, "StaticInt8Config .method 'int8-static'. has no field per_channel"),
    ({"method": "fine", "n": 2}, "FinePrune .method 'fine'. has no field n"),
    ({"method": "channel", "scope": "layer"}, "ChannelPrune .method 'channel'. has no field scope"),
    ({"method": "channel", "taylor_batches": 0}, "ChannelPrune.taylor_batches must be an integer >= 1"),
    ({"method": "n:m", "n": 3, "m": 2}, "NMPrune n, m must satisfy 0 < n < m"),
    ({"method": "fine", "exclude": "fc1"}, "FinePrune.exclude must be a sequence of layer names"),
    ({"sparsity": 0.5}, "needs a 'method' key"),
])
def test_invalid_configs_name_the_field(d, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(d)


def test_dispatch_is_by_type_and_unknown_types_are_named():
    assert PRUNERS.get_for(FinePrune()) is not PRUNERS.get_for(ChannelPrune())
    with pytest.raises(ConfigError, match="unknown quantization method FinePrune; expected one of LinearQuantConfig"):
        quantize(mlp(), FinePrune())
    with pytest.raises(ConfigError, match="unknown pruning method WeightOnlyConfig"):
        prune(mlp(), WeightOnlyConfig())


IMG = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
VERBS = {
    "fine": lambda m: prune(m, FinePrune(sparsity=0.5)),
    "channel": lambda m: prune(m, ChannelPrune(sparsity=0.5), example_inputs=(IMG,)),
    "n:m": lambda m: prune(m, NMPrune()),
    "linear": lambda m: quantize(m, LinearQuantConfig(bits=4)),
    "kmeans": lambda m: quantize(m, KMeansConfig(bits=2)),
    "int8-dynamic": lambda m: quantize(m, DynamicInt8Config()),
    "int8-smooth": lambda m: quantize(m, DynamicInt8Config(smooth_alpha=0.5), calibration=[IMG]),
    "int8-static": lambda m: quantize(m, StaticInt8Config(), calibration=[IMG]),
    "weight-only": lambda m: quantize(m, WeightOnlyConfig(bits=8)),
}


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_works_in_place(verb):
    torch.manual_seed(0)
    m = lenet5().eval()
    ref = copy.deepcopy(m)
    res = VERBS[verb](m)
    assert res.model is m  # the same object, compressed
    with torch.no_grad():
        y, y0 = m(IMG), ref(IMG)
    assert y.shape == y0.shape == (2, 10)
    if verb != "channel":  # channel pruning removes half the channels: a different function, no bound
        # 4-bit fake quant, 2:4 and 50% pruning change the function; they must still give finite logits
        # that differ from the dense ones (the model really was changed in place)
        assert torch.isfinite(y).all() and not torch.equal(y, y0)


def test_skipped_layers_have_reasons():
    torch.manual_seed(0)
    m = lenet5()
    res = quantize(m, DynamicInt8Config(exclude=("classifier.1",)))
    convs = [n for n, x in lenet5().named_modules() if isinstance(x, nn.Conv2d)]
    reasons = dict(res.skipped)
    assert reasons["classifier.1"] == "excluded by the config"
    assert all("no dynamic int8 kernel for convolutions" in reasons[c] for c in convs)
    assert set(reasons) == {"classifier.1", *convs} and "classifier.1" not in res.layers
    # N:M: a reduction size that is not a multiple of m is named, not silently left dense
    m = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    res = prune(m, NMPrune(n=2, m=4))
    assert res.skipped == [("0", "reduction size 6 is not a multiple of m=4; left dense")]


def _gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


CONV1D = ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
          "transformer.h.0.mlp.c_proj"]
TIED = "its weight is tied to transformer.wte (Embedding)"
GPT2_CASES = {
    "fine": lambda m: prune(m, FinePrune(sparsity=0.5)),
    "n:m": lambda m: prune(m, NMPrune()),
    "linear": lambda m: quantize(m, LinearQuantConfig(bits=8)),
    "kmeans": lambda m: quantize(m, KMeansConfig(bits=4)),
    "int8-dynamic": lambda m: quantize(m, DynamicInt8Config()),
    "weight-only": lambda m: quantize(m, WeightOnlyConfig(bits=4, group_size=32, act_dtype="fp32")),
}


@pytest.mark.parametrize("case", list(GPT2_CASES))
def test_gpt2_conv1d_handled_and_tied_head_left_with_its_reason(case):
    """GPT-2 writes every projection as transformers' Conv1D: each method handles all four (quantization turns
    them into the equivalent nn.Linear first), and the lm_head tied to the embedding is never compressed by
    accident: it is listed with the reason."""
    gpt2 = _gpt2()
    ids = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = gpt2(ids).logits
    res = GPT2_CASES[case](gpt2)
    assert set(res.layers) == set(CONV1D)
    assert dict(res.skipped) == {"lm_head": dict(res.skipped)["lm_head"]} and TIED in dict(res.skipped)["lm_head"]
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight  # still tied, the embedding untouched
    with torch.no_grad():
        out = gpt2(ids).logits
    assert out.shape == ref.shape and torch.isfinite(out).all()


def test_gpt2_conv1d_as_linear_is_exact_and_generate_runs():
    gpt2 = _gpt2()
    ids = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = gpt2(ids).logits
    res = quantize(gpt2, LinearQuantConfig(bits=16, symmetric=False, granularity="tensor", exclude=CONV1D))
    assert res.layers == [] and {n for n, _ in res.skipped} == {"lm_head", *CONV1D}
    from effml.compress.quantize import choose_layers

    choose_layers(gpt2, LinearQuantConfig(), ("Linear",))  # Conv1D -> nn.Linear only, nothing quantized
    assert all(isinstance(gpt2.get_submodule(n), nn.Linear) for n in CONV1D)
    with torch.no_grad():
        # same products, the weight read transposed: equal to float rounding (|logits| ~ 1: 1e-5 absolute)
        torch.testing.assert_close(gpt2(ids).logits, ref, atol=1e-5, rtol=1e-5)
    quantize(gpt2, DynamicInt8Config())
    out = gpt2.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 11)  # transformers' own generate runs on the quantized model


def test_tied_head_quantized_when_named():
    gpt2 = _gpt2()
    res = quantize(gpt2, WeightOnlyConfig(bits=8, layers=("lm_head",), act_dtype="fp32"))
    assert res.layers == ["lm_head"]  # named explicitly: the user chose it (the embedding keeps its fp32 copy)
    assert TIED not in str(res.skipped)


def test_a_model_with_no_weight_layer_is_an_error():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(ConfigError, match=r"quantize\(DynamicInt8Config\): Sequential has no nn.Linear.*Embedding, "
                                          "LayerNorm"):
        quantize(model, DynamicInt8Config())
    with pytest.raises(ConfigError, match=r"prune\(FinePrune\): Sequential has no nn.Linear"):
        prune(model, FinePrune())
