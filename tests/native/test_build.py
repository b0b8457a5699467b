"""The kernels build wherever their tools are. Every other native test skips when `native.load()` gives None (no
compiler, a non-x86 machine), so a source that stops compiling must fail here instead of skipping them all."""

import os
import platform
import shutil

import pytest

from effml import native


def test_the_kernels_build_where_a_compiler_and_ninja_are_present():
    if os.environ.get("EFFML_NATIVE_KERNELS", "1") == "0" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"native kernels not wanted or not written for this machine: {native.status()}")
    if shutil.which(os.environ.get("CXX", "c++")) is None or not native._find_ninja():
        pytest.skip("no C++ compiler or no ninja here: the kernels are optional, torch's run")
    assert native.load() is not None, native.status()
    assert "could not be built" not in native.status()
