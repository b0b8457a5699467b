"""`effml calibrate --device cuda`: measure the local GPU's roofline and save it as the `local` device.

Same schema as the catalog's GPUs (a pure roofline: dense peaks per dtype, memory bandwidth, memory size) plus
the per-op launch overhead and the nn.Module call cost, so `effml predict --hw local` and `effml bench
--device cuda` compare against this card. Every figure is timed with CUDA events (the device's clock) around a
loop of calls, best of `samples`:
  1. matmul peaks: torch.mm on square operands, fp32 (TF32 off), tf32, bf16, fp16; int8 through torch._int_mm
     (int8 x int8 -> int32, a real tensor-core kernel on CUDA) where this torch and card support it.
  2. bandwidth: dst.copy_(src) at working sets from 16 MiB to 1 GiB (2 bytes moved per byte copied); the
     largest (well past any L2) is `mem_bw`, the curve is kept.
  3. overheads: host wall time per launch of a one-element add (then synchronised), and per nn.Module call.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from effml.errors import ConfigError
from effml.hardware.calibrate import Calibration, _fig
from effml.hardware.catalog import LOCAL, device_from_dict
from effml.progress import Progress

MIB = 1 << 20


def cuda_time(fn: Callable[[], object], inner: int, samples: int = 5) -> float:
    """Seconds per call on the device: CUDA events around `inner` calls, best of `samples`."""
    import torch

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(samples):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / inner)
    return best


def _peaks(quick: bool, stamp: str) -> dict:
    import torch

    sizes = (4096,) if quick else (2048, 4096, 8192)
    out: dict[str, dict] = {}
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    try:
        for key, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                 ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            best, at = 0.0, 0
            for n in sizes:
                a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
                f = 2 * n**3 / cuda_time(lambda: torch.mm(a, b), inner=5 if n >= 8192 else 20)
                if f > best:
                    best, at = f, n
            out[key] = _fig(best, f"torch.mm {key}, CUDA events, best of square sizes, at {at}^3", stamp)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
    n = sizes[-1]
    try:
        a = torch.randint(-128, 127, (n, n), device="cuda", dtype=torch.int8)
        b = torch.randint(-128, 127, (n, n), device="cuda", dtype=torch.int8)
        ops = 2 * n**3 / cuda_time(lambda: torch._int_mm(a, b), inner=20)
        out["int8"] = _fig(ops, f"torch._int_mm int8 x int8 -> int32 at {n}^3, CUDA events", stamp)
    except RuntimeError:  # no int8 GEMM for this card / build: no int8 peak rather than a made-up one
        pass
    return out


def _bandwidth(quick: bool, stamp: str) -> tuple[dict, dict, float]:
    import torch

    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    sizes = [s for s in ((256 * MIB,) if quick else (16 * MIB, 64 * MIB, 256 * MIB, 1024 * MIB)) if 3 * s < total]
    curve = []
    for s in sizes:
        src = torch.empty(s, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        t = cuda_time(lambda: dst.copy_(src), inner=10)
        curve.append([float(2 * s), 2 * s / t])  # read s bytes + write s bytes
        del src, dst
    mem_bw = _fig(curve[-1][1], f"dst.copy_(src) of {sizes[-1] // MIB} MiB (2 bytes moved per byte), "
                                f"CUDA events", stamp)
    return mem_bw, _fig(curve, "copy bandwidth vs bytes moved", stamp), float(total)


def _overheads(stamp: str) -> dict:
    import torch

    x = torch.zeros(1, device="cuda")
    n = 2000
    x.add_(1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        x.add_(1)
    torch.cuda.synchronize()
    launch = (time.perf_counter() - t0) / n
    chain = torch.nn.Sequential(*[torch.nn.Identity() for _ in range(64)])
    t0 = time.perf_counter()
    for _ in range(100):
        chain(x)
    module_call = (time.perf_counter() - t0) / 100 / 65
    from effml.hardware.roofline import MODULE_CALL

    return {"default": _fig(launch, f"host wall time per launch of a 1-element add ({n} launches, synchronised)",
                            stamp),
            MODULE_CALL: _fig(module_call, "nn.Module __call__ of an Identity", stamp)}


def calibrate_cuda(device: str = "cuda:0", quick: bool = False, progress: Progress | None = None) -> Calibration:
    """Measure the GPU `device` (resolved, e.g. by effml.measure.device.resolve_device); a Calibration whose
    `.save()` makes it the `local` device."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise ConfigError(f"calibrate_cuda needs a visible CUDA device, got {device!r}")
    progress = progress or (lambda what, frac: None)
    t_start, load_before = time.perf_counter(), os.getloadavg()
    with torch.cuda.device(torch.device(device)):
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        cc = f"{props.major}.{props.minor}"
        stamp = f"{time.strftime('%Y-%m-%d')}, {props.name} (compute capability {cc}), CUDA {torch.version.cuda}"
        progress("matmul peaks", 0.0)
        peak = _peaks(quick, stamp)
        progress("bandwidth (copy)", 0.6)
        mem_bw, curve, total = _bandwidth(quick, stamp)
        progress("launch overhead", 0.9)
        overhead = _overheads(stamp)
    progress("done", 1.0)
    meta = {"device": device, "cuda": torch.version.cuda, "torch": torch.__version__, "quick": quick,
            "threads": torch.get_num_threads(), "load_average": [round(x, 2) for x in load_before]}
    raw = gpu_entry(props.name, cc, peak, mem_bw, curve, total, overhead, stamp, meta)
    return Calibration(device_from_dict(LOCAL, raw), raw, [], time.perf_counter() - t_start)


def gpu_entry(name: str, cc: str, peak: dict, mem_bw: dict, curve: dict, total: float, overhead: dict, stamp: str,
              meta: dict) -> dict:
    """The `local` device entry of a GPU calibration (the catalog schema, kind 'gpu')."""
    return {"name": f"local ({name}, cc {cc})", "kind": "gpu", "memory_level": "dram", "energy_ref_dtype": "fp32",
            "peak_flops": peak, "mem_bw": mem_bw, "bw_curve": curve,
            "memory_bytes": _fig(total, "torch.cuda.get_device_properties().total_memory", stamp),
            "overhead_s": overhead,
            "meta": {"gpu": name, "capability": cc, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "cpu_count": os.cpu_count(), **meta,
                     "int8_kernel": peak["int8"]["source"] if "int8" in peak else "none: torch._int_mm failed"}}


__all__ = ["calibrate_cuda", "cuda_time", "gpu_entry"]
