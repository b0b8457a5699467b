"""The steps `effml prune` and `effml quantize` share: facts about a model, data that fits it, weights, report.

    facts(model, (x,), accuracy=0.91)                    # params, MACs, FLOPs, bytes (effml.profile)
    data = data_for(spec.args[0].shape, "fashion-mnist")  # resized to the model's input, or a clear error
    CompressionReport(...).to_dict()                      # what the CLI prints (--json: exactly this)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from effml.compress.layers import count_nonzero, count_params, param_bytes
from effml.errors import ConfigError


@dataclass
class ModelFacts:
    params: int
    nonzero: int
    fp32_bytes: int
    stored_bytes: int  # as the compression stores it (sparse format, codes, smaller model)
    macs: int | None  # None when the model's ops could not be counted (e.g. packed int8 kernels)
    flops: int | None
    accuracy: float | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CompressionReport:
    model: dict  # ModelSpec.to_dict()
    technique: str
    config: dict
    before: ModelFacts
    after: ModelFacts
    result: dict
    speed: dict | None = None
    out: str | None = None
    data: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"model": self.model, "technique": self.technique, "config": self.config,
                "before": self.before.to_dict(), "after": self.after.to_dict(),
                "size_ratio": self.before.fp32_bytes / self.after.stored_bytes if self.after.stored_bytes else None,
                "result": self.result, "speed": self.speed, "out": self.out, "data": self.data,
                "notes": list(self.notes)}


def facts(model: nn.Module, inputs: tuple, *, stored_bytes: int | None = None, accuracy: float | None = None,
          kwargs: dict | None = None) -> ModelFacts:
    """Count the model on `inputs` with effml.profile; parameters include packed int8 weights."""
    from effml.cost.counter import profile

    params = count_params(model)
    macs = flops = None
    note = ""
    try:
        prof = profile(model, *inputs, forward_kwargs=dict(kwargs or {}))
        tot = prof.total()
        macs, flops = tot.macs, tot.flops
        params = max(params, prof.params)
        if prof.is_lower_bound:
            note = f"FLOPs are a lower bound: no formula for {', '.join(sorted(prof.unsupported))}"
    except Exception as e:  # noqa: BLE001 - the counter may meet kernels it does not know
        note = f"not counted: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    dense = param_bytes(model)
    packed = packed_weights(model)
    biases = packed_biases(model)
    n_packed = sum(w.numel() for w in packed) + sum(b.numel() for b in biases)
    params = max(params, count_params(model) + n_packed)
    nonzero = count_nonzero(model) + sum(int(torch.count_nonzero(w.int_repr() - _zero(w))) for w in packed) + \
        sum(int(torch.count_nonzero(b)) for b in biases)
    dense += n_packed * 4  # what these weights take at fp32
    return ModelFacts(params, nonzero, dense, stored_bytes if stored_bytes is not None else dense,
                      macs, flops, accuracy, note)


def _zero(w: torch.Tensor):
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        shape = [1] * w.ndim
        shape[w.q_per_channel_axis()] = -1
        return w.q_per_channel_zero_points().reshape(shape)
    return w.q_zero_point()


def packed_biases(model: nn.Module) -> list[torch.Tensor]:
    return [b for b in packed_weights(model, "bias") if b is not None]


def packed_weights(model: nn.Module, attr: str = "weight") -> list[torch.Tensor]:
    """The quantized weight (or bias) tensors hidden in torch.ao int8 modules' packed parameters."""
    out = []
    for m in model.modules():
        w = getattr(m, attr, None)
        if callable(w) and type(m).__module__.startswith("torch.ao.nn.") and "quantized" in type(m).__module__:
            try:
                out.append(w())
            except Exception:  # noqa: BLE001 - a module whose weight() needs state we do not have
                continue
    return out


def data_for(input_shape: tuple[int, ...], name: str, *, batch_size: int = 128, seed: int = 0,
             train_limit: int | None = None, test_limit: int | None = None):
    """A DataBundle resized to the model's H x W; the model must take 1-channel images (the data is grayscale)."""
    from effml.zoo.data import load

    if len(input_shape) != 4:
        raise ConfigError(f"--data gives images (B, 1, H, W) but the model's input has shape {tuple(input_shape)}")
    if input_shape[1] != 1:
        raise ConfigError(f"--data {name} is grayscale (1 channel) but the model takes {input_shape[1]} channels; "
                          "build it with in_channels=1 (e.g. a module:callable of your own)")
    if input_shape[-1] != input_shape[-2]:
        raise ConfigError(f"--data needs square inputs, the model takes {input_shape[-2]}x{input_shape[-1]}")
    return load(name, batch_size=batch_size, seed=seed, train_limit=train_limit, test_limit=test_limit,
                image_size=input_shape[-1])


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a plain state dict (.safetensors, or a torch.save file read with weights_only=True) or an effml
    compressed checkpoint into `model`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            is_effml = "effml" in (f.metadata() or {})
        if is_effml:
            from effml.compress.io import load_compressed

            return load_compressed(path, model)
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"--weights {path} does not fit the model: {str(e).splitlines()[0]}") from None
    return model


def save_state(model: nn.Module, path: str | Path) -> Path:
    """A plain float state dict as safetensors (tied tensors stored once by safetensors' save_model)."""
    from safetensors.torch import save_model

    save_model(model, str(path))
    return Path(path)
