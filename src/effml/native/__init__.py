"""effml's own CPU kernels (C++ beside this file), compiled for this CPU on first use.

    from effml import native
    ext = native.load()        # the compiled module, or None (then native.status() says why)
    y = ext.gemv(x, codes, scale, bias)   # gemv.cpp: x (M, K) fp32; codes (N, K) int8 + scale (N,), or bf16/fp32 w
    ext.rms_norm / ext.attend / ext.silu_mul    # decode.cpp: a decode step's small ops fused (effml.llm.fastpath)

Why a kernel of our own: a decode step (one activation row) is a matrix-vector product whose cost is reading the
weights. torch 2.13's `_weight_int8pack_mm` converts the codes to bf16 before multiplying and runs at a third of
this machine's read bandwidth; the effml kernel widens int8 to fp32 in registers and multiplies up to 8
activation rows per pass over a weight row (AVX-512: 16 lanes, AVX2: 8, chosen by `-march=native` when it is
built, and per weight dtype; `EFFML_NATIVE_MARCH=haswell` builds the AVX2 version anywhere), so it reads each
weight once at close to the bandwidth, with fp32 activations (no activation rounding).
benchmarks/bench_decode.py measures it beside torch's kernel. The decode ops exist because a decode step of a
small model is otherwise ~170 aten dispatches per layer, as long as reading its int8 weights (decode.cpp says more).

The build (about 35 s, once per CPU kind and torch version) goes to `$EFFML_KERNEL_CACHE` (default
`~/.cache/effml/kernels/<tag>`, the tag a hash of the source, torch's version and the CPU's flags, so a home
directory shared between an AVX2 and an AVX-512 machine never loads the other's binary). Without a C++ compiler,
or with `EFFML_NATIVE_KERNELS=0`, `load()` returns None and the weight-only layers run torch's kernels; the
engine's plan notes say so (never silently slow).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

import torch

SOURCES = tuple(Path(__file__).with_name(n)
                for n in ("gemv.cpp", "decode.cpp", "a8.cpp", "a8_rows.cpp", "amx.cpp", "tiles.cpp"))
# included by the sources: part of what the binary depends on
HEADERS = tuple(Path(__file__).with_name(n) for n in ("vec.h", "a8.h"))
MAX_ROWS = 16  # activation rows the GEMV handles; more rows (prefill) go to torch's blocked kernels
_status = "not loaded yet"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() + torch.backends.cpu.get_cpu_capability()


def tag() -> str:
    """What the binary depends on: the source, torch's version and ABI, the CPU's instruction sets."""
    h = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS))
    h.update(f"{torch.__version__}|{platform.machine()}|{_cpu_flags()}|{cflags()}|{LDFLAGS}".encode())
    return h.hexdigest()[:16]


# -fopenmp: at::parallel_for is inline, and without it the kernels' loops over output groups run on one thread
# whatever torch.get_num_threads() says; the link resolves to the libgomp torch has already loaded
LDFLAGS = ["-fopenmp"]


def cflags() -> list[str]:
    return ["-O3", f"-march={march()}", "-fno-math-errno", "-fopenmp-simd", "-fopenmp"]


def march() -> str:
    """The -march the kernels are built for: `native` (this CPU), or $EFFML_NATIVE_MARCH (e.g. `haswell`: the
    AVX2 build on an AVX-512 machine, to measure what an AVX2-only CPU gets)."""
    return os.environ.get("EFFML_NATIVE_MARCH", "native")


def build_dir() -> Path:
    root = os.environ.get("EFFML_KERNEL_CACHE") or Path.home() / ".cache" / "effml" / "kernels"
    return Path(root) / tag()


@functools.cache
def load():
    """The compiled kernel module, or None (see `status()` for the reason)."""
    global _status
    if os.environ.get("EFFML_NATIVE_KERNELS", "1") == "0":
        _status = "effml's native kernels disabled (EFFML_NATIVE_KERNELS=0)"
        return None
    if platform.machine() not in ("x86_64", "AMD64"):
        _status = f"effml's native kernels are written for x86-64, this is {platform.machine()}"
        return None
    from torch.utils import cpp_extension

    if not _find_ninja():
        _status = ("effml's native kernels need the ninja build tool (apt install ninja-build, or pip install "
                   "ninja); torch's kernels run")
        return None
    out = build_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
        _clear_stale_lock(out)
        ext = cpp_extension.load(f"effml_native_{tag()}", [str(p) for p in SOURCES], build_directory=str(out),
                                 verbose=False, extra_cflags=cflags(), extra_ldflags=LDFLAGS)
    except Exception as e:  # noqa: BLE001 - no compiler, no ninja, a read-only cache: torch's kernels run instead
        first = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
        _status = f"effml's native kernels could not be built ({type(e).__name__}: {first}); torch's kernels run"
        return None
    _status = f"effml native GEMV ({ext.isa()}, fp32 activations)"
    return ext


def _find_ninja() -> bool:
    """torch builds with `ninja` from PATH; a pip-installed ninja in this environment's scripts folder (not on
    PATH when python is run by its path) is put on PATH."""
    import shutil
    import sysconfig

    if shutil.which("ninja"):
        return True
    scripts = sysconfig.get_path("scripts")
    if scripts and shutil.which("ninja", path=scripts):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
        return True
    return False


def _clear_stale_lock(out: Path, max_age_s: float = 600.0) -> None:
    """torch's build waits, without a limit, for the `lock` file a build in progress holds; a build killed half-way
    (Ctrl-C during the first use) leaves it behind. One older than any real build (10 min) is removed."""
    import time

    lock = out / "lock"
    try:
        if time.time() - lock.stat().st_mtime > max_age_s:
            lock.unlink()
    except FileNotFoundError:
        pass


def status() -> str:
    """What `load()` found: the kernel and its ISA, or why there is none."""
    return _status
