"""Shared by the tiny-model LLM tests: one randomly initialised tiny decoder per test module."""

import pytest

from effml.llm.model import build


@pytest.fixture(scope="module")
def model():
    """The `tiny` preset with std-0.3 weights (confident, varied logits; deterministic: build seeds itself)."""
    return build("tiny", std=0.3)
