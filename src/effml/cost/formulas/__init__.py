"""Importing this package registers every formula (see effml.cost.registry.FORMULAS)."""

from effml.cost.formulas import linalg, memory, pointwise, quantized  # noqa: F401
