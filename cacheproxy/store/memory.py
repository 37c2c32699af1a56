"""The embedded store: an LRU over cachetools, bounded by total bytes."""

from __future__ import annotations

from typing import Any

from cachetools import LRUCache

from cacheproxy.http.cache_key import variant_id
from cacheproxy.http.stored import CachedResponse
from cacheproxy.store.base import StoreStats

# Bounds the work a put does and the variants one URL can hold (Vary: User-Agent).
MAX_VARIANTS = 32


# A key's value: its one response, or a tuple of variants (Vary). One response is held
# without a tuple around it: most keys have one, and the tuple costs 48 bytes each.
Held = CachedResponse | tuple[CachedResponse, ...]


def _variants(held: Held | None) -> tuple[CachedResponse, ...]:
    if held is None:
        return ()
    return held if isinstance(held, tuple) else (held,)


def _size(held: Held) -> int:
    if isinstance(held, tuple):
        return sum(v.size for v in held)
    return held.size


class _CountingLRU(LRUCache[str, Held]):
    """Counts evictions and the responses (variants) held."""

    evictions = 0
    entries = 0

    def popitem(self) -> Any:
        key, held = super().popitem()
        self.evictions += 1
        self.entries -= len(_variants(held))
        return key, held


class MemoryStore:
    """Each key maps to a tuple of variants; the LRU's capacity is max_bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._lru = _CountingLRU(maxsize=max_bytes, getsizeof=_size)

    async def get(self, key: str) -> tuple[CachedResponse, ...]:
        return self.peek(key)

    def peek(self, key: str) -> tuple[CachedResponse, ...]:
        """get() without a coroutine: a hit answered where it was parsed (proxy/quick.py).
        It counts as a use (the LRU order), as get() does."""
        return _variants(self._lru.get(key))

    async def put(self, entry: CachedResponse) -> bool:
        """The newest variant first; older ones go when the key would pass MAX_VARIANTS or
        the store's size. A response too big for the store is refused, and then what the
        key held stays as it was."""
        return self.put_now(entry)

    def put_now(self, entry: CachedResponse) -> bool:
        """put() without a coroutine: a revalidation answered where its 304 was read
        (proxy/quick_forward.py)."""
        lru = self._lru
        if entry.size > lru.maxsize:
            return False
        old = _variants(lru.get(entry.key))
        same = variant_id(entry)
        variants = (entry, *(v for v in old if variant_id(v) != same))[:MAX_VARIANTS]
        while _size(variants) > lru.maxsize:
            variants = variants[:-1]
        if old:
            del lru[entry.key]
            lru.entries -= len(old)
        lru[entry.key] = variants[0] if len(variants) == 1 else variants
        lru.entries += len(variants)
        return True

    async def delete(self, key: str) -> bool:
        held = self._lru.pop(key, None)
        if held is None:
            return False
        self._lru.entries -= len(_variants(held))
        return True

    async def keys(self, prefix: str = "", limit: int | None = None) -> list[str]:
        found: list[str] = []
        for key in list(self._lru.keys()):
            if key.startswith(prefix):
                found.append(key)
                if limit is not None and len(found) >= limit:
                    break
        return found

    async def delete_prefix(self, prefix: str) -> int:
        doomed = await self.keys(prefix)
        for key in doomed:
            await self.delete(key)
        return len(doomed)

    async def clear(self) -> int:
        evictions = self._lru.evictions  # clear() pops items; that is not eviction
        keys = len(self._lru)
        self._lru.clear()
        self._lru.evictions, self._lru.entries = evictions, 0
        return keys

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def stats(self) -> StoreStats:
        return StoreStats(
            entries=self._lru.entries,
            bytes=int(self._lru.currsize),
            max_bytes=int(self._lru.maxsize),
            evictions=self._lru.evictions,
        )
