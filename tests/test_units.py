"""Units: dtype bytes, FLOPs vs MACs, formatting."""

import pytest
import torch

from effml.errors import ConfigError
from effml.units import dtype_bytes, dtype_name, flops_from_macs, fmt_bytes, si


def test_dtype_bytes():
    assert dtype_bytes("fp32") == 4 and dtype_bytes(torch.bfloat16) == 2 and dtype_bytes("int4") == 0.5
    assert dtype_name(torch.float16) == "fp16" and dtype_name("half") == "fp16"
    with pytest.raises(ConfigError, match="unknown dtype 'fp13'"):
        dtype_bytes("fp13")


def test_flops_are_two_macs():
    assert flops_from_macs(105) == 210  # (3x5) @ (5x7): 105 MACs, 210 FLOPs


def test_formatting():
    assert si(14e9, "B") == "14 GB"  # the seed's 7B x fp16
    assert fmt_bytes(2**30, binary=True) == "1 GiB"
    assert si(999) == "999" and si(1.5e12, "FLOPs") == "1.5 TFLOPs"


def test_every_public_name_resolves():
    import effml

    for name in effml._EXPORTS:  # lazy exports: each must point at a real object
        assert getattr(effml, name) is not None
