"""The LLM commands on a GPU: `effml generate --device cuda[:N]` and `effml serve-bench --device cuda[:N]`.

    device = check_device("cuda", fmt="fp32")   # "cuda:0"; one ConfigError when no GPU or no kernel for fmt
    with running_on(lm.model, device):           # the model moved there; new tensors (KV caches, token ids) too
        res = generate(lm.model, ids, config)

The engine's tensors are made by torch's factory functions (KV caches, token ids, masks, the RoPE table), so
the model is moved to the GPU and those calls run under `torch.device(device)` as the default device. Token
times are exact on the GPU: each step reads its token back (`int(argmax)`), which waits for the GPU; the
serving engines' model calls are synchronised before their clock stops (effml.llm.serving._drive).

What has no CUDA path is refused, never run on the CPU instead: the int8/int4 weight-only formats (packed CPU
kernels; effml.study.on_device.NO_CUDA_KERNEL says why) and speculative decoding (its drafts are built and run
by CPU code).
"""

from __future__ import annotations

import contextlib

import torch

from effml.errors import ConfigError

CUDA_FORMATS = ("fp32", "bf16")  # plain F.linear (cuBLAS) on the GPU


def check_device(text: str | None, *, fmt: str = "fp32", speculative: str | None = None,
                 flag: str = "--device") -> str:
    """The resolved device ('cpu' or 'cuda:N'); a ConfigError, before any work, for what cannot run on it."""
    from effml.measure.device import resolve_device

    device = resolve_device(text, flag=flag)
    if device == "cpu":
        return device
    if fmt not in CUDA_FORMATS:
        from effml.compress.configs import config_from_dict
        from effml.compress.on_device import config_refusal

        why = config_refusal(config_from_dict({"method": "weight-only", "bits": 8 if fmt == "int8" else 4}))
        raise ConfigError(f"{flag} {device}: --format {fmt} is not available on the GPU ({why}); use --format "
                          f"{' or '.join(CUDA_FORMATS)} there, or --device cpu")
    if speculative:
        raise ConfigError(f"{flag} {device}: --speculative runs on the CPU only (its drafts are built and run by "
                          "CPU code); drop --speculative, or use --device cpu")
    return device


@contextlib.contextmanager
def running_on(model: torch.nn.Module, device: str):
    """`model` moved to `device` and that device the default for new tensors inside the block (CPU: as is)."""
    if device == "cpu":
        yield model
        return
    model.to(device)
    with torch.device(device):
        yield model


def device_dict(device: str) -> dict | None:
    """The GPU the numbers come from (name, compute capability) for --json; None on the CPU."""
    if device == "cpu":
        return None
    from effml.measure.device import device_info

    return device_info(device)


__all__ = ["CUDA_FORMATS", "check_device", "device_dict", "running_on"]
