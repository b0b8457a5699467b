"""Which device a measurement runs on: `--device cpu | cuda | cuda:N`, checked against this machine, and what
that device is (name, compute capability or CPU vector capability, memory) for the results.

    dev = resolve_device("cuda")     # "cuda:0"; ConfigError in one line when no GPU is visible to torch
    device_info(dev)                 # {"device": "cuda:0", "name": "NVIDIA H100 80GB HBM3", "capability": "9.0", ...}
"""

from __future__ import annotations

import platform
import re

from effml.errors import ConfigError

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def resolve_device(text: str | None, flag: str = "--device") -> str:
    """'cpu', 'cuda' (-> 'cuda:<current>') or 'cuda:N', checked: a CUDA device must exist here."""
    import torch

    key = (text or "cpu").strip().lower()
    m = _DEVICE.match(key)
    if not m or (m.group(1) == "cpu" and m.group(2) is not None):
        raise ConfigError(f"{flag} {text!r} is not a device: use cpu, cuda or cuda:N (e.g. cuda:0)")
    if m.group(1) == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(f"{flag} {text}: no CUDA GPU is visible to torch here (torch {torch.__version__}, "
                          f"{build}); use {flag} cpu, or run on a machine with a GPU and a CUDA build of torch")
    n = torch.cuda.device_count()
    index = int(m.group(2)) if m.group(2) is not None else torch.cuda.current_device()
    if index >= n:
        raise ConfigError(f"{flag} {text}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    return f"cuda:{index}"


def device_info(device: str) -> dict:
    """What the device is, for results: name, capability (CUDA compute capability or the CPU's vector ISA
    level), memory in bytes (GPU only; None for the CPU)."""
    import torch

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return {"device": device, "name": props.name, "capability": f"{props.major}.{props.minor}",
                "memory_bytes": int(props.total_memory), "cuda": torch.version.cuda}
    return {"device": "cpu", "name": platform.processor() or platform.machine(),
            "capability": torch.backends.cpu.get_cpu_capability(), "memory_bytes": None, "cuda": None}


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))


__all__ = ["device_info", "resolve_device", "synchronize"]


def to_device(x, device: str):
    """Tensors moved to `device`, also inside tuples, lists and dicts; anything else as it is."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x


def for_timing(model, baseline, x, device: str):
    """(model, baseline, x) on `device` for the timing and the memory peak: copies on a GPU (the default study
    trains and evaluates its variants on the CPU and measures them where --device says), themselves on the CPU."""
    if not device.startswith("cuda"):
        return model, baseline, x
    import copy

    return (copy.deepcopy(model).to(device), copy.deepcopy(baseline).to(device) if baseline is not None else None,
            to_device(x, device))
