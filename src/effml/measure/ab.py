"""Side-by-side A/B timing: two (or more) callables timed in turn, A, B, A, B, ..., in one process.

    times = interleave({"dense": lambda: m(x), "pruned": lambda: p(x)}, rounds=15)   # seconds per call
    ab = compare(m, p, (x,))                  # ABResult: median before/after, speedup, rounds, threads
    meas, speedup = beside(variant, baseline, (x,), budget_s=2.0)   # the variant's Measurement + speedup

On a shared, noisy machine a slow spell slows every callable of the round alike, so the ratio of the medians
stays honest where two separate measurements minutes apart would not. Every A/B comparison of effml (the
`effml prune`/`quantize` speed check, the study's measured speedup, the compression benchmarks) uses this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from effml.errors import ConfigError
from effml.measure.memory import PeakTracker
from effml.measure.timing import Measurement, median_ci, percentile


def interleave(calls: dict[str, Callable[[], object]], *, rounds: int = 15, warmup: int = 2, budget_s: float = 60.0,
               min_rounds: int = 3, device: str | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function, timed in turn (a, b, c, a, b, c, ...) under inference mode, for
    `rounds` rounds or until `budget_s` has passed (never fewer than `min_rounds`). `device` "cuda[:N]": every
    call runs on that GPU's work and is timed with CUDA events around it (then synchronised)."""
    import torch

    if rounds < 1 or min_rounds < 1:
        raise ConfigError(f"timing rounds must be >= 1, got rounds={rounds}, min_rounds={min_rounds}")
    if budget_s <= 0:
        raise ConfigError(f"timing budget_s must be > 0, got {budget_s}")
    times: dict[str, list[float]] = {k: [] for k in calls}
    # CUDA launches return before the GPU finishes: once CUDA is in use, each call is timed to its completion
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    timer = None
    if device is not None and str(device).startswith("cuda"):
        from effml.measure.timing import cuda_event_timer

        torch.cuda.set_device(torch.device(device))
        timer, sync = cuda_event_timer(), torch.cuda.synchronize
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in calls.values():
                fn()
        sync()
        start = time.perf_counter()
        for r in range(rounds):
            for key, fn in calls.items():
                if timer is not None:
                    times[key].append(timer(fn))
                    continue
                t0 = time.perf_counter()
                fn()
                sync()
                times[key].append(time.perf_counter() - t0)
            if time.perf_counter() - start > budget_s and r + 1 >= min_rounds:
                break
    return times


def median(xs: list[float]) -> float:
    return percentile(sorted(xs), 50)


@dataclass
class ABResult:
    """Median seconds per call of `before` and `after`, timed alternately in one process."""

    before_s: float
    after_s: float
    rounds: int
    threads: int
    cpu_capability: str
    times: dict = field(default_factory=dict, repr=False)
    device: str = "cpu"  # where both ran; on CUDA timed with CUDA events
    device_name: str | None = None  # the GPU's name (None on the CPU)

    @property
    def speedup(self) -> float:
        return self.before_s / self.after_s

    def to_dict(self) -> dict:
        return {"before_s": self.before_s, "after_s": self.after_s, "speedup": self.speedup, "rounds": self.rounds,
                "threads": self.threads, "cpu_capability": self.cpu_capability, "device": self.device,
                "device_name": self.device_name}


def compare(before, after, inputs: tuple, *, forward_kwargs: dict | None = None, rounds: int = 15, warmup: int = 2,
            budget_s: float = 60.0, device: str = "cpu") -> ABResult:
    """Time `before(*inputs, **forward_kwargs)` and `after(...)` alternately: their medians and the speedup.
    `device` cuda[:N]: the models and inputs are already there; each call is timed with CUDA events."""
    import torch

    kwargs = dict(forward_kwargs or {})
    times = interleave({"before": lambda: before(*inputs, **kwargs), "after": lambda: after(*inputs, **kwargs)},
                       rounds=rounds, warmup=warmup, budget_s=budget_s, device=device)
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return ABResult(median(times["before"]), median(times["after"]), len(times["after"]), torch.get_num_threads(),
                    torch.backends.cpu.get_cpu_capability(), times, device, name)


def beside(model, baseline, inputs: tuple, *, budget_s: float, warmup: int = 2, min_rounds: int = 6,
           max_rounds: int = 10_000) -> tuple[Measurement, float]:
    """`model` timed in turn with `baseline` (None: alone) for about `budget_s`: (the model's Measurement, its
    speedup = baseline median / model median over the same rounds; 1.0 without a baseline). Peak memory is
    tracked over the model's warm-up calls."""
    import torch

    def call(m):
        return lambda: m(*inputs)

    first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
    device = str(first.device) if first is not None else "cpu"
    tracker = PeakTracker(device)  # on CUDA: torch.cuda.max_memory_allocated of the warm-up calls
    with tracker, torch.inference_mode():
        for _ in range(max(1, warmup)):
            model(*inputs)
    calls = {"model": call(model)}
    if baseline is not None:
        calls["baseline"] = call(baseline)
    times = interleave(calls, rounds=max_rounds, warmup=warmup if baseline is not None else 0, budget_s=budget_s,
                       min_rounds=min_rounds, device=device)
    mine = times["model"]
    stop = "budget" if len(mine) < max_rounds else "max_repeats"
    batch = int(first.shape[0]) if first is not None and first.ndim else 1
    m = Measurement(mine, batch, warmup, stop, median_ci(sorted(mine)), torch.get_num_threads(),
                    torch.backends.cpu.get_cpu_capability(), device, tracker.result, wall_times_s=list(mine),
                    clock="cuda-events" if device.startswith("cuda") else "wall")
    speedup = median(times["baseline"]) / m.p50 if baseline is not None else 1.0
    return m, speedup
