"""The embedded store: an LRU over cachetools, bounded by total bytes."""

from __future__ import annotations

import math

from cachetools import LRUCache

from cacheproxy.http.cache_key import variant_id
from cacheproxy.http.stored import CachedResponse
from cacheproxy.store.base import StoreStats
from cacheproxy.store.untracked import untrack_container, untrack_response

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


class MemoryStore:
    """Each key maps to its response or a tuple of variants, in cachetools' LRU order.

    The bound in bytes is kept here, from each response's size (CachedResponse.size),
    rather than by cachetools' getsizeof: with getsizeof, cachetools keeps a map of every
    key's size beside its data; with the size each entry held as an int, that cost some
    65 bytes per entry of a store of 1 KiB responses (README, Benchmarks). Evicting is the
    same: the least recently used keys go, before a put, until the new response fits."""

    def __init__(self, max_bytes: int) -> None:
        self._lru: LRUCache[str, Held] = LRUCache(maxsize=math.inf)  # (counts keys)
        # cachetools' dict of what it holds (its LRU order, an OrderedDict, stays tracked
        # and is frozen with the rest at start, server.py): see store/untracked.py.
        self._held: dict[str, object] | None = getattr(self._lru, "_Cache__data", None)
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries = 0  # the responses (variants) held
        self._evictions = 0

    async def get(self, key: str) -> tuple[CachedResponse, ...]:
        return self.peek(key)

    def peek(self, key: str) -> tuple[CachedResponse, ...]:
        """get() without a coroutine: a hit answered where it was parsed (proxy/quick.py).
        It counts as a use (the LRU order), as get() does."""
        try:  # (indexing: two of cachetools' Python calls on a hit where get() makes four)
            held = self._lru[key]
        except KeyError:
            return ()
        return held if isinstance(held, tuple) else (held,)

    async def put(self, entry: CachedResponse) -> bool:
        """The newest variant first; older ones go when the key would pass MAX_VARIANTS or
        the store's size. A response too big for the store is refused, and then what the
        key held stays as it was."""
        return self.put_now(entry)

    def put_now(self, entry: CachedResponse) -> bool:
        """put() without a coroutine: a revalidation answered where its 304 was read
        (proxy/quick_forward.py)."""
        max_bytes = self._max_bytes
        size = entry.size  # (figured when asked: once here)
        if size > max_bytes:
            return False
        lru, key = self._lru, entry.key
        held = lru.pop(key, None)
        variants: tuple[CachedResponse, ...] = (entry,)
        if held is not None:
            self._count_out(held)
            same = variant_id(entry)
            if isinstance(held, tuple) or variant_id(held) != same:
                variants = (entry, *(v for v in _variants(held)
                                     if variant_id(v) != same))[:MAX_VARIANTS]
                size = _size(variants)
                while size > max_bytes:
                    variants = variants[:-1]
                    size = _size(variants)
        while self._bytes + size > max_bytes:  # (what is left is older than the put)
            _, held = lru.popitem()
            self._count_out(held)
            self._evictions += 1
        # Never in a cycle: the collector need not walk them (store/untracked.py). The
        # older variants kept are untracked already.
        untrack_response(entry)
        if len(variants) == 1:
            lru[key] = entry
        else:
            untrack_container(variants)
            lru[key] = variants
        if self._held is not None:
            untrack_container(self._held)
        self._bytes += size
        self._entries += len(variants)
        return True

    def _count_out(self, held: Held) -> None:
        self._bytes -= _size(held)
        self._entries -= len(_variants(held))

    async def delete(self, key: str) -> bool:
        held = self._lru.pop(key, None)
        if held is None:
            return False
        self._count_out(held)
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
        keys = len(self._lru)
        self._lru.clear()  # (not evictions)
        self._bytes = self._entries = 0
        return keys

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def stats(self) -> StoreStats:
        return StoreStats(entries=self._entries, bytes=self._bytes,
                          max_bytes=self._max_bytes, evictions=self._evictions)
