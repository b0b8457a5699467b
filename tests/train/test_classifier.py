"""train_classifier / evaluate: learns real data, deterministic under a seed, validated config, step hooks."""

import pytest
import torch
from torch import nn

from effml.errors import ConfigError
from effml.zoo import mlp
from effml.zoo.data import BatchLoader, load
from effml.train.classifier import TrainLoopConfig, evaluate, train_classifier
from effml.train.core import logits_of


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load("digits", batch_size=64)


def test_mlp_learns_digits(digits):
    torch.manual_seed(0)
    model = mlp(in_features=64, hidden=(64,))
    res = train_classifier(model, digits, epochs=4, lr=3e-3, seed=0)
    # chance is 10%; a linear model already reaches ~95% on digits (sklearn's documented example), so an
    # MLP after 4 epochs (92 steps) is comfortably above 85%
    assert res.test_accuracy > 0.85
    assert res.steps == 4 * 23  # ceil(1437 / 64) = 23 batches per epoch
    assert res.losses[-1] < res.losses[0]


def test_same_seed_same_result(digits):
    out = []
    for _ in range(2):
        torch.manual_seed(1)
        model = mlp(in_features=64, hidden=(32,))
        out.append(train_classifier(model, digits, epochs=1, lr=1e-3, seed=5).losses)
    assert out[0] == out[1]


def test_step_hook_runs_after_every_step(digits):
    calls = []
    model = mlp(in_features=64, hidden=(16,))
    train_classifier(model, digits, max_steps=7, step_hook=lambda: calls.append(1), evaluate_after=False)
    assert len(calls) == 7


def test_evaluate_counts_exactly():
    class Const(nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 1.0]]).expand(len(x), 2)  # always predicts class 1

    y = torch.tensor([1, 0, 1, 1, 0])
    assert evaluate(Const(), BatchLoader(torch.zeros(5, 1), y, 2)) == pytest.approx(3 / 5)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="TrainLoopConfig.epochs"):
        TrainLoopConfig(epochs=0)
    with pytest.raises(ConfigError, match="TrainLoopConfig.optimizer: unknown optimizer 'lbfgs'; expected one of "
                                          "adamw, adam, sgd-momentum, sgd"):
        TrainLoopConfig(optimizer="lbfgs")


def test_the_optimizer_comes_from_the_one_optimizer_registry():
    from effml.train.classifier import _optimizer

    model = mlp(in_features=4, hidden=(3,))
    sgd = _optimizer(model, TrainLoopConfig(optimizer="sgd", lr=0.1, momentum=0.5, weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.5 and sgd.defaults["weight_decay"] == 1e-4  # the config's, not 0.9
    adamw = _optimizer(model, TrainLoopConfig(optimizer="adamw"))
    # the config's weight decay (0.0) overrides the registry entry's default 0.01
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.0


def test_logits_of_hf_style_output():
    class Out:
        logits = torch.ones(2, 3)

    assert logits_of(Out()).shape == (2, 3) and logits_of((torch.zeros(1, 2), None)).shape == (1, 2)
