"""A bounded, thread-safe LRU cache of encoder feature maps, sized in megabytes.

Encoding an image is almost all of a comparison's cost, while the head is cheap, so a
gallery searched twice or an image met in several pairs is encoded once. Keys hash the
image's encoded bytes together with a model fingerprint, so two models (or two precisions
of one model) never share entries even when they share a cache.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch

__all__ = ["EmbeddingCache", "content_key", "tensor_nbytes"]


def content_key(namespace: str, data: bytes | memoryview) -> str:
    """The cache key of one image: the model namespace and a BLAKE2b digest of its bytes."""
    return f"{namespace}:{hashlib.blake2b(data, digest_size=20).hexdigest()}"


def tensor_nbytes(t: torch.Tensor) -> int:
    """Bytes held by a tensor's elements."""
    return t.numel() * t.element_size()


class EmbeddingCache:
    """LRU map from image key to feature map, evicting the least recently used past ``max_mb``.

    Stored tensors are detached and never handed out for writing: :meth:`get` returns the
    stored tensor, which callers only read (stack/cat copy it).

    Args:
        max_mb: capacity in megabytes (MiB); 0 disables caching.
    """

    def __init__(self, max_mb: float = 256) -> None:
        if max_mb < 0:
            raise ValueError(f"cache size must be >= 0 MB, got {max_mb}")
        self.max_bytes = int(max_mb * 1024 * 1024)
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        """The stored feature map for ``key`` (marking it recently used), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: torch.Tensor) -> None:
        """Store a feature map; one larger than the whole cache is not stored."""
        size = tensor_nbytes(value)
        if size > self.max_bytes:
            return
        value = value.detach()
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= tensor_nbytes(old)
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= tensor_nbytes(evicted)

    def clear(self) -> None:
        """Drop every entry and reset the hit counters."""
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        """Bytes currently held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items
