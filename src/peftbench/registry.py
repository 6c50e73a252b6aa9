"""A small generic registry: explicit registration, duplicates rejected, did-you-mean errors.

Methods and tasks are registered by name; an unknown name must tell the user what exists, since
a typo in a 945-run grid should fail before anything trains.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

from peftbench.errors import PeftbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → item mapping that is safe to populate from import-time registration calls."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lock = threading.Lock()

    def register(self, name: str, item: T) -> T:
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")
        with self._lock:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise PeftbenchError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(sorted(self._items))}"

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)
