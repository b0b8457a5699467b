"""Where a study measures: `device="cpu" | "cuda" | "cuda:N"` (effml.measure.device parses and checks it), and
which plans can run there.

    device = resolve_device("cuda", flag="device")     # "cuda:0", or one ConfigError when no GPU is visible
    kept, refused = split_plans(plans, device)           # refused: [(plan name, why it cannot run on the GPU)]
    x = to_device(example_inputs, device)                # tensors (also inside tuples / dicts) moved

A quantized format whose kernels exist only for the CPU is refused on CUDA with the reason, never run on the
CPU behind the user's back: torch.ao's dynamic and static int8 (fbgemm / x86 / oneDNN quantized engines) and
the packed int4/int8 weight-only kernels (`aten._weight_int4pack_mm_for_cpu`, `torch._weight_int8pack_mm`),
which GPTQ and AWQ produce too. NO_CUDA_KERNEL is the registry of those methods (quantize method name ->
config -> the reason, or None when this configuration does run on CUDA, e.g. weight-only with kernel="dequant").
Pruning and the fake-quant formats (linear, k-means) keep fp32 weights and run on CUDA like the baseline.
"""

from __future__ import annotations

from typing import Any, Callable

from effml.errors import ConfigError
from effml.registries import Registry

_AO = ("torch.ao quantized int8 kernels (fbgemm / x86 / oneDNN engines) run only on the CPU; no CUDA kernel")
_PACKED = ("the packed weight-only kernels (aten._weight_int4pack_mm_for_cpu, torch._weight_int8pack_mm) run only "
           "on the CPU; no CUDA kernel")

NO_CUDA_KERNEL: Registry = Registry("CPU-only quantization method")
NO_CUDA_KERNEL.add("int8-dynamic", lambda config: _AO)
NO_CUDA_KERNEL.add("int8-static", lambda config: _AO)
NO_CUDA_KERNEL.add("weight-only", lambda config: _PACKED if getattr(config, "kernel", "packed") == "packed" else None)
NO_CUDA_KERNEL.add("gptq", lambda config: _PACKED)
NO_CUDA_KERNEL.add("awq", lambda config: _PACKED)


def config_refusal(config) -> str | None:
    """Why a compression config (effml.compress.configs) makes a model that cannot run on CUDA; None: it can."""
    if config.name not in NO_CUDA_KERNEL:
        return None
    why: Callable[[Any], str | None] = NO_CUDA_KERNEL.get(config.name)
    reason = why(config)
    return f"{config.name}: {reason}" if reason else None


def check_config_on(config, device: str, flag: str = "--device") -> None:
    """ConfigError when `config` makes a model with no kernel on `device` (refused before any work)."""
    reason = config_refusal(config) if device.startswith("cuda") else None
    if reason:
        raise ConfigError(f"{flag} {device}: {reason}; run it with {flag} cpu, or choose a format that runs on "
                          "the GPU (pruning, linear or kmeans fake-quant, weight-only with kernel dequant)")


def cuda_refusal(steps) -> str | None:
    """Why a plan's steps ((technique, config dict), ...) cannot run on CUDA; None when they can."""
    from effml.compress.configs import config_from_dict

    for technique, cfg in steps:
        if technique == "quantize" and cfg.get("method") in NO_CUDA_KERNEL:
            reason = config_refusal(config_from_dict(cfg))
            if reason:
                return reason
    return None


def split_plans(plans: list, device: str) -> tuple[list, list[tuple[str, str]]]:
    """(the plans that run on `device`, [(plan name, reason)] for those refused there)."""
    if not device.startswith("cuda"):
        return list(plans), []
    kept, refused = [], []
    for plan in plans:
        reason = cuda_refusal(plan.steps)
        if reason:
            refused.append((plan.name, f"not on {device}: {reason}"))
        else:
            kept.append(plan)
    return kept, refused


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


def recorded(device: str) -> dict:
    """What the results record about the device the numbers were measured on (empty for the CPU: the machine
    info already says which CPU)."""
    if not device.startswith("cuda"):
        return {}
    from effml.measure.device import device_info

    info = device_info(device)
    return {"device": info["device"], "device_name": info["name"], "device_capability": info["capability"],
            "device_memory_bytes": info["memory_bytes"], "cuda": info["cuda"]}


def place(model, example_inputs, calibration, device: str | None, backends, flag: str = "device"):
    """Checked device and backends, and the model (moved in place), example inputs and calibration batches on
    that device: (device, backends, example_inputs, calibration). A bad device or backend fails here, first."""
    from effml.measure.device import resolve_device
    from effml.study.backends import check_backends

    device = resolve_device(device, flag=flag)
    backends = check_backends(backends, device, flag="backends")
    if device != "cpu":
        model.to(device)
        example_inputs, calibration = to_device(example_inputs, device), to_device(calibration, device)
    return device, backends, example_inputs, calibration


def for_timing(model, baseline, x, device: str):
    """(model, baseline, x) on `device` for the timing and the memory peak: copies on a GPU (the default study
    trains and evaluates its variants on the CPU and measures them where --device says), themselves on the CPU."""
    if not device.startswith("cuda"):
        return model, baseline, x
    import copy

    return (copy.deepcopy(model).to(device), copy.deepcopy(baseline).to(device) if baseline is not None else None,
            to_device(x, device))


__all__ = ["NO_CUDA_KERNEL", "check_config_on", "config_refusal", "cuda_refusal", "for_timing", "place", "recorded",
           "split_plans", "to_device"]
