"""Shared fixtures for the study tests: a small set of runs and a real profile to report on."""

import pytest
import torch

import effml
from effml.study.store import Run
from effml.zoo import lenet5


def make_runs(study: str = "t") -> list[Run]:
    """Five variants with hand-set metrics: the baseline, two compressed, one dominated, one distilled."""
    spec = [  # name, chain, accuracy, bytes, latency s, flops
        ("baseline", [], 0.90, 246_824, 2.0e-3, 852_370),
        ("prune-80%", [{"technique": "prune", "config": {"sparsity": 0.8}}], 0.895, 60_000, 1.5e-3, 852_370),
        ("int8", [{"technique": "quantize", "config": {"method": "int8"}}], 0.898, 62_000, 1.0e-3, 852_370),
        ("bad", [{"technique": "quantize", "config": {"bits": 2}}], 0.50, 70_000, 1.8e-3, 852_370),
        ("student", [{"technique": "distill", "config": {}}], 0.88, 30_000, 0.8e-3, 200_000),
    ]
    runs = []
    for name, chain, acc, size, lat, flops in spec:
        preds = {"h100": {"latency_s": lat / 100, "energy_j": flops * 1e-12, "usd_per_1m": lat * 10, "fits": True}}
        runs.append(Run(study, name, name, chain, {
            "accuracy": acc, "model_bytes": size, "latency_p50_s": lat, "latency_p90_s": lat * 1.2,
            "flops": flops, "macs": flops // 2, "params": size // 4, "local_pred_s": lat * 0.9,
            "throughput": 1 / lat}, preds))
    return runs


@pytest.fixture
def runs():
    return make_runs()


@pytest.fixture(scope="session")
def lenet_profile():
    return effml.profile(lenet5().eval(), torch.randn(1, 1, 28, 28))


@pytest.fixture(scope="session")
def claim_worker():
    """tests/study/claim_worker.py (claim races and killed workers; tests/study is on pytest's pythonpath, which the
    processes it spawns inherit)."""
    import claim_worker as module

    return module
