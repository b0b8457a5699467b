"""Peak memory of a run: process RSS high-water mark delta, and PyTorch's allocator where it has one.

RSS: on Linux the kernel's high-water mark (VmHWM) can be reset by writing "5" to /proc/self/clear_refs,
so peak - baseline is exact. Elsewhere (or if that is refused) a thread samples RSS via psutil every
millisecond, which can miss spikes shorter than that; `method` says which was used.
PyTorch allocator: CUDA's max_memory_allocated for a CUDA run; the CPU allocator keeps no statistics, so
on CPU that figure is None (and says so).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class PeakMemory:
    rss_delta_bytes: int  # peak RSS during the run minus RSS before it
    rss_peak_bytes: int
    method: str  # "vmhwm" | "sampled"
    torch_peak_bytes: int | None  # allocator peak (CUDA), None on CPU
    torch_note: str

    def to_dict(self) -> dict:
        return asdict(self)


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _vmhwm() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        _CLEAR.write_text("5")
    except OSError:
        return False
    hwm = _vmhwm()
    return hwm is not None and hwm <= _rss() * 1.05 + (1 << 20)  # the reset took effect


class PeakTracker:
    """Context manager: `with PeakTracker(device) as t: run()` then `t.result`."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.001):
        self.device = str(device)
        self.interval_s = interval_s
        self.result: PeakMemory | None = None

    def __enter__(self) -> "PeakTracker":
        self._cuda = self.device.startswith("cuda")
        if self._cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._base = _rss()
        self._hwm = _reset_hwm()
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = None
        if not self._hwm:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss())
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc) -> None:
        torch_peak, note = None, "PyTorch's CPU allocator keeps no peak statistics"
        if self._cuda:
            import torch

            torch.cuda.synchronize()
            torch_peak, note = int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak, method = max(self._peak, _rss()), "sampled"
        else:
            peak, method = max(_vmhwm() or 0, _rss()), "vmhwm"
        self.result = PeakMemory(max(0, peak - self._base), peak, method, torch_peak, note)
