"""One small registry per concept (datasets, models, pruning strategies, rewind modes, schedules).

Every registry is a ``Registry``: ``register(name)`` as a decorator (or called with an entry),
``get(name)`` raising one ``GradscopeError`` that lists the known names, ``names()`` sorted.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, Optional, TypeVar

from gradscope import GradscopeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry, with per-entry metadata (e.g. a model's minimum image side)."""

    def __init__(self, kind: str, flag: Optional[str] = None):
        self.kind = kind  # "model", "dataset", ... used in error messages
        self.flag = flag  # the CLI flag that takes these names, e.g. "--model"
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._hints: dict[str, str] = {}

    def register(self, name: str, entry: Optional[T] = None, **meta: Any) -> Callable[[T], T] | T:
        """``@reg.register("name", key=value)`` or ``reg.register("name", entry)``."""
        def add(e: T) -> T:
            self._entries[name] = e
            self._meta[name] = dict(meta)
            return e
        return add if entry is None else add(entry)

    def hint(self, name: str, text: str) -> None:
        """A name that is not registered (yet) gets ``text`` appended to its unknown-name error."""
        self._hints[name] = text

    def key(self, name: str) -> str:
        """The registered name for ``name`` (case and surrounding spaces ignored), or an error."""
        if not isinstance(name, str):
            raise GradscopeError(f"{self.kind} name must be a string, got {name!r}")
        if name in self._entries:
            return name
        k = name.strip().lower()
        for n in self._entries:
            if n.lower() == k:
                return n
        notes = [n for n in (self.flag, self._hints.get(name)) if n]
        hint = f" ({'; '.join(notes)})" if notes else ""
        raise GradscopeError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}")

    def get(self, name: str) -> T:
        return self._entries[self.key(name)]

    def meta(self, name: str) -> dict[str, Any]:
        return self._meta[self.key(name)]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
