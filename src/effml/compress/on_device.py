"""Which compression configs make a model that has no kernel on CUDA (refused there with the reason, never run on
the CPU behind the user's back): torch.ao's dynamic and static int8 (fbgemm / x86 / oneDNN quantized engines) and
the packed int4/int8 weight-only kernels (`aten._weight_int4pack_mm_for_cpu`, `torch._weight_int8pack_mm`, effml's
own native GEMV), which GPTQ and AWQ produce too. NO_CUDA_KERNEL is the registry of those methods (quantize method
name -> config -> the reason, or None when this configuration does run on CUDA, e.g. weight-only with
kernel="dequant"). Pruning and the fake-quant formats (linear, k-means) keep fp32 weights and run on CUDA.

    config_refusal(WeightOnlyConfig(bits=4))          # "weight-only: the packed weight-only kernels ... run only ..."
    check_config_on(config, "cuda:0")                 # ConfigError naming the flag, the device and the reason
"""

from __future__ import annotations

from typing import Any, Callable

from effml.errors import ConfigError
from effml.registries import Registry

_AO = ("torch.ao quantized int8 kernels (fbgemm / x86 / oneDNN engines) run only on the CPU; no CUDA kernel")
_PACKED = ("the packed weight-only kernels (aten._weight_int4pack_mm_for_cpu, torch._weight_int8pack_mm, effml's "
           "native GEMV) run only on the CPU; no CUDA kernel")

NO_CUDA_KERNEL: Registry = Registry("CPU-only quantization method")
NO_CUDA_KERNEL.add("int8-dynamic", lambda config: _AO)
NO_CUDA_KERNEL.add("int8-static", lambda config: _AO)
NO_CUDA_KERNEL.add("weight-only",
                   lambda config: _PACKED if getattr(config, "kernel", "packed") in ("packed", "a8", "torch") else None)
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


