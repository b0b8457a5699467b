"""Measured training memory on a real device: what "measured" means for the estimator's ±10% claim.

PyTorch's CPU allocator keeps no peak statistic of its own, and RSS mixes in the Python heap, glibc's
free lists and oneDNN scratch. But while the profiler runs with `profile_memory=True`, the allocator
itself reports every allocation and free with its running total (c10's ProfiledCPUMemoryReporter,
`total_allocated`). The peak of that total during a step, minus its value before the step, is the most
memory the step's tensors held at once — counted by the allocator, independently of the estimator's
fake-tensor bookkeeping. Persistent tensors (weights, buffers, optimizer states, and gradients when a
step starts with them) were allocated before the window; their bytes are summed from the tensors.
On CUDA the allocator's own `max_memory_allocated` is used. RSS (VmHWM) is reported beside it.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MeasuredMemory:
    persistent_bytes: int  # weights + buffers + optimizer states (+ grads) alive when the step starts
    step_peak_bytes: int  # allocator peak during the step above what was allocated before it
    rss_delta_bytes: int | None  # process high-water mark during the step minus RSS before it
    method: str

    @property
    def peak_bytes(self) -> int:
        return self.persistent_bytes + self.step_peak_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_bytes": self.peak_bytes}


def persistent_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes of the distinct storages of parameters, their gradients, buffers and optimizer state."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        tensors += [s for st in optimizer.state.values() for s in st.values() if isinstance(s, torch.Tensor)]
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st._cdata] = st.nbytes()
    return sum(seen.values())


@contextmanager
def native_stderr_muted():
    """Mute file descriptor 2 for a moment: Kineto's C++ side writes `USDT ... profiler_start/stop` lines and
    a "memory block of unknown size" warning straight to fd 2 whenever a profiler starts or stops. Only the
    start and stop calls are wrapped, never the user's ops, so their warnings and errors still show."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class AllocatorPeak:
    """`with AllocatorPeak(device) as a: step()` then `a.peak_bytes`: the allocator's peak above its level
    at entry (CPU: profiler memory events; CUDA: max_memory_allocated)."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.end_bytes = 0  # still allocated at exit, above the level at entry (e.g. saved activations)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with native_stderr_muted():
            self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = int(torch.cuda.max_memory_allocated() - self._base)
            self.end_bytes = int(torch.cuda.memory_allocated() - self._base)
            return
        with native_stderr_muted():
            self._prof.__exit__(*exc)
        self.peak_bytes, self.end_bytes = allocator_levels(self._prof)


def allocator_peak(prof) -> int:
    """Peak of the CPU allocator's running total over a profile, above its level before the first event."""
    return allocator_levels(prof)[0]


def allocator_levels(prof) -> tuple[int, int]:
    """(peak, level at the last event) of the CPU allocator's running total, above its level before the
    first event of the profile."""
    from torch._C._profiler import _EventType

    events = []
    todo = list(prof.profiler.kineto_results.experimental_event_tree())
    while todo:
        node = todo.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append(node)
        todo.extend(node.children)
    if not events:
        return 0, 0
    first = min(events, key=lambda n: n.start_time_ns).extra_fields  # the max below needs no ordering
    last = max(events, key=lambda n: n.start_time_ns).extra_fields
    base = first.total_allocated - first.alloc_size  # the running total just before the window's first event
    peak = max(e.extra_fields.total_allocated for e in events) - base
    return int(max(0, peak)), int(last.total_allocated - base)


def measure_step(run_step, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 device: str | torch.device = "cpu") -> MeasuredMemory:
    """Run `run_step()` once under the allocator and RSS trackers."""
    from effml.measure.memory import PeakTracker

    persistent = persistent_bytes(model, optimizer)
    with PeakTracker(str(device)) as rss, AllocatorPeak(device) as alloc:
        run_step()
    method = "cuda max_memory_allocated" if torch.device(device).type == "cuda" else "cpu allocator (profiler)"
    return MeasuredMemory(persistent, alloc.peak_bytes, rss.result.rss_delta_bytes if rss.result else None, method)


__all__ = ["AllocatorPeak", "MeasuredMemory", "allocator_levels", "allocator_peak", "measure_step", "persistent_bytes"]
