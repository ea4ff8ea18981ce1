"""Bounded, thread-safe LRU caches: encoder feature maps sized in megabytes, and small result maps.

Encoding an image is almost all of a comparison's cost, while the head is cheap, so a
gallery searched twice or an image met in several pairs is encoded once. Keys hash the
image's encoded bytes together with a model fingerprint, so two models (or two precisions
of one model) never share entries even when they share a cache.

The same :class:`LruCache` also keeps the app's per-session results, counted by entries.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    import torch

__all__ = ["EmbeddingCache", "LruCache", "content_key", "tensor_nbytes"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def content_key(namespace: str, data: bytes | memoryview) -> str:
    """The cache key of one image: the model namespace and a BLAKE2b digest of its bytes."""
    return f"{namespace}:{hashlib.blake2b(data, digest_size=20).hexdigest()}"


def tensor_nbytes(t: torch.Tensor) -> int:
    """Bytes held by a tensor's elements."""
    return t.numel() * t.element_size()


def _one(value: object) -> int:
    return 1


class LruCache(Generic[K, V]):
    """A least-recently-used map whose entries' weights add up to at most ``capacity``.

    Args:
        capacity: the most total weight kept; 0 keeps nothing.
        weigh: an entry's weight (default 1: ``capacity`` counts entries). An entry heavier
            than the whole capacity is not stored.
    """

    def __init__(self, capacity: int, weigh: Callable[[V], int] = _one) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._weigh = weigh
        self._items: OrderedDict[K, V] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        """The stored value for ``key`` (marking it recently used), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: K, value: V) -> V:
        """Store ``value`` as the most recently used, evicting the least recent; returns it."""
        size = self._weigh(value)
        if size > self.capacity:
            return value
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._weight -= self._weigh(old)
            self._items[key] = value
            self._weight += size
            while self._weight > self.capacity:
                _, evicted = self._items.popitem(last=False)
                self._weight -= self._weigh(evicted)
        return value

    def clear(self) -> None:
        """Drop every entry and reset the hit counters."""
        with self._lock:
            self._items.clear()
            self._weight = 0
            self.hits = self.misses = 0

    def keys(self) -> list[K]:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._items)

    @property
    def weight(self) -> int:
        """Total weight currently held."""
        return self._weight

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items


class EmbeddingCache(LruCache[str, "torch.Tensor"]):
    """LRU map from image key to feature map, evicting the least recently used past ``max_mb``.

    Stored tensors are detached and never handed out for writing: :meth:`get` returns the
    stored tensor, which callers only read (stack/cat copy it).

    Args:
        max_mb: capacity in megabytes (MiB); 0 disables caching.
    """

    def __init__(self, max_mb: float = 256) -> None:
        if max_mb < 0:
            raise ValueError(f"cache size must be >= 0 MB, got {max_mb}")
        super().__init__(int(max_mb * 1024 * 1024), tensor_nbytes)

    @property
    def max_bytes(self) -> int:
        """Capacity in bytes."""
        return self.capacity

    def put(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """Store a feature map (detached); one larger than the whole cache is not stored."""
        return super().put(key, value.detach())

    @property
    def nbytes(self) -> int:
        """Bytes currently held."""
        return self.weight
