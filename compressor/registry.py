"""Registries keyed by name (methods, models, targets): duplicates are an error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from compressor.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table. ``register`` works as a decorator.

    >>> methods = Registry("method")
    >>> @methods.register("noop")
    ... def noop(): ...
    >>> methods.list()
    ['noop']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none)"
            raise UsageError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return what it named (an unknown name is a :class:`UsageError`)."""
        obj = self.get(name)
        del self._items[name]
        return obj

    def list(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
