"""DDP over torchrun (gloo, loopback): two processes give the gradients of one process on the same global batch."""

import pytest
import torch

from effml.errors import ConfigError
from effml.train.config import TrainConfig
from effml.train.ddp import launch
from effml.train.loop import RunConfig, train

RUN = {"model": "tiny_gpt", "steps": 2, "warmup": 0, "seq": 32, "measure_memory": False, "threads": 1,
       "model_kwargs": (("n_layer", 2), ("n_embd", 32), ("n_head", 2))}


def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    # each rank draws the same global batch (8 windows) and trains on its 4; DDP averages the two ranks' mean
    # gradients = the mean over all 8. The sums run in a different order, so equality is to fp32 rounding:
    # torch.testing's fp32 defaults (rtol 1.3e-6, atol 1e-5); the gradients here are O(0.1).
    ddp = launch(RunConfig(**RUN, dump_grads=str(tmp_path / "ddp.pt")), TrainConfig(micro_batch=4), nproc=2)
    one = train(RunConfig(**RUN, dump_grads=str(tmp_path / "one.pt")), TrainConfig(micro_batch=8))
    g2, g1 = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "one.pt")
    assert g1.keys() == g2.keys() and len(g1) == 28  # wte, wpe, 2 x 12 block tensors, ln_f weight and bias
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name])
    assert ddp.config.world_size == 2 and ddp.config.global_batch == one.config.global_batch == 8
    assert ddp.losses == pytest.approx(one.losses, rel=1e-5)  # loss averaged over ranks = full-batch loss
    assert "gloo" in ddp.notes[0]


def test_world_size_below_one():
    with pytest.raises(ConfigError, match="nproc .* must be an integer >= 1, got 0"):
        launch(RunConfig(**RUN), TrainConfig(), nproc=0)


def test_a_workers_error_is_named_in_the_launch_error():
    # torchrun's own summary ends its stderr (which rank, exit code); the worker's exception comes before it
    from effml.train.ddp import LaunchError

    bad = {**RUN, "model_kwargs": (("n_layer", 2), ("n_embd", 32), ("n_head", 3))}
    with pytest.raises(LaunchError, match="n_embd=32 is not divisible by n_head=3"):
        launch(RunConfig(**bad), TrainConfig(micro_batch=4), nproc=2)
