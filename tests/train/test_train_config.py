"""TrainConfig, the precision/optimizer registries, checkpointing specs and checkpoint plans."""

import json

import pytest

from effml.errors import ConfigError
from effml.train import checkpoint as ckpt
from effml.train.config import PRECISIONS, Checkpointing, TrainConfig, parse_bytes
from effml.zoo import GPT, GPTConfig, vgg


@pytest.mark.parametrize("kwargs, message", [
    ({"world_size": 0}, "TrainConfig.world_size must be an integer >= 1, got 0"),
    ({"micro_batch": 0}, "TrainConfig.micro_batch must be an integer >= 1"),
    ({"grad_accum": -2}, "TrainConfig.grad_accum must be an integer >= 1"),
    ({"zero_stage": 4}, "TrainConfig.zero_stage must be one of 0, 1, 2, 3"),
    ({"zero_stage": 3}, "it needs world_size > 1"),
    ({"precision": "bf16-mix"}, "unknown precision 'bf16-mix'; expected one of fp32, bf16-mixed, fp16-mixed, "
                                "bf16-true (did you mean 'bf16-mixed'"),
    ({"optimizer": "adamx"}, "unknown optimizer 'adamx'; expected one of adamw, adam, sgd-momentum, sgd (did you mean"),
    ({"checkpointing": "every-0"}, "every-k needs k >= 1"),
    ({"checkpointing": "budget:lots"}, "checkpointing budget 'lots' is not a size"),
    ({"checkpointing": "sometimes"}, "expected none, per-block, every-K"),
])
def test_bad_config_names_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=None) as exc:
        TrainConfig(**kwargs)
    assert message in str(exc.value)


def test_global_batch_and_json_round_trip():
    cfg = TrainConfig(precision="bf16-mixed", checkpointing="budget:2GB@blocks", micro_batch=4, grad_accum=3,
                      world_size=8, zero_stage=2)
    assert cfg.global_batch == 4 * 3 * 8  # micro-batch x accumulation x devices
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("text, expected", [
    ("per-block", Checkpointing("every", 1)),
    ("every-3", Checkpointing("every", 3)),
    ("sqrt@layers", Checkpointing("sqrt", container="layers")),
    ("budget:512MiB", Checkpointing("budget", budget_bytes=512 * 2**20)),
    ("modules:blocks.0, blocks.2", Checkpointing("modules", modules=("blocks.0", "blocks.2"))),
    (None, Checkpointing()),
    (True, Checkpointing("every", 1)),
])
def test_checkpointing_parse(text, expected):
    assert Checkpointing.parse(text) == expected


def test_parse_bytes_units():
    assert parse_bytes("80GB") == 80e9  # GB = 1e9 B
    assert parse_bytes("1.5GiB") == 1.5 * 2**30  # GiB = 2^30 B
    assert parse_bytes(1e6) == 1e6


def test_mixed_precisions_keep_fp32_master_weights():
    # the AMP layout: fp32 weights (= master), fp32 grads, low-precision compute -> 4 + 4 + 8 B/param with AdamW
    assert PRECISIONS["bf16-mixed"].param_dtype == "fp32" and PRECISIONS["bf16-mixed"].autocast == "bf16"
    assert PRECISIONS["fp16-mixed"].grad_scaler and PRECISIONS["fp16-mixed"].needs_gpu
    assert PRECISIONS["bf16-true"].param_dtype == "bf16" and PRECISIONS["bf16-true"].autocast is None


def _gpt(n):
    return GPT(GPTConfig(n_layer=n, n_embd=32, n_head=2, block_size=16))


def test_plans_every_k_and_sqrt():
    model = _gpt(12)
    every = ckpt.plan(model, "every-2")
    assert every.container == "blocks" and every.segments == tuple((f"blocks.{i}",) for i in range(0, 12, 2))
    sq = ckpt.plan(model, "sqrt")  # ceil(sqrt(12)) = 4 blocks per segment -> 3 segments
    assert [len(s) for s in sq.segments] == [4, 4, 4] and sq.segments[1][0] == "blocks.4"
    assert ckpt.plan(model, "none") is ckpt.NO_PLAN


def test_sqrt_never_starts_a_segment_with_an_inplace_layer():
    # VGG's backbone is conv, BN, ReLU(inplace) x 8 + 4 pools (28 layers): a segment starting with the in-place
    # ReLU would overwrite the input its checkpoint keeps, so those boundaries move one layer later
    plan = ckpt.plan(vgg(), "sqrt")
    modules = dict(vgg().named_modules())
    assert sum(len(s) for s in plan.segments) == 28
    assert not any(getattr(modules[s[0]], "inplace", False) for s in plan.segments)
    assert not any(getattr(modules[s[0]], "inplace", False) for s in ckpt.plan(vgg(), "per-block").segments)


def test_checkpointing_target_that_is_not_a_module():
    with pytest.raises(ConfigError, match=r"checkpointing target 'blocks\.12' is not a module name of GPT; "
                                          r"did you mean"):
        ckpt.plan(_gpt(12), "modules:blocks.0,blocks.12")
    with pytest.raises(ConfigError, match="checkpointing container 'layers' is not a module of GPT"):
        ckpt.plan(_gpt(2), "per-block@layers")


def test_applied_restores_the_forwards():
    model = _gpt(2)
    before = model.blocks[0].forward
    with ckpt.applied(model, ckpt.plan(model, "sqrt")):
        assert model.blocks[0].forward != before
    assert "forward" not in model.blocks[0].__dict__ and "forward" not in model.blocks[1].__dict__
