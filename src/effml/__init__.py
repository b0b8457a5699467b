"""effml: what a model costs on a target, whether that prediction is true, and how to make it cheaper.

The public API is imported lazily so that `effml --help` and small commands stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute"
_EXPORTS = {
    "profile": "effml.cost.counter:profile",
    "Profile": "effml.cost.profile:Profile",
    "Stats": "effml.cost.profile:Stats",
    "predict": "effml.hardware.predict:predict",
    "Prediction": "effml.hardware.predict:Prediction",
    "get_device": "effml.hardware.catalog:get_device",
    "measure": "effml.measure.timing:measure",
    "Measurement": "effml.measure.timing:Measurement",
    "prune": "effml.compress.prune:prune",
    "quantize": "effml.compress.quantize:quantize",
    **{c: f"effml.compress.configs:{c}" for c in (
        "FinePrune", "ChannelPrune", "NMPrune", "LinearQuantConfig", "KMeansConfig", "DynamicInt8Config",
        "StaticInt8Config", "WeightOnlyConfig", "config_from_dict")},
    "distill": "effml.compress.distill:distill",
    "DistillConfig": "effml.compress.distill:DistillConfig",
    "sensitivity": "effml.compress.sensitivity:sensitivity",
    "deep_compress": "effml.compress.deep_compression:deep_compress",
    "train_memory": "effml.train.memory:train_memory",
    "TrainConfig": "effml.train.config:TrainConfig",
    "pareto": "effml.study.pareto:pareto",
    "run_study": "effml.study.pipeline:run_study",
    "StudyConfig": "effml.study.pipeline:StudyConfig",
    "EffmlError": "effml.errors:EffmlError",
}


def __getattr__(name: str) -> Any:
    if name == "study":  # the package effml.study, callable: effml.study(model, evaluate, example_inputs=...)
        return importlib.import_module("effml.study")
    try:
        target = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'effml' has no attribute {name!r}") from None
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS) + ["study"])
