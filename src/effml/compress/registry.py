"""Named registries: each technique kind is a decorated function keyed by name (no if/elif chains)."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from effml.errors import ConfigError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """`@REG.register("name")` adds a function; `REG.get("name")` returns it or names every known key."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def wrap(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._items[name] = fn
            return fn

        return wrap

    def get(self, name: str) -> F:
        if name not in self._items:
            raise ConfigError(f"unknown {self.what} {name!r}; expected one of {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
