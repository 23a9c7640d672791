"""A small thread-safe least-recently-used map (the engine's in-memory caches use it)."""
from __future__ import annotations

import collections
import threading
from typing import Callable, Generic, Hashable, TypeVar

from .errors import InputError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
_MISSING = object()


class LRU(Generic[K, V]):
    """At most ``maxsize`` entries; reading or writing an entry makes it the most recent, and the least recent
    one goes when the map is full. Every method is atomic (one lock); ``get_or_make`` runs ``make`` *outside* the
    lock, so a slow computation never blocks readers of other keys (two threads may both compute a missing value;
    the first one stored wins and both get it)."""

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise InputError(f"maxsize: {maxsize!r} must be >= 1")
        self.maxsize = maxsize
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, default=None):
        with self._lock:
            if key not in self._data:
                return default
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: K, value: V) -> V:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return value

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        hit = self.get(key, _MISSING)
        if hit is not _MISSING:
            return hit
        value = make()
        with self._lock:
            if key in self._data:  # another thread stored it meanwhile: keep one value
                self._data.move_to_end(key)
                return self._data[key]
        return self.put(key, value)

    def pop(self, key: K, default=None):
        with self._lock:
            return self._data.pop(key, default)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def keys(self) -> list:
        with self._lock:
            return list(self._data)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
