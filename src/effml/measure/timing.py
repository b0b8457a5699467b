"""`measure(model, inputs)`: warm up, then time calls until the median's confidence interval is tight or the
time budget ends; report p50/p90/p99, throughput, peak memory, threads and the CPU's vector capability.

The stopping rule uses a distribution-free CI of the median (binomial order statistics): latency has a
long right tail, so the mean's t-interval would chase outliers. Stop when (upper - lower) / 2 <= ci_rel x
median, after at least `min_repeats` timed calls; or when `budget_s` of timing has been spent; or after
`max_repeats`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from effml.errors import ConfigError
from effml.measure.memory import PeakMemory, PeakTracker
from effml.registries import Registry

if TYPE_CHECKING:
    from effml.hardware.sweep import PredictionSummary


# the timers a measurement may read: wall time (latency) or the calling thread's CPU time
CLOCKS: Registry[Callable[[], float]] = Registry("clock")
CLOCKS.add("wall", time.perf_counter)
CLOCKS.add("cpu", time.thread_time)


def clock_fn(name: str):
    """The timer for a clock name. 'cpu' is CPU time of the calling thread (user + system): on a shared
    machine it excludes the time other processes held the core, so it only measures latency when torch
    runs single-threaded (the intra-op work then stays on this thread); callers check that."""
    if name == "cpu":
        import torch

        if torch.get_num_threads() != 1:
            raise ConfigError(f"clock 'cpu' needs torch.set_num_threads(1) (CPU time of {torch.get_num_threads()} "
                              f"threads is not latency); use clock 'wall'")
    return CLOCKS[name]


@dataclass(frozen=True)
class MeasureConfig:
    warmup: int = 2
    min_repeats: int = 7
    max_repeats: int = 10_000
    budget_s: float = 5.0
    ci_rel: float = 0.02  # target half-width of the 95% CI of the median, relative to the median
    confidence: float = 0.95
    memory: bool = True
    clock: str = "wall"  # "wall" (latency) or "cpu": this thread's CPU time, robust to other processes


    def __post_init__(self):
        if self.warmup < 0:
            raise ConfigError(f"MeasureConfig.warmup must be >= 0, got {self.warmup}")
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ConfigError(f"MeasureConfig needs 1 <= min_repeats <= max_repeats, got "
                              f"{self.min_repeats}, {self.max_repeats}")
        if self.budget_s <= 0:
            raise ConfigError(f"MeasureConfig.budget_s must be > 0, got {self.budget_s}")
        if self.clock not in CLOCKS:
            raise ConfigError(f"MeasureConfig.clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        if not 0 < self.ci_rel < 1 or not 0.5 <= self.confidence < 1:
            raise ConfigError(f"MeasureConfig needs 0 < ci_rel < 1 and 0.5 <= confidence < 1, got "
                              f"{self.ci_rel}, {self.confidence}")


def percentile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of an ascending list."""
    if not sorted_xs:
        raise ValueError("percentile of an empty list")
    pos = (len(sorted_xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def median_ci(sorted_xs: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free CI of the median from order statistics; None when n is too small for it."""
    from scipy.stats import binom

    n = len(sorted_xs)
    a = (1 - confidence) / 2
    lo = int(binom.ppf(a, n, 0.5))  # 1-based rank of the lower bound: P(Binom(n, 1/2) < lo) <= a
    if lo < 1 or n - lo < lo - 1:
        return None
    return sorted_xs[lo - 1], sorted_xs[n - lo]  # ranks lo and n - lo + 1 (symmetric)


@dataclass
class Measurement:
    """Timed calls of one model on one input batch (seconds)."""

    times_s: list[float]
    batch: int
    warmup: int
    stop: str  # "ci" | "budget" | "max_repeats"
    ci_s: tuple[float, float] | None
    threads: int
    cpu_capability: str
    device: str
    memory: PeakMemory | None = None
    clock: str = "wall"
    wall_times_s: list[float] | None = None  # the same calls on the wall clock (differs when clock='cpu')
    prediction: PredictionSummary | None = None  # the `local` prediction next to it (hardware.sweep.attach_prediction)
    extra: dict = field(default_factory=dict)

    @property
    def sorted(self) -> list[float]:
        return sorted(self.times_s)

    @property
    def p50(self) -> float:
        return percentile(self.sorted, 50)

    @property
    def p90(self) -> float:
        return percentile(self.sorted, 90)

    @property
    def p99(self) -> float:
        return percentile(self.sorted, 99)

    @property
    def mean(self) -> float:
        return sum(self.times_s) / len(self.times_s)

    @property
    def throughput_per_s(self) -> float:
        """Inferences per second at the median latency: batch / p50."""
        return self.batch / self.p50

    @property
    def error_pct(self) -> float | None:
        """(predicted - measured p50) / measured x 100, when a prediction is attached."""
        if self.prediction is None or self.prediction.time_s is None:
            return None
        return (self.prediction.time_s - self.p50) / self.p50 * 100

    def to_dict(self, times: bool = False) -> dict:
        d = {"batch": self.batch, "p50_s": self.p50, "p90_s": self.p90, "p99_s": self.p99, "mean_s": self.mean,
             "min_s": min(self.times_s), "ci95_median_s": list(self.ci_s) if self.ci_s else None,
             "repeats": len(self.times_s), "warmup": self.warmup, "stop": self.stop,
             "throughput_per_s": self.throughput_per_s, "threads": self.threads,
             "cpu_capability": self.cpu_capability, "device": self.device, "clock": self.clock,
             "wall_p50_s": percentile(sorted(self.wall_times_s), 50) if self.wall_times_s else None,
             "memory": self.memory.to_dict() if self.memory else None,
             "prediction": self.prediction.to_dict() if self.prediction else None, "error_pct": self.error_pct,
             **self.extra}
        if times:
            d["times_s"] = list(self.times_s)
        return d


def _batch_of(inputs) -> int:
    for t in inputs:
        shape = getattr(t, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
    return 1


def cuda_event_timer() -> Callable[[Callable[[], Any]], float]:
    """timer(fn) -> seconds of fn's GPU work between two CUDA events on the current stream (recorded around the
    call, then synchronised): the device's own clock, not the host's view of asynchronous launches."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(fn: Callable[[], Any]) -> float:
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # elapsed_time is in ms

    return timed


def time_calls(fn: Callable[[], Any], config: MeasureConfig, sync: Callable[[], None] = lambda: None,
               timer: Callable[[Callable[[], Any]], float] | None = None
               ) -> tuple[list[float], list[float], str, tuple[float, float] | None]:
    """The timing loop of `measure`: (times on config.clock, wall times, stop reason, CI of the median).
    `timer(fn)`, when given (CUDA events), times each call instead of the clock. The budget is wall time."""
    clock = clock_fn(config.clock)
    for _ in range(config.warmup):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    stop, ci = "max_repeats", None
    walls: list[float] = []
    while len(times) < config.max_repeats:
        w0, t0 = time.perf_counter(), clock()
        if timer is not None:
            times.append(timer(fn))
        else:
            fn()
            sync()
            times.append(clock() - t0)
        walls.append(time.perf_counter() - w0)
        if len(times) >= config.min_repeats:
            xs = sorted(times)
            ci = median_ci(xs, config.confidence)
            if ci is not None and (ci[1] - ci[0]) / 2 <= config.ci_rel * percentile(xs, 50):
                stop = "ci"
                break
            if time.perf_counter() - start >= config.budget_s:
                stop = "budget"
                break
    return times, walls, stop, ci


def measure(model, inputs, *, forward_kwargs: dict | None = None, batch: int | None = None,
            config: MeasureConfig | None = None) -> Measurement:
    """Time `model(*inputs, **forward_kwargs)` under inference mode; `inputs` a tensor or a tuple of them."""
    import torch

    config = config or MeasureConfig()
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    kwargs = dict(forward_kwargs or {})
    first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
    device = str(first.device) if first is not None else "cpu"
    if device == "meta":
        raise ConfigError("measure() needs real tensors: the inputs are on the meta device (use predict for meta)")
    cuda = device.startswith("cuda")
    if cuda and config.clock != "wall":
        raise ConfigError(f"clock {config.clock!r} is host CPU time; a CUDA run is timed with CUDA events: "
                          "use clock 'wall'")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def call():
        with torch.inference_mode():
            model(*inputs, **kwargs)

    tracker = PeakTracker(device) if config.memory else None
    extra: dict = {}
    with contextlib.ExitStack() as stack:
        timer = None
        if cuda:  # CUDA events on this device's current stream; its name and compute capability in the result
            from effml.measure.device import device_info

            stack.enter_context(torch.cuda.device(torch.device(device)))
            timer = cuda_event_timer()
            info = device_info(device)
            extra = {"device_name": info["name"], "device_capability": info["capability"]}
        if tracker is not None:
            stack.enter_context(tracker)
        times, walls, stop, ci = time_calls(call, config, sync, timer)
    return Measurement(times, int(batch if batch is not None else _batch_of(inputs)), config.warmup, stop, ci,
                       torch.get_num_threads(), torch.backends.cpu.get_cpu_capability(), device,
                       tracker.result if tracker is not None else None,
                       clock="cuda-events" if cuda else config.clock, wall_times_s=walls, extra=extra)


def config_dict(config: MeasureConfig) -> dict:
    return asdict(config)
