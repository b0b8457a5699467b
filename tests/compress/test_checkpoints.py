"""Compressed models round-trip through safetensors into a freshly built architecture, outputs identical."""

import copy
import warnings

import pytest
import torch

from effml.compress import (ChannelPrune, DynamicInt8Config, FinePrune, KMeansConfig, LinearQuantConfig, StaticInt8Config,
                            WeightOnlyConfig, freeze, load_compressed, prune, quantize, save_compressed)
from effml.compress.io import CheckpointError, read_metadata
from effml.zoo import lenet5, mlp, resnet, tiny_gpt

warnings.filterwarnings("ignore", category=DeprecationWarning)
IMG = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))


pytestmark = pytest.mark.usefixtures("one_thread")


def _qat_linear(m):
    quantize(m, LinearQuantConfig(bits=4, qat=True))
    return m, freeze(m)


def _kmeans(m):
    res = quantize(m, KMeansConfig(bits=3))
    return m, res.codes


CASES = {
    "linear-4bit": (lenet5, IMG, _qat_linear),
    "kmeans-3bit": (lenet5, IMG, _kmeans),
    "int8-dynamic": (mlp, IMG, lambda m: (quantize(m, DynamicInt8Config()).model, None)),
    "int8-per-tensor": (mlp, IMG, lambda m: (quantize(m, DynamicInt8Config(per_channel=False)).model, None)),
    "int8-smooth": (mlp, IMG, lambda m: (quantize(m, DynamicInt8Config(smooth_alpha=0.8),
                                                  calibration=[IMG]).model, None)),
    "int8-weight": (mlp, IMG, lambda m: (quantize(m, WeightOnlyConfig(bits=8)).model, None)),
    "int4-weight": (tiny_gpt, torch.randint(0, 65, (2, 16)),
                    lambda m: (quantize(m, WeightOnlyConfig(bits=4, group_size=32)).model, None)),
    "channel-resnet": (resnet, torch.randn(2, 3, 32, 32),
                       lambda m: (prune(m, ChannelPrune(sparsity=0.5),
                                        example_inputs=(torch.randn(1, 3, 32, 32),)).model, None)),
    "channel-gpt-heads": (tiny_gpt, torch.randint(0, 65, (2, 16)),
                          lambda m: (prune(m, ChannelPrune(sparsity=0.5)).model, None)),
    "fine": (lenet5, IMG, lambda m: (prune(m, FinePrune(sparsity=0.9)).model, None)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_is_exact(case, tmp_path):
    build, x, compress = CASES[case]
    torch.manual_seed(0)
    model, codes = compress(build().eval())
    path = save_compressed(model, tmp_path / f"{case}.safetensors", codes=codes, info={"case": case})
    torch.manual_seed(1)  # a fresh model with other random weights: everything must come from the file
    loaded = load_compressed(path, build())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), atol=0, rtol=0)
    assert read_metadata(path)["info"] == {"case": case}
    # safetensors holds no code: a plain torch.load of it is impossible, nothing executes on load
    assert path.read_bytes()[8:9] == b"{"  # 8-byte header length, then the JSON header


def test_pruned_model_is_an_ordinary_smaller_module(tmp_path):
    torch.manual_seed(0)
    m = resnet().eval()
    prune(m, ChannelPrune(sparsity=0.5), example_inputs=(torch.randn(1, 3, 32, 32),))
    # a plain state dict of the smaller module also saves and loads with torch's own weights_only loader
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    state = torch.load(tmp_path / "sd.pt", weights_only=True)
    assert state["stem.0.weight"].shape == (8, 3, 3, 3)
    assert sum(p.numel() for p in m.parameters()) < 272_474 / 3.5  # ~1/4 of ResNet-20's 272,474


def test_static_int8_cannot_be_saved(tmp_path):
    m = lenet5().eval()
    q = quantize(m, StaticInt8Config(), calibration=[IMG]).model
    with pytest.raises(CheckpointError, match="static int8 FX model"):
        save_compressed(q, tmp_path / "q.safetensors")


def test_wrong_architecture_is_a_clear_error(tmp_path):
    m = copy.deepcopy(mlp())
    path = save_compressed(m, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_compressed(path, lenet5())


@pytest.mark.parametrize("config", [LinearQuantConfig(bits=4), KMeansConfig(bits=3), DynamicInt8Config()])
def test_gpt2_conv1d_round_trip(config, tmp_path):
    """Quantizing GPT-2 turns its Conv1D layers into nn.Linear; the checkpoint says so and a fresh GPT-2 (with
    Conv1D) loads it back exactly."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    res = quantize(model, config)
    path = save_compressed(model, tmp_path / "gpt2.safetensors", codes=res.codes)
    torch.manual_seed(1)
    loaded = load_compressed(path, transformers.GPT2LMHeadModel(cfg).eval())
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)
    assert type(loaded.transformer.h[0].attn.c_attn) is type(model.transformer.h[0].attn.c_attn)
