"""The shared training core: seeded epoch iteration, one update (clip, scheduler, hook), loss book-keeping."""

import pytest
import torch
from torch import nn

from effml.errors import ConfigError
from effml.train.core import LossLog, evaluating, iterate, total_steps, update
from effml.zoo.data import BatchLoader


def test_iterate_passes_over_epochs_and_stops_mid_epoch():
    steps = list(iterate(["a", "b", "c"], 7))
    # 7 steps over 3 batches: two full epochs and one batch of the third
    assert [s.batch for s in steps] == ["a", "b", "c", "a", "b", "c", "a"]
    assert [s.epoch for s in steps] == [0, 0, 0, 1, 1, 1, 2]
    assert [s.index for s in steps if s.first_in_epoch] == [0, 3, 6]
    assert total_steps(23, 1.5) == 35 and total_steps(23, 4, max_steps=7) == 7  # ceil(23 x 1.5) = 35


def test_iterate_a_sampler_and_a_seeded_loader():
    calls = iter(range(100))
    assert [s.batch for s in iterate(lambda: next(calls), 3)] == [0, 1, 2]
    loader = BatchLoader(torch.arange(10.0), torch.arange(10), 4, shuffle=True)
    first = [s.batch[1].tolist() for s in iterate(loader, 6, seed=3)]
    again = [s.batch[1].tolist() for s in iterate(loader, 6, seed=3)]  # reset(3): the same shuffles again
    assert first == again and sorted(sum(first[:3], [])) == list(range(10))  # epoch 0 is a permutation
    with pytest.raises(ConfigError, match="no batches"):
        list(iterate([], 2))


def test_update_clips_then_steps_then_runs_the_hook():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    hooks = []
    # d/dw (w . [3, 4]) = [3, 4], norm 5; clipped to norm 1: [0.6, 0.8]; SGD lr 1: w - g = [2.4, 3.2]
    update((w * torch.tensor([3.0, 4.0])).sum(), opt, clip_norm=1.0, step_hook=lambda: hooks.append(w.tolist()))
    assert w.tolist() == pytest.approx([2.4, 3.2])
    assert hooks == [pytest.approx([2.4, 3.2])]  # the hook sees the stepped weights
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    update((w * torch.tensor([1.0, 0.0])).sum(), opt, scheduler=sched)  # grad [1, 0] at lr 1, then lr 0.5
    assert w.tolist() == pytest.approx([1.4, 3.2]) and opt.param_groups[0]["lr"] == 0.5


def test_loss_log_means_per_epoch():
    log = LossLog()
    for epoch, v in ((0, 1.0), (0, 2.0), (1, 4.0)):
        log.add(epoch, v)
    assert log.epoch_means() == [1.5, 4.0] and log.running() == 4.0 and log.values == [1.0, 2.0, 4.0]


def test_evaluating_restores_the_mode_without_gradients():
    m = nn.Linear(2, 1).train()
    with evaluating(m):
        assert not m.training and not m(torch.ones(1, 2)).requires_grad
    assert m.training


def test_logits_of_every_output_kind():
    from effml.errors import ModelError
    from effml.train.core import logits_of

    class HF:  # an HF encoder output without a head: no logits
        logits = None
        last_hidden_state = torch.ones(1, 4, 8)

    t = torch.zeros(2, 3)
    assert logits_of(t) is t and logits_of((t, None)) is t
    assert logits_of(HF(), hidden_state=True).shape == (1, 4, 8)
    with pytest.raises(ModelError, match="cannot read logits from a model output of type HF"):
        logits_of(HF())  # a classifier never trains on hidden states by accident
