"""Registries: the one list of names for every extension point.

Each extension point (balancing strategies, model builders, dataset layouts, augmentation ops,
metrics) has one :class:`Registry`. Implementations register themselves with a decorator in
the module that implements them; the config validates names against the registry (no second
list of names anywhere), and an unknown name is answered with "did you mean …" and the
available names, in the spirit of MONAI's ``look_up_option``.

A registry knows which module fills it, and imports that module on first look-up, so
``medml.config`` can validate names without importing the implementations at import time.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from medml.errors import ConfigError

T = TypeVar("T")


def look_up_option(name: str, options: Iterable[str], *, kind: str) -> str:
    """Return ``name`` if it is one of ``options``; else raise a "did you mean" error.

    Args:
        name: the name asked for.
        options: the known names.
        kind: what a name is (``"balancing strategy"``), for the message.

    Raises:
        ConfigError: ``name`` is not known; the message suggests close matches and lists all.
    """
    known = list(options)
    if name in known:
        return name
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ConfigError(f"unknown {kind} {name!r}; {hint}available: {', '.join(known)}")


class Registry(Generic[T]):
    """Named implementations of one extension point.

    Args:
        kind: what is registered (used in messages), e.g. ``"model"``.
        module: the module whose import registers the implementations.
    """

    def __init__(self, kind: str, module: str) -> None:
        self.kind = kind
        self.module = module
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated function or class under ``name``.

        Raises:
            ValueError: ``name`` is already registered (two implementations, one name).
        """

        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def _loaded(self) -> dict[str, T]:
        if not self._items:
            importlib.import_module(self.module)
        return self._items

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._loaded())

    def get(self, name: str) -> T:
        """The implementation registered as ``name``.

        Raises:
            ConfigError: unknown name ("did you mean …? available: …").
        """
        return self._loaded()[look_up_option(name, self._loaded(), kind=self.kind)]

    def check(self, name: str) -> str:
        """``name`` if registered (a pydantic validator); else a "did you mean" error."""
        return look_up_option(name, self._loaded(), kind=self.kind)

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._loaded())


# The extension points. Each registry is filled by the module named here, with decorators.
BALANCERS: Registry = Registry("balancing strategy", "medml.balance")
MODELS: Registry = Registry("model", "medml.models")
LAYOUTS: Registry = Registry("layout", "medml.data.layouts")
AUGMENT_OPS: Registry = Registry("augmentation op", "medml.augment")
METRICS: Registry = Registry("metric", "medml.metrics")
