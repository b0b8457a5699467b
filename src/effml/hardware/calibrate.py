"""`calibrate()`: measure this machine and save it as the `local` device (same schema as catalog.json).

Measures, in about 30 s (about 5 s with quick=True):
  1. matmul peak per dtype: fp32 torch.mm at several sizes (best); bf16 through F.linear/mm (a kernel
     exists everywhere, but without AVX512-BF16/AMX it converts to fp32 and is slow: the source says which
     CPU capability it ran on); int8 only where a real int8 GEMM exists: the fbgemm/x86 dynamic-quantized
     Linear (qint8 weights, int8 activations quantized per call). torch._int_mm on CPU is a reference loop
     (~1 GOP/s), so it is not used as "the int8 peak".
  2. bandwidth: a STREAM-like triad a = b + s*c at working sets from L1-sized to DRAM-sized; the curve is
     kept (ops that fit in cache run faster than DRAM) and the largest is `mem_bw`. Copy is recorded too.
  3. overheads: per op category, fitted with an efficiency pair from the micro-benchmarks of
     `microbench.py` (counted with effml.profile, so the FLOPs/bytes match what real models report); and the
     Python cost of one nn.Module call. The fit minimises squared log error of the roofline formula
     (roofline.op_cost) over each category's cases: a per-op-type correction learned here, not on models.
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from effml.errors import ConfigError
from effml.hardware.catalog import LOCAL, Device, device_from_dict, local_device_path
from effml.hardware.curvefit import fit_op_model
from effml.progress import Progress



@dataclass(frozen=True)
class CalibrateConfig:
    quick: bool = False  # a few seconds, fewer sizes: for tests and smoke runs
    threads: int | None = None  # torch threads while measuring (default: as configured)
    sample_s: float = 0.002  # target duration of one timed sample (inner loop grows to reach it)
    samples: int = 5
    categories: tuple[str, ...] | None = None  # micro-benchmark only these op categories (tests)
    clock: str = "wall"  # "cpu": thread CPU time (needs 1 thread; robust on a shared machine)
    statistic: str = "min"  # of the samples: "min" (timeit's choice: slower samples are interference) or "median"
    # per-kernel latency models (kernelbench.py): wall seconds of sampling + timing (None: 50, quick 6),
    # timed rounds, and which families (None: all; () skips them)
    kernel_budget_s: float | None = None
    kernel_rounds: int | None = None
    kernel_families: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"CalibrateConfig.threads must be >= 1, got {self.threads}")
        if self.statistic not in ("min", "median"):
            raise ConfigError(f"CalibrateConfig.statistic must be 'min' or 'median', got {self.statistic!r}")
        if self.clock not in ("wall", "cpu"):
            raise ConfigError(f"CalibrateConfig.clock must be 'wall' or 'cpu', got {self.clock!r}")
        if self.clock == "cpu" and self.threads != 1:
            raise ConfigError("CalibrateConfig(clock='cpu') needs threads=1: CPU time of several threads is not latency")
        if self.sample_s <= 0 or self.samples < 1:
            raise ConfigError(f"CalibrateConfig needs sample_s > 0 and samples >= 1, got {self.sample_s}, {self.samples}")


@dataclass
class Calibration:
    device: Device
    raw: dict  # the JSON entry saved as devices.local
    cases: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return {"device": self.raw, "cases": self.cases, "elapsed_s": self.elapsed_s}

    def save(self, path: str | Path | None = None) -> Path:
        """Write {"devices": {"local": ...}} to `path` (default: the user cache dir); return the path."""
        p = Path(path) if path is not None else local_device_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"_about": "effml local device, measured by `effml calibrate`",
                                 "devices": {LOCAL: self.raw}}, indent=2) + "\n")
        return p


# ---- timing ------------------------------------------------------------------------------------------
def time_per_call(fn: Callable[[], object], config: CalibrateConfig) -> float:
    """Seconds per call (min or median of `samples`); each sample loops `fn` long enough to last ~sample_s."""
    from effml.measure.timing import clock_fn

    clock = clock_fn(config.clock)
    fn()
    t0 = clock()
    fn()
    once = max(clock() - t0, 1e-7)
    inner = max(1, min(10_000, int(config.sample_s / once)))
    xs = []
    for _ in range(config.samples):
        t0 = clock()
        for _ in range(inner):
            fn()
        xs.append((clock() - t0) / inner)
    xs.sort()
    return xs[0] if config.statistic == "min" else xs[len(xs) // 2]


def _fig(value, how: str, stamp: str) -> dict:
    return {"value": value, "source": f"measured by effml calibrate ({stamp}): {how}"}


# ---- 1. matmul peaks ---------------------------------------------------------------------------------
def _peak_fp32(config) -> tuple[float, str]:
    import torch

    best, at = 0.0, 0
    for n in ((512,) if config.quick else (512, 1024, 1536)):
        a, b = torch.randn(n, n), torch.randn(n, n)
        f = 2 * n**3 / time_per_call(lambda: torch.mm(a, b), config)
        if f > best:
            best, at = f, n
    return best, f"fp32 torch.mm, best of square sizes, at {at}x{at}x{at}"


def _peak_bf16(config) -> tuple[float, str]:
    import torch
    import torch.nn.functional as F

    m, n = (64, 256) if config.quick else (128, 512)  # small: without native bf16 it runs at ~1-10 GFLOP/s
    x, w = torch.randn(m, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    f = max(2 * m * n * n / time_per_call(lambda: F.linear(x, w), config),
            2 * m * n * n / time_per_call(lambda: torch.mm(x, w), config))
    cap = torch.backends.cpu.get_cpu_capability()
    return f, f"bf16 F.linear / torch.mm {m}x{n}x{n} (best) on a {cap} CPU"


def _peak_int8(config) -> tuple[float, str] | None:
    import torch

    engines = set(torch.backends.quantized.supported_engines)
    if not engines & {"fbgemm", "x86"}:
        return None
    m, n = (128, 512) if config.quick else (256, 1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized.dynamic import Linear as QLinear

        q = QLinear(n, n, dtype=torch.qint8)
    x = torch.randn(m, n)
    f = 2 * m * n * n / time_per_call(lambda: q(x), config)
    return f, f"int8 fbgemm dynamic-quantized Linear {m}x{n}x{n} (qint8 weights; a real int8 GEMM kernel)"


# ---- 2. bandwidth ------------------------------------------------------------------------------------
def _bandwidth(config) -> tuple[list[list[float]], float]:
    """Triad curve [[working-set bytes, bytes/s], ...] and the copy bandwidth at the largest size."""
    import torch

    elems = (4096, 1 << 16, 1 << 21) if config.quick else (1024, 8192, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 23)

    def triad(n: int) -> float:
        a, b, c = torch.empty(n), torch.randn(n), torch.randn(n)
        return time_per_call(lambda: torch.add(b, c, alpha=3.0, out=a), config)

    call = triad(16)  # a 16-element triad is all call overhead: subtract it, or small sizes look slow
    curve = []
    for n in elems:
        t = triad(n)
        curve.append([3 * n * 4, 3 * n * 4 / max(t - call, 0.25 * t)])  # reads b, c; writes a
    n = elems[-1]
    a, b = torch.empty(n), torch.randn(n)
    copy = 2 * n * 4 / time_per_call(lambda: a.copy_(b), config)
    return curve, copy


MMAP_THRESHOLD_MAX = 32 << 20  # glibc DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: larger blocks are always mmapped


def _fresh_alloc(config) -> float:
    """Bytes/s of first-touching fresh pages: add into a new 64 MiB output minus add into an existing one."""
    import torch

    n = (64 << 20) // 4
    a, b, c = torch.empty(n), torch.randn(n), torch.randn(n)
    cfg = replace(config, samples=3 if not config.quick else 1, sample_s=1e-6)  # one call per sample
    t_out = time_per_call(lambda: torch.add(b, c, out=a), cfg)
    t_new = time_per_call(lambda: torch.add(b, c), cfg)
    return n * 4 / max(t_new - t_out, 0.05 * t_out)


# ---- 3. per-category overhead and efficiency ---------------------------------------------------------
def _count(case):
    import torch

    from effml.cost.counter import profile
    from effml.hardware.microbench import as_module

    with torch.no_grad():
        return profile(as_module(case.fn), *case.inputs).events


def calibrate(config: CalibrateConfig | None = None, progress: Progress | None = None) -> Calibration:
    """Measure this machine; return a Calibration whose `.save()` makes it the `local` device."""
    import psutil
    import torch

    from effml.hardware.microbench import as_module, cases
    from effml.hardware.roofline import MODULE_CALL, curve_at

    config = config or CalibrateConfig()
    progress = progress or (lambda what, frac: None)
    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    t_start, load_before = time.perf_counter(), os.getloadavg()
    stamp = (f"{time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} threads, "
             f"{torch.backends.cpu.get_cpu_capability()}, {config.clock} clock, {config.statistic} of samples")
    try:
        progress("matmul fp32", 0.0)
        peak = {"fp32": _fig(*_peak_fp32(config), stamp=stamp)}
        progress("matmul bf16", 0.1)
        peak["bf16"] = _fig(*_peak_bf16(config), stamp=stamp)
        progress("matmul int8", 0.15)
        i8 = _peak_int8(config)
        if i8 is not None:
            peak["int8"] = _fig(*i8, stamp=stamp)
        progress("bandwidth (triad, copy)", 0.2)
        curve, copy_bw = _bandwidth(config)
        alloc_bw = _fresh_alloc(config)
        p32 = float(peak["fp32"]["value"])

        def bw(b: float) -> float:
            return curve_at(curve, b)

        # module-call overhead: a chain of 64 identity modules
        chain = torch.nn.Sequential(*[torch.nn.Identity() for _ in range(64)])
        x = torch.randn(4)
        module_call = time_per_call(lambda: chain(x), config) / 65
        all_cases = cases(config.quick, config.categories)
        overhead: dict[str, dict] = {MODULE_CALL: _fig(module_call, "nn.Module __call__ of an Identity", stamp)}
        efficiency: dict[str, dict] = {}
        rows_by_cat: dict[str, list[dict]] = {}
        for i, case in enumerate(all_cases):
            progress(f"{case.category}: {case.label}", 0.3 + 0.65 * i / len(all_cases))
            events = _count(case)
            mod = as_module(case.fn)
            with torch.no_grad():
                t = time_per_call(lambda: mod(*case.inputs), config) - module_call
            rows_by_cat.setdefault(case.category, []).append(
                {"label": case.label, "time_s": max(t, 1e-8), "events": events})
        # views first: their overhead is then known inside every other case
        view_rows = rows_by_cat.pop("view", [])
        view_o = sorted(r["time_s"] for r in view_rows)[len(view_rows) // 2] if view_rows else 0.0
        overhead["view"] = _fig(view_o, "median time of a view/transpose call", stamp)
        report = [{"category": "view", "label": r["label"], "time_s": r["time_s"]} for r in view_rows]
        for key, fit in fit_op_model(rows_by_cat, view_o, p32, bw).items():
            how = (f"fit over {fit['n']} micro-benchmark(s) of {key} (rms log error {fit['rms_log_error']:.2f})")
            overhead[key] = _fig(fit["overhead_s"], how, stamp)
            efficiency[key] = _fig({k: fit[k] for k in ("compute", "memory", "i_half", "p", "r", "bytes_range")
                                    if k in fit}, how, stamp)
        report += [{"category": cat, "label": r["label"], "time_s": r["time_s"], "ops": r["ops"]}
                   for cat, rows in rows_by_cat.items() for r in rows]
        cats = sorted(float(f["value"]) for k, f in overhead.items() if k != MODULE_CALL and "." not in k)
        overhead["default"] = _fig(cats[len(cats) // 2], "median of the per-category overheads (ops of a "
                                   "category with no micro-benchmark)", stamp)
        progress("kernel models", 0.9)
        kernels = _kernel_models(config, raw_base(peak, curve, overhead, efficiency, alloc_bw, stamp),
                                 module_call, stamp, lambda what, f: progress(what, 0.9 + 0.1 * f))
        progress("done", 1.0)
    finally:
        torch.set_num_threads(old_threads)
    cpu = cpu_name()
    raw = {
        "name": f"local ({cpu}, {torch.backends.cpu.get_cpu_capability()}, {config.threads or old_threads} threads)",
        "kind": "cpu", "memory_level": "dram", "energy_ref_dtype": "fp32",
        "memory_bytes": _fig(float(psutil.virtual_memory().total), "psutil.virtual_memory().total", stamp),
        **raw_base(peak, curve, overhead, efficiency, alloc_bw, stamp), "kernels": kernels,
        "meta": {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                 "threads": config.threads or old_threads, "torch": torch.__version__, "quick": config.quick,
                 "clock": config.clock,
                 "copy_bw": copy_bw, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 # the load before calibrating (afterwards it includes the calibration's own threads): every
                 # figure is a best-of-samples, but a busy machine still makes them pessimistic (measured
                 # here: 9-30x too slow predictions after a calibration at load 7-9 on 2 cores)
                 "load_average": [round(x, 2) for x in load_before],
                 "cpu_count": os.cpu_count(),
                 "int8_kernel": peak.get("int8", {}).get("source", "none: no fbgemm/x86 quantized engine")},
    }
    return Calibration(device_from_dict(LOCAL, raw), raw, report, time.perf_counter() - t_start)


def busy_warning(meta: dict) -> str | None:
    """A sentence when the calibration started on a busy machine (1-minute load average of at least one
    runnable process per CPU: every timing then shared its core), else None."""
    load, cpus = (meta.get("load_average") or [0.0])[0], meta.get("cpu_count") or 1
    if load < cpus:
        return None
    return (f"calibrated at load average {load:.1f} on {cpus} CPUs: other processes competed for the cores, so "
            "the measured peaks are low and `local` predictions too slow; rerun `effml calibrate` when idle")


def saved_busy_warning() -> str | None:
    """busy_warning() of the saved `local` device, if there is one (calibrations older than this field: None)."""
    from effml.hardware.catalog import LOCAL, local_device_path

    path = local_device_path()
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())["devices"][LOCAL].get("meta", {})
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable file is reported by whoever loads the device, with its path
    return busy_warning(meta)


def raw_base(peak, curve, overhead, efficiency, alloc_bw, stamp) -> dict:
    """The roofline part of the device entry (peaks, bandwidth curve, overheads, efficiencies)."""
    return {"peak_flops": peak,
            "mem_bw": _fig(curve[-1][1], f"triad a = b + s*c over {fmt_mb(curve[-1][0])} (DRAM-sized)", stamp),
            "bw_curve": _fig(curve, "triad bandwidth vs working-set bytes", stamp),
            "overhead_s": overhead, "efficiency": efficiency,
            "fresh_alloc": _fig({"threshold_bytes": MMAP_THRESHOLD_MAX, "bytes_per_s": alloc_bw},
                                "torch.add into a new 64 MiB output minus into an existing one (page faults of "
                                "mmapped blocks; threshold = glibc's 32 MiB mmap maximum)", stamp)}


def _kernel_models(config, base: dict, module_call: float, stamp: str, progress) -> dict:
    """Per-family kernel latency models (kernelbench.run) as figures; {} when the config skips them."""
    from effml.hardware import kernelbench
    from effml.measure.timing import clock_fn

    if config.kernel_families == ():
        return {}
    device = device_from_dict(LOCAL, {"name": LOCAL, "kind": "cpu", "memory_bytes": _fig(1.0, "-", stamp), **base})
    budget = config.kernel_budget_s or (6.0 if config.quick else 50.0)
    rounds = config.kernel_rounds or (3 if config.quick else 5)
    fits = kernelbench.run(device, module_call, clock_fn(config.clock), budget, rounds, config.seed,
                           config.kernel_families, progress)
    out = {}
    for fam, fit in fits.items():
        h = fit["heldout"]
        how = (f"gradient-boosted trees on {fit['n']} randomly sampled {fam} kernels (median of {rounds} "
               f"calls each), correcting the roofline above; held-out 20%: " +
               (f"median |error| {h['median_abs_error']:.0%}, {h['within_20pct']:.0%} within +-20%" if h else "n/a"))
        out[fam] = _fig(fit, how, stamp)
    return out


def fmt_mb(n: float) -> str:
    return f"{n / 1e6:.3g} MB"


def cpu_name() -> str:
    """The CPU's name as the OS reports it (Linux /proc/cpuinfo 'model name'), else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
