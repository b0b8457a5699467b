"""compress(): one workflow (apply -> fine-tune -> finalize -> measure) that `effml prune` and the study share."""

import copy

import pytest
import torch

from effml.compress import ChannelPrune, FinePrune, KMeansConfig, LinearQuantConfig, load_compressed
from effml.compress.workflow import Measure, compress, speed_change
from effml.errors import ConfigError
from effml.zoo import lenet5
from effml.zoo.data import load
from effml.train.classifier import TrainLoopConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load("digits", batch_size=64, seed=0, train_limit=256, test_limit=64, image_size=28)


def test_chain_prunes_finetunes_detaches_and_quantizes(digits):
    torch.manual_seed(0)
    m = lenet5()
    seen = []
    rep = compress(m, [FinePrune(sparsity=0.8), KMeansConfig(bits=4)], data=digits,
                   finetune=TrainLoopConfig(epochs=0.25, lr=1e-3), progress=lambda what, f: seen.append(f))
    assert rep.model is m and rep.technique == "prune fine + quantize kmeans"
    masks = rep.results[0].masks
    for lm in masks.layers.values():
        w = lm.module.weight
        assert not w._backward_hooks  # finalized: the gradient hooks are gone ...
        assert torch.count_nonzero(w[~lm.mask]) == 0  # ... and the pruned weights stayed exactly zero
        # k-means keeps zeros out of the codebook: at most 2^4 values besides 0 per layer
        assert torch.unique(w[lm.mask]).numel() <= 16
    assert rep.stored_bytes == rep.results[-1].stored_bytes and rep.codes is not None
    assert seen == sorted(seen) and seen[-1] == 1.0  # one bar over the whole chain


def test_qat_without_a_recipe_is_refused():
    with pytest.raises(ConfigError, match=r"LinearQuantConfig\(qat=True\) trains with quantization in the loop"):
        compress(lenet5(), [LinearQuantConfig(bits=4, qat=True)])
    with pytest.raises(ConfigError, match="needs data to fine-tune on"):
        compress(lenet5(), [FinePrune()], finetune=TrainLoopConfig())


def test_measure_counts_before_and_after(digits):
    torch.manual_seed(0)
    x = digits.test.x[:4]
    rep = compress(lenet5(), ChannelPrune(sparsity=0.5), example_inputs=(x,), data=digits,
                   measure=Measure(hw=None, rounds=2))
    d = rep.to_dict()
    # halving every conv/fc group: the pruned model has fewer MACs and parameters, accuracy measured on both
    assert d["after"]["macs"] < d["before"]["macs"] and d["after"]["params"] < d["before"]["params"]
    assert d["before"]["accuracy"] is not None and d["speed"]["measured"]["rounds"] == 2
    assert speed_change([ChannelPrune(), LinearQuantConfig()]) == "channel"


def test_cli_and_study_make_the_same_model(tmp_path, capsys):
    """`effml prune ... --finetune-epochs` and a study plan with the same config, seed and recipe give
    bit-identical weights: both run compress() on the same data."""
    from effml.cli import main
    from effml.study.pipeline import StudyConfig, _load_data
    from effml.study.variants import Plan, StudyContext, apply

    torch.manual_seed(0)
    dense = lenet5()
    weights = tmp_path / "dense.pt"
    torch.save(dense.state_dict(), weights)
    out = tmp_path / "cli.safetensors"
    rc = main(["prune", "--model", "effml.zoo:lenet5", "--kind", "fine", "--sparsity", "0.8", "--weights",
               str(weights), "--data", "digits", "--train-limit", "256", "--test-limit", "64", "--finetune-epochs",
               "0.5", "--lr", "5e-4", "--seed", "0", "--hw", "none", "--no-measure", "--out", str(out), "--json"])
    assert rc == 0
    capsys.readouterr()
    cli_model = load_compressed(out, lenet5())

    config = StudyConfig(data="digits", train_limit=256, test_limit=64, finetune_epochs=0.5, seed=0)
    data = _load_data(config, lenet5)
    ctx = StudyContext(data, (data.test.x[:1],), config.finetune_epochs, student=lenet5, seed=config.seed)
    base = lenet5()
    base.load_state_dict(torch.load(weights, weights_only=True))
    study_model = apply(Plan("p", (("prune", {"method": "fine", "sparsity": 0.8}),)), base, ctx).model

    a, b = cli_model.state_dict(), study_model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["features.0.weight"], dense.state_dict()["features.0.weight"])  # it did change
