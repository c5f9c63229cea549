"""Registries keyed by name (methods, models, targets): duplicates are an error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from compressor.errors import UsageError

T = TypeVar("T")


def did_you_mean(name: object, valid: object) -> str:
    """``" (did you mean 'eagleeye'?)"`` for a near miss among ``valid`` names, else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)  # type: ignore[attr-defined]
    return f" (did you mean {close[0]!r}?)" if close else ""


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
            raise UsageError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}; valid: {valid}"
            ) from None

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return what it named (an unknown name is a :class:`UsageError`)."""
        obj = self.get(name)
        del self._items[name]
        return obj

    def list(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
