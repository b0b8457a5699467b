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

from effml.compress.on_device import NO_CUDA_KERNEL, check_config_on, config_refusal  # noqa: F401 (re-exported)
from effml.measure.device import for_timing, to_device  # noqa: F401 (re-exported)


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


__all__ = ["NO_CUDA_KERNEL", "check_config_on", "config_refusal", "cuda_refusal", "for_timing", "place", "recorded",
           "split_plans", "to_device"]
