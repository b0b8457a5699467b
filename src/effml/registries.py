"""One way to make a registry decorator: `sampler = registrar(SAMPLERS)` then `@sampler("tpe")`.

effml prefers registries to if/elif chains (samplers, engines, KV sessions, study steps, model entries);
each is a plain dict filled by a decorator made here, so every registry behaves the same way.
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def registrar(table: dict[str, T]) -> Callable[[str], Callable[[T], T]]:
    """A decorator factory that stores the decorated object in `table` under `name` and returns it unchanged
    (a later registration under the same name replaces the earlier one, as a plain dict assignment would)."""

    def register(name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            table[name] = obj
            return obj
        return wrap
    return register
