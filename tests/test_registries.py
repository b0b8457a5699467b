"""The one registry mechanism: duplicates refused, unknown names listed, type-keyed lookup through bases."""

import pytest

from effml.errors import ConfigError
from effml.llm.batching import ENGINES
from effml.registries import Registry
from effml.study.variants import STEPS


def test_register_stores_and_returns_the_object_unchanged():
    reg: Registry = Registry("thing")

    @reg.register("double")
    def double(x):
        return 2 * x

    assert reg.get("double") is double and reg["double"](21) == 42  # 2 x 21
    assert "double" in reg and len(reg) == 1 and reg.names() == ["double"]


def test_a_name_registered_twice_is_refused():
    reg: Registry = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        reg.add("a", 2)
    assert reg["a"] == 1  # the first registration survives


def test_unknown_name_lists_every_known_name():
    reg: Registry = Registry("prune kind")
    reg.add("fine", 1)
    reg.add("channel", 2)
    with pytest.raises(ConfigError, match=r"unknown prune kind 'nm'; expected one of fine, channel$"):
        reg.get("nm")
    # a near miss is suggested after the list
    with pytest.raises(ConfigError, match=r"unknown prune kind 'chanel'; expected one of fine, channel "
                                          r"\(did you mean 'channel'\?\)$"):
        reg.get("chanel")


def test_type_keyed_lookup_walks_the_bases():
    class Base: ...
    class Child(Base): ...
    reg: Registry = Registry("config handler")
    reg.add(Base, "base-handler")
    assert reg.get_for(Child()) == "base-handler"
    with pytest.raises(ConfigError, match="unknown config handler int"):
        reg.get_for(3)


def test_every_library_registry_is_filled():
    assert {"static", "continuous"} <= set(ENGINES)
    assert {"prune", "quantize", "distill"} <= set(STEPS)
