"""Knowledge distillation: the KD loss against hand-computed values, and a student that learns."""

import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from effml.compress.distill import DistillConfig, distill, kd_loss
from effml.errors import ConfigError


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_kd_loss_hand_computed():
    s = torch.tensor([[0.0, 0.0]])  # student: uniform, p_s = (1/2, 1/2) at any T
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher at T=1: p_t = (3/4, 1/4)
    y = torch.tensor([0])
    # T=1, α=1: KL(p_t‖p_s) = 0.75·ln(1.5) + 0.25·ln(0.5) = 0.130812
    assert _kl((0.75, 0.25), (0.5, 0.5)) == pytest.approx(0.130812, abs=1e-6)
    assert kd_loss(s, t, y, temperature=1.0, alpha=1.0).item() == pytest.approx(0.130812, abs=1e-6)
    # T=2: p_t = (√3, 1)/(√3 + 1); KL(p_t‖p_s) = 0.036341, × T² = 0.145363; hard CE = ln 2 = 0.693147;
    # α = 0.5 → 0.5·0.145363 + 0.5·0.693147 = 0.419255
    r3 = math.sqrt(3.0)
    soft = _kl((r3 / (r3 + 1), 1 / (r3 + 1)), (0.5, 0.5)) * 4
    expected = 0.5 * soft + 0.5 * math.log(2.0)
    assert expected == pytest.approx(0.419255, abs=1e-6)
    assert kd_loss(s, t, y, temperature=2.0, alpha=0.5).item() == pytest.approx(expected, abs=1e-6)
    assert kd_loss(t, t, y, 3.0, 1.0).item() == pytest.approx(0.0, abs=1e-7)  # identical logits: no soft loss


def _digits(batch=128):
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0  # (1797, 64)
    y = torch.tensor(d.target)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)], x, y


def test_student_learns_from_teacher():
    torch.manual_seed(0)
    batches, x, y = _digits()
    teacher = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(15):
        for xb, yb in batches:
            opt.zero_grad()
            nn.functional.cross_entropy(teacher(xb), yb).backward()
            opt.step()
    student = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    res = distill(teacher, student, batches, DistillConfig(epochs=10, lr=1e-2, temperature=4.0, alpha=0.7))
    assert res.steps == 10 * len(batches) and len(res.losses) == 10
    assert res.losses[-1] < 0.5 * res.losses[0]  # it learned
    with torch.no_grad():
        agree = (student(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()
    assert agree > 0.9  # a 32-unit student reproduces the teacher's decisions on the training digits


def test_hint_loss_and_bad_config():
    batches, _, _ = _digits()
    teacher = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    student = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    res = distill(teacher, student, batches[:3], DistillConfig(epochs=1, hint_weight=0.1, hints=(("1", "1"),)))
    assert res.steps == 3  # an 8→32 adapter was learned for the hint
    with pytest.raises(ConfigError, match="student has no module named 'nope'"):
        distill(teacher, student, batches[:1], DistillConfig(epochs=1, hint_weight=0.1, hints=(("1", "nope"),)))
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        DistillConfig(temperature=0)
    with pytest.raises(ConfigError, match="alpha must be in"):
        DistillConfig(alpha=1.5)
