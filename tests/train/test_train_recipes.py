"""Recipes (precision checks, losses, gradient accumulation), the short training loop and CPU bf16 detection."""

import pytest
import torch

from effml.errors import ConfigError
from effml.train.config import TrainConfig
from effml.train.loop import RunConfig, TrainResult, train
from effml.train.recipes import (
    Batch,
    TrainStep,
    check_precision,
    cpu_bf16_support,
    get_loss,
)
from effml.zoo import mlp


def test_precision_the_device_lacks():
    with pytest.raises(ConfigError, match="precision 'fp16-mixed' needs a CUDA GPU .* this run is on cpu"):
        check_precision("fp16-mixed", "cpu")
    assert check_precision("bf16-mixed", "cpu").autocast == "bf16"  # runs everywhere (emulated on AVX2)


def test_cpu_bf16_detection_reports_the_capability():
    hw = cpu_bf16_support()
    assert hw["capability"] == torch.backends.cpu.get_cpu_capability()
    assert hw["bf16_hardware"] == (hw["avx512_bf16"] or hw["amx_bf16"])


def test_auto_loss_picks_by_shape():
    logits = torch.zeros(2, 5, 7)  # (B, T, V): uniform -> ln 7 per token
    assert float(get_loss("auto")(logits, torch.zeros(2, 5, dtype=torch.long))) == pytest.approx(torch.log(torch.tensor(7.0)))
    assert float(get_loss("auto")(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))) == pytest.approx(
        torch.log(torch.tensor(4.0)))
    assert float(get_loss("auto")(torch.ones(2, 3))) == 1.0  # no target: mean square


def _grads(cfg, x, y):
    torch.manual_seed(0)
    model = mlp()
    step = TrainStep(model, cfg, "classification", optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
    n = cfg.grad_accum
    mbs = [Batch((x[i::n],), y[i::n]) for i in range(n)]
    grads = {}
    loss = step.run(mbs, before_step=lambda: grads.update({k: p.grad.clone() for k, p in model.named_parameters()}))
    return loss, grads


def test_gradient_accumulation_equals_the_full_batch():
    # mean over 4 micro-batches of 8 (each loss / 4) == mean over the batch of 32, up to fp32 summation order
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    loss1, g1 = _grads(TrainConfig(micro_batch=32), x, y)
    loss4, g4 = _grads(TrainConfig(micro_batch=8, grad_accum=4), x, y)
    assert loss4 == pytest.approx(loss1, rel=1e-6)
    for k in g1:
        torch.testing.assert_close(g4[k], g1[k], rtol=1e-5, atol=1e-7)


def test_bf16_true_trains_bf16_weights():
    model = mlp()
    TrainStep(model, TrainConfig(precision="bf16-true"), "classification")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_short_run_reports_and_round_trips():
    run = RunConfig(model="tiny_gpt", steps=4, warmup=1, seq=32, model_kwargs=(("n_layer", 1), ("n_embd", 32)))
    r = train(run, TrainConfig(micro_batch=4, checkpointing="per-block"))
    assert len(r.losses) == 4 and len(r.step_times_s) == 2  # step 1 is measured for memory, not timed
    assert r.losses[0] == pytest.approx(torch.log(torch.tensor(65.0)).item(), abs=0.2)  # GPT-2 init: ~ln(vocab)
    assert r.tokens_per_s == pytest.approx(r.samples_per_s * 32)
    assert r.data.startswith("King James Bible")
    assert abs(r.estimate_error) < 0.01  # estimate vs allocator on the same step
    assert TrainResult.from_dict(r.to_dict()).to_dict() == r.to_dict()


def test_loop_rejects_a_world_size_it_is_not_running_with():
    with pytest.raises(ConfigError, match="world_size=2 but 1 process"):
        train(RunConfig(model="mlp", steps=2, warmup=0), TrainConfig(world_size=2))
