"""Helpers of the shared-store tests, importable by the worker processes they start (multiprocessing spawn and
`python claim_worker.py ...`): a claim race, the claim rules checked on either backend, and one worker of a
user study (effml.study) on a tiny MLP.

    python claim_worker.py STORE LOG TTL_S slow|fast

runs the study "shared" on STORE; every evaluate of a variant appends this process's pid to LOG (the baseline's
evaluate, in prepare, is not logged). `slow`: that evaluate prints "holding" and sleeps (the test kills it)."""

from __future__ import annotations

import os
import sys
import time

STUDY = "shared"
# plans that apply to the MLP below with no train= and no calibration= (checked in test_claims.py)
MLP_PLANS = ["prune-fine-50%", "linear-8b", "kmeans-4b", "int8-dynamic", "weight-only-int8"]


def race(target: str, study: str, keys: list[str], ttl_s: float, start_at: float, queue) -> None:
    """Wait for the common start time, then claim every key in order; report (worker, keys won)."""
    from effml.study.claims import worker_id
    from effml.study.store import Store

    worker, won = worker_id(), []
    with Store(target) as s:
        while time.time() < start_at:
            time.sleep(0.001)
        for key in keys:
            if s.claim(study, key, worker, ttl_s):
                won.append(key)
    queue.put((worker, won))


def race_claims(target: str, n_keys: int = 40) -> list[tuple[str, list[str]]]:
    """Two spawned processes claim the same keys, in the same order, from the same instant."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    keys = [f"k{i}" for i in range(n_keys)]
    start_at = time.time() + 8  # after both have imported effml and opened the store
    procs = [ctx.Process(target=race, args=(target, "r", keys, 60, start_at, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def claim_rules(s) -> None:
    """The claim rules on an open store `s` (either backend)."""
    from effml.study.store import Run

    assert s.claim("c", "k1", "w1", 60) is True
    assert s.claim("c", "k1", "w2", 60) is False  # a live claim of another worker
    assert s.claim("c", "k1", "w1", 60) is True  # the worker's own: renewed
    assert s.renew("c", "k1", "w2", 60) is False and s.renew("c", "k1", "w1", 60) is True
    assert s.claims("c")["k1"][0] == "w1" and 59 < s.claims("c")["k1"][1] <= 60  # 60 s ahead, less the time since
    # an expired claim (a worker that stopped renewing) is taken over
    assert s.claim("c", "k2", "w1", 0.2) is True
    time.sleep(0.4)
    assert s.claims("c")["k2"][1] < 0  # expired 0.2 s ago
    assert s.claim("c", "k2", "w2", 60) is True
    assert s.renew("c", "k2", "w1", 60) is False and s.claims("c")["k2"][0] == "w2"
    # a finished run cannot be claimed; put removes the claim of its key
    s.put(Run("c", "k3", "k3", [], {"accuracy": 0.5}))
    assert s.claim("c", "k3", "w1", 60) is False
    s.put(Run("c", "k2", "k2", [], {"accuracy": 0.5}))
    assert "k2" not in s.claims("c")
    # release drops only the worker's own claim
    s.release("c", "k1", "w2")
    assert s.claims("c")["k1"][0] == "w1"
    s.release("c", "k1", "w1")
    assert s.claims("c") == {} and s.claim("c", "k1", "w2", 60) is True


def mlp():
    import torch
    from torch import nn

    torch.manual_seed(0)  # the same weights in every worker: one study fingerprint
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def main(store: str, log: str, ttl_s: float, slow: bool) -> None:
    import torch

    import effml

    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(64) % 4
    calls = 0

    def evaluate(model):
        nonlocal calls
        calls += 1
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        if calls > 1:  # a variant's evaluate (the first call is the baseline's, before the study starts)
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
            if slow:
                print("holding", flush=True)
                time.sleep(600)
        return {"accuracy": acc}

    res = effml.study(mlp(), evaluate, example_inputs=x[:8], store=store, name=STUDY, devices=(), plans=MLP_PLANS,
                      measure_budget_s=0.05, claim_ttl_s=ttl_s)
    print("done", ",".join(res.done), flush=True)
    print("all", ",".join(sorted([r["name"] for r in res.rows] + [name for name, _ in res.failed])), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "slow")
