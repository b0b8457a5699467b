"""Well-known model configs as data: one JSON per model, built with transformers on meta (no hub, no weights).

    cfg = load("llama-2-7b")                       # or a path to an effml JSON or a plain HF config.json
    model = build(cfg, dtype="bf16")               # on the meta device: shapes only, built in < 0.3 s
    args, kwargs = example_inputs(cfg, seq=2048)   # model(*args, **kwargs) runs on meta

Tasks are a registry (task -> Auto class + input builder). Facts measured with transformers 5.24 on meta:
a causal-LM forward needs `use_cache=True` and no `attention_mask` (otherwise masking_utils calls `.item()`);
an encoder forward likewise takes no `attention_mask`; CNNs (ResNet, MobileNetV2) reject `attn_implementation`.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from effml.errors import ConfigError
from effml.registries import Registry
from effml.units import torch_dtype

DEFAULT_IMAGE_SIZE = 224
DEFAULT_SEED = 0


@dataclass(frozen=True)
class ModelConfig:
    """One model: its task, the transformers config kwargs, where the numbers come from, its published size."""

    name: str
    task: str
    hf_config: dict
    source: str = ""
    published_params: int | None = None
    note: str = ""  # why published_params differs from the paper's number, when it does

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"ModelConfig.name must be a non-empty string, got {self.name!r}")
        if self.task not in TASKS:
            raise ConfigError(f"ModelConfig {self.name!r}: task {self.task!r} is not one of {', '.join(TASKS)}")
        if not isinstance(self.hf_config, dict) or not isinstance(self.hf_config.get("model_type"), str):
            raise ConfigError(f"ModelConfig {self.name!r}: hf_config must be a dict with a 'model_type' string")
        p = self.published_params
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p <= 0):
            raise ConfigError(f"ModelConfig {self.name!r}: published_params must be a positive int or null, got {p!r}")
        from effml.configs.validate import validate_hf_config  # absurd sizes named here, not by transformers

        validate_hf_config(self.hf_config, f"model config {self.name!r}" + (f" ({self.source})" if self.source else ""))

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "task": self.task, "source": self.source,
             "published_params": self.published_params, "hf_config": dict(self.hf_config)}
        if self.note:
            d["note"] = self.note
        return d


# ---- tasks: Auto class name + input builder, registered by name -------------------------------------------

InputBuilder = Callable[..., tuple[tuple, dict]]


@dataclass(frozen=True)
class Task:
    auto_class: str  # the transformers Auto* class that builds this task's model from a config
    inputs: InputBuilder  # (cfg, hf, batch, seq, device, dtype, seed) -> (args, kwargs)
    default_seq: int | None  # None: the input is not a token sequence


TASKS: Registry[Task] = Registry("model task")


def task(name: str, auto_class: str, default_seq: int | None):
    """Register an input builder for a task."""

    def wrap(fn: InputBuilder) -> InputBuilder:
        TASKS.add(name, Task(auto_class, fn, default_seq))
        return fn

    return wrap


def _token_ids(hf, batch: int, seq: int, device: str, seed: int) -> torch.Tensor:
    if str(device) == "meta":
        return torch.empty(batch, seq, dtype=torch.long, device="meta")  # (B, T)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, hf.vocab_size, (batch, seq), generator=gen).to(device)  # (B, T) in [0, vocab)


@task("causal-lm", "AutoModelForCausalLM", default_seq=2048)
def _causal_lm_inputs(cfg, hf, batch, seq, device, dtype, seed):
    # use_cache=True and no attention_mask: on meta anything else makes transformers call .item()
    return (_token_ids(hf, batch, seq, device, seed),), {"use_cache": True}


@task("encoder", "AutoModel", default_seq=128)
def _encoder_inputs(cfg, hf, batch, seq, device, dtype, seed):
    # no attention_mask: on meta an all-ones mask makes sdpa_mask call .item() (transformers 5.24)
    return (_token_ids(hf, batch, seq, device, seed),), {}


@task("image-classification", "AutoModelForImageClassification", default_seq=None)
def _image_inputs(cfg, hf, batch, seq, device, dtype, seed):
    size = getattr(hf, "image_size", None) or DEFAULT_IMAGE_SIZE
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    shape = (batch, getattr(hf, "num_channels", 3), h, w)  # (B, C, H, W)
    if str(device) == "meta":
        return (torch.empty(shape, dtype=dtype, device="meta"),), {}
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen).to(device=device, dtype=dtype),), {}


# ---- loading ----------------------------------------------------------------------------------------------

def _folder():
    return resources.files(__name__)


def available() -> list[str]:
    """Sorted names of the bundled configs."""
    return sorted(p.name[: -len(".json")] for p in _folder().iterdir() if p.name.endswith(".json"))


def load(name_or_path: str) -> ModelConfig:
    """A bundled config by name; a path to an effml JSON or a plain HF config.json; a local model folder
    (config.json inside); or a hub id `org/name`, from the local HF cache, downloaded only when online."""
    from effml.configs import hub

    names = available()
    key = str(name_or_path).strip()
    if key.lower() in names:
        return _from_dict(json.loads(_folder().joinpath(f"{key.lower()}.json").read_text()), f"effml config {key!r}")
    path = Path(key).expanduser()
    if path.is_dir():
        path = hub.model_dir_config(path)
    if path.is_file():
        return _from_dict(_read_json(path), f"model config file {str(path)!r}", path)
    if hub.looks_like_hub_id(key):
        cfg = hub.hub_config_path(key)
        return replace(_from_dict(_read_json(cfg), f"hub model {key!r} ({cfg})", cfg), name=key, source=f"hub:{key}")
    if path.suffix == ".json" or "/" in key or "\\" in key:
        raise ConfigError(f"model config file {key!r} does not exist; or use a bundled name: {', '.join(names)}")
    close = difflib.get_close_matches(key.lower(), names, n=3, cutoff=0.5)
    ordered = close + [n for n in names if n not in close]
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    raise ConfigError(f"unknown model config {key!r}{hint}; available: {', '.join(ordered)} "
                      "(or give a path to a config.json, a model folder or a hub id like org/name)")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"model config file {str(path)!r} is not readable JSON: {e}") from None


def _from_dict(data: Any, what: str, path: Path | None = None) -> ModelConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must hold a JSON object, got {type(data).__name__}")
    if "hf_config" in data:  # effml format
        unknown = set(data) - {"name", "task", "source", "published_params", "hf_config", "note"}
        if unknown:
            raise ConfigError(f"{what} has unknown keys {sorted(unknown)}")
        missing = {"name", "task"} - set(data)
        if missing:
            raise ConfigError(f"{what} is missing {sorted(missing)}")
        return ModelConfig(data["name"], data["task"], dict(data["hf_config"]), data.get("source", ""),
                           data.get("published_params"), data.get("note", ""))
    if "model_type" in data:  # a plain HF config.json
        name = path.parent.name if path is not None and path.name == "config.json" and path.parent.name else \
            (path.stem if path is not None else str(data["model_type"]))
        return ModelConfig(name, infer_task(data, what), dict(data), f"file:{path}" if path else "", None)
    raise ConfigError(f"{what} is neither an effml config (no 'hf_config') nor a HF config.json (no 'model_type')")


# Architecture-name suffixes -> task; first match wins ("GPT2LMHeadModel" is checked before "Model").
ARCH_SUFFIX_TASKS: tuple[tuple[str, str], ...] = (
    ("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"),
    ("ForImageClassification", "image-classification"),
    ("ForMaskedLM", "encoder"), ("ForPreTraining", "encoder"), ("ForSequenceClassification", "encoder"),
    ("ForTokenClassification", "encoder"), ("ForQuestionAnswering", "encoder"), ("Model", "encoder"),
)


def infer_task(hf: dict, what: str = "config") -> str:
    """The task of a plain HF config: from `architectures` if present, else from its model_type."""
    for arch in hf.get("architectures") or ():
        for suffix, name in ARCH_SUFFIX_TASKS:
            if str(arch).endswith(suffix):
                return name
    from transformers.models.auto import modeling_auto as ma

    mt = hf["model_type"]
    by_type = ((ma.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, "image-classification"),
               (ma.MODEL_FOR_MASKED_LM_MAPPING_NAMES, "encoder"),  # before causal: BERT is in both
               (ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "causal-lm"))
    for mapping, name in by_type:
        if mt in mapping:
            return name
    archs = hf.get("architectures")
    raise ConfigError(f"cannot infer the task of {what} (model_type {mt!r}, architectures {archs!r}); "
                      f"effml supports {', '.join(TASKS)}: write an effml JSON with a 'task' key")


# ---- building ---------------------------------------------------------------------------------------------

def hf_config(config: ModelConfig):
    """The transformers PretrainedConfig object for config (cheap: no weights)."""
    from transformers import AutoConfig

    kw = {k: v for k, v in config.hf_config.items() if k != "model_type"}
    try:
        return AutoConfig.for_model(config.hf_config["model_type"], **kw)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"model config {config.name!r}: transformers cannot make a config from it: {e}") from None


def build(config: ModelConfig, dtype: str = "fp32", device: str | torch.device = "meta") -> nn.Module:
    """The model in eval mode, constructed directly on `device` (meta: shapes only) in `dtype`."""
    import transformers

    tdtype = torch_dtype(dtype)
    if not tdtype.is_floating_point:
        raise ConfigError(f"cannot build {config.name!r} in {dtype!r}: build in a float dtype, then quantize")
    hf = hf_config(config)
    auto = getattr(transformers, TASKS[config.task].auto_class)
    try:
        cls = auto._model_mapping[type(hf)]
    except KeyError:
        raise ConfigError(f"model config {config.name!r}: transformers has no {TASKS[config.task].auto_class} for "
                          f"model_type {config.hf_config['model_type']!r} (task {config.task!r})")
    kw = {"attn_implementation": "sdpa"} if getattr(cls, "_supports_sdpa", False) else {}  # CNNs reject it
    with torch.device(device):
        model = auto.from_config(hf, dtype=tdtype, **kw)
    return model.to(dtype=tdtype).eval()


def max_positions(config: ModelConfig, hf=None) -> int | None:
    """The longest sequence the model's position embeddings/RoPE table allow (None for images)."""
    hf = hf if hf is not None else hf_config(config)
    return getattr(hf, "max_position_embeddings", None)  # GPT-2 maps it to n_positions


def default_seq(config: ModelConfig, hf=None) -> int | None:
    """128 for encoders, 2048 for causal LMs, both capped at the model's max positions; None for images."""
    seq = TASKS[config.task].default_seq
    limit = max_positions(config, hf) if seq is not None else None
    return min(seq, limit) if seq is not None and limit else seq


def example_inputs(config: ModelConfig, batch: int = 1, seq: int | None = None, device: str | torch.device = "meta",
                   dtype: str = "fp32", seed: int = DEFAULT_SEED) -> tuple[tuple, dict]:
    """(args, kwargs) for model(*args, **kwargs): token ids (B, T) or images (B, C, H, W); seeded off meta."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    hf = hf_config(config)
    t = TASKS[config.task]
    if t.default_seq is None:
        if seq is not None:
            raise ConfigError(f"seq does not apply to {config.name!r} ({config.task}: its input is an image)")
    elif seq is None:
        seq = default_seq(config, hf)
    else:
        if isinstance(seq, bool) or not isinstance(seq, int) or seq <= 0:
            raise ConfigError(f"seq must be a positive integer, got {seq!r}")
        limit = max_positions(config, hf)
        if limit is not None and seq > limit:
            raise ConfigError(f"seq {seq} exceeds {config.name!r}'s max_position_embeddings {limit}; "
                              f"use seq <= {limit}")
    return t.inputs(config, hf, batch, seq, str(device), torch_dtype(dtype), seed)


__all__ = ["ModelConfig", "TASKS", "Task", "available", "build", "default_seq", "example_inputs", "hf_config",
           "infer_task", "load", "max_positions", "task"]
