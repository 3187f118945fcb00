"""A small name -> object registry used for models, criteria, policies and latency backends.

Entries are registered with a decorator; an entry may also be a dotted "module:attr" string that is
imported only when first used, so optional dependencies (a GPU backend) stay lazy.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
from typing import Callable, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or getattr(obj, "name", None) or obj.__name__  # type: ignore[attr-defined]
            # A lazy "module:attr" placeholder is replaced when its module registers the real entry.
            if key in self._entries and not isinstance(self._entries[key], str):
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            return obj

        return decorator

    def register_lazy(self, name: str, dotted: str) -> None:
        """Register "package.module:attr", imported on first lookup."""
        self._entries[name] = dotted

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown {self.kind} {name!r}{hint}; choose from: {', '.join(self.names())}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module_name, attr = entry.split(":")
            entry = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries
