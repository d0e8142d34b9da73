"""One small name -> object registry, used for tasks, retrievers, evaluation methods, converters and synthetic sets.

An unknown name or a second registration under a taken name raises and lists the names that are known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from latentlab.errors import ConfigError

T = TypeVar("T")


class RegistryError(ConfigError):
    """An unknown name was looked up, or a name was registered twice."""


class Registry(Generic[T]):
    """Maps names to objects of one kind (``kind`` names that kind in error messages)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name, obj=None):
        """``REG.register("x", obj)``, or as a decorator ``@REG.register("x")``; a taken name raises."""

        def add(item: T) -> T:
            if name in self._items:
                raise RegistryError(f"{self.kind} {name!r} is registered twice (known: {', '.join(self.names())})")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str, where: str = "") -> T:
        """The object registered as ``name``; an unknown name raises, naming ``where`` (a file and key) if given."""
        if name not in self._items:
            prefix = f"{where}: " if where else ""
            raise RegistryError(f"{prefix}unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return self._items[name]

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
