"""The one registry-decorator helper every registry uses."""

from effml.llm.batching import ENGINES
from effml.registries import registrar
from effml.study.variants import STEPS


def test_registrar_stores_and_returns_the_object_unchanged():
    table: dict = {}
    entry = registrar(table)

    @entry("double")
    def double(x):
        return 2 * x

    assert table == {"double": double} and double(21) == 42  # the decorated function is untouched

    @entry("double")
    def double_again(x):
        return x + x

    assert table["double"] is double_again  # a later registration replaces, like a dict assignment


def test_the_registries_built_with_it_are_filled():
    assert {"static", "continuous"} <= set(ENGINES)
    assert {"prune", "quantize", "distill"} <= set(STEPS)
