"""The one registry mechanism of effml: `REG = Registry("sampler")`, then `@REG.register("tpe")`.

effml prefers registries to if/elif chains (compression methods, pruning kinds and criteria, samplers, engines,
KV sessions, study steps and plans, model entries, optimizers, scaling laws, microbenchmarks). Every registry is
one of these, so every registry behaves the same way:

- registering a name twice is an error (two modules claiming one name is a bug, never a silent replacement);
- looking up an unknown name raises `ConfigError` naming the registry, listing every known name and, for a
  string close to a known one, suggesting it ("did you mean 'bf16-mixed'?");
- it reads like a mapping: `name in REG`, `REG[name]`, `len(REG)`, iteration in registration order,
  `REG.names()`, `REG.items()`.

Keys are usually strings; a registry keyed by types (a config class -> its handler) works the same way, and
`REG.get_for(obj)` looks up `type(obj)` and then its bases.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Hashable, Iterator, TypeVar

from effml.errors import ConfigError

T = TypeVar("T")


def _label(key: Hashable) -> str:
    return key.__name__ if isinstance(key, type) else repr(key)


class Registry(Generic[T]):
    """A named table filled by a decorator (or `add`); duplicates refused, unknown keys named."""

    def __init__(self, what: str):
        self.what = what  # e.g. "prune kind": used in every error message
        self._items: dict[Hashable, T] = {}

    # -- filling -------------------------------------------------------------------------------------------
    def add(self, key: Hashable, obj: T) -> T:
        if key in self._items:
            raise ValueError(f"{self.what} {_label(key)} is registered twice")
        self._items[key] = obj
        return obj

    def register(self, key: Hashable) -> Callable[[T], T]:
        """Decorator: `@REG.register("name")` stores the decorated object under `key` and returns it unchanged."""

        def wrap(obj: T) -> T:
            return self.add(key, obj)

        return wrap

    # -- reading -------------------------------------------------------------------------------------------
    def get(self, key: Hashable) -> T:
        try:
            return self._items[key]
        except (KeyError, TypeError):
            known = ", ".join(_label(k) if isinstance(k, type) else str(k) for k in self._items) or "(none)"
            names = [k for k in self._items if isinstance(k, str)]
            close = difflib.get_close_matches(key, names, n=2) if isinstance(key, str) else []
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise ConfigError(f"unknown {self.what} {_label(key)}; expected one of {known}{hint}") from None

    def get_for(self, obj: object) -> T:
        """The entry registered for `type(obj)` or the nearest base class (type-keyed registries)."""
        for cls in type(obj).__mro__:
            if cls in self._items:
                return self._items[cls]
        return self.get(type(obj))  # raises, naming the known types

    __getitem__ = get

    def names(self) -> list:
        return list(self._items)

    def items(self):
        return self._items.items()

    def values(self):
        return self._items.values()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {len(self._items)} entries)"
