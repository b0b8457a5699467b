"""One study fingerprint, one baseline: its initial weights are drawn from the study's seed, whatever ran before."""

import torch

from effml.study.pipeline import StudyConfig, _build, _builder, _load_data, run_study
from effml.study.store import Store

FAST = dict(model="effml.zoo:lenet5", model_args=(("width", 1.0),), data="digits", epochs=0.2, train_limit=256,
            test_limit=64, measure_batch=16, measure_budget_s=0.1, devices=("h100-sxm",), calibrate=False,
            budget_min=1e-9)  # no time for any variant after the baseline


def _disturb(n: int) -> None:
    torch.manual_seed(1000 + n)  # what other work in the same process does to the global generator
    torch.randn(n)


def test_the_same_fingerprint_builds_the_same_initial_weights():
    cfg = StudyConfig(**FAST)
    fn = _builder(cfg.model)
    data = _load_data(cfg, fn)
    _disturb(1)
    a = _build(fn, data, cfg.seed, **cfg.constructor_args).state_dict()
    _disturb(2)
    b = _build(fn, data, cfg.seed, **cfg.constructor_args).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = _build(fn, data, cfg.seed + 1, **cfg.constructor_args).state_dict()
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])  # the seed is what decides


def test_two_studies_with_one_fingerprint_train_the_same_baseline(tmp_path):
    from safetensors.torch import load

    weights = []
    for i in range(2):
        _disturb(i)
        with Store(tmp_path / f"runs{i}.db") as store:
            res = run_study(StudyConfig(**FAST), store)
            assert res.done == ["baseline"]
            weights.append(load(store.get_artifact("default", f"weights:baseline@{res.fingerprint}")))
    a, b = weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
