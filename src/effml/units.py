"""Units defined once: FLOPs vs MACs, dtype -> bytes, SI and binary formatting.

A MAC is one multiply-accumulate. For matmul and convolution FLOPs = 2 x MACs (the seed's 2mnp for an
(m x n) @ (n x p) product). GB = 1e9 bytes, GiB = 2**30 bytes; every printed size says which.
"""

from __future__ import annotations

import torch

from effml.errors import ConfigError

FLOPS_PER_MAC = 2

# Bytes per element of the dtype names effml accepts (weights and compute). int4 packs two per byte.
DTYPE_BYTES: dict[str, float] = {
    "fp64": 8,
    "fp32": 4,
    "tf32": 4,
    "bf16": 2,
    "fp16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
}

# The dtypes a weight-memory table shows (the seed's list).
MEMORY_DTYPES = ("fp32", "bf16", "fp16", "int8", "int4")

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp64": torch.float64,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "int8": torch.int8,
}
_ALIASES = {
    "float64": "fp64", "double": "fp64", "float32": "fp32", "float": "fp32", "bfloat16": "bf16",
    "float16": "fp16", "half": "fp16", "qint8": "int8", "uint8": "int8", "quint4x2": "int4",
}


def dtype_name(dtype: str | torch.dtype) -> str:
    """Canonical short name ('fp32', 'bf16', ...) of a dtype given as a string or a torch.dtype."""
    if isinstance(dtype, torch.dtype):
        key = str(dtype).removeprefix("torch.")
    else:
        key = str(dtype).lower()
    key = _ALIASES.get(key, key)
    if key not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_BYTES)}")
    return key


def dtype_bytes(dtype: str | torch.dtype) -> float:
    """Bytes per element (0.5 for int4)."""
    return DTYPE_BYTES[dtype_name(dtype)]


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch.dtype a model can be cast to for a dtype name (fp32, bf16, fp16, fp64, int8)."""
    name = dtype_name(dtype)
    if name not in _TORCH_DTYPES:
        raise ConfigError(f"dtype {name!r} has no torch tensor type to run a model in")
    return _TORCH_DTYPES[name]


def flops_from_macs(macs: int) -> int:
    return FLOPS_PER_MAC * macs


_SI = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
_BIN = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def si(x: float, unit: str = "", digits: int = 3) -> str:
    """1.23e9 -> '1.23 G' + unit. Exact integers below 1000 print as themselves."""
    if x is None:
        return "n/a"
    for scale, prefix in _SI:
        if abs(x) >= scale:
            return f"{x / scale:.{digits}g} {prefix}{unit}".rstrip()
    if float(x).is_integer():
        return f"{int(x)} {unit}".rstrip()
    return f"{x:.{digits}g} {unit}".rstrip()


def fmt_bytes(n: float, binary: bool = False) -> str:
    """Bytes with the unit spelled out: GB = 1e9 (default) or GiB = 2**30 (binary=True)."""
    if binary:
        for scale, unit in _BIN:
            if abs(n) >= scale:
                return f"{n / scale:.3g} {unit}"
        return f"{n:.0f} B"
    return si(n, "B")
