"""The embedded store: an LRU bounded by total bytes, in one dict.

The dict's own order is the LRU order: a use moves its key to the end (pop, then set
again), and the least recently used key is first. cachetools' LRUCache keeps that order
in an OrderedDict beside its dict: 84 bytes per key where this takes 20, measured with
tracemalloc on 21,000 keys, and its hit makes two Python calls where this makes none.

Evicting from the front of a dict is where a dict is weak: the keys taken leave dead
slots there until the dict is next resized, and finding the first live key walks them
all, so evicting one key at a time would grow quadratic. Eviction therefore takes its
candidates from one walk per _FRONT keys (the oldest _FRONT, in order), and each use,
put or delete strikes its key off them, so what goes is exactly the least recently used.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from cacheproxy.http.cache_key import variant_id
from cacheproxy.http.fields import Headers
from cacheproxy.http.stored import CachedResponse
from cacheproxy.store.base import StoreStats
from cacheproxy.store.untracked import keep_untracked, untrack_container, untrack_response

# Bounds the work a put does and the variants one URL can hold (Vary: User-Agent).
MAX_VARIANTS = 32
# Keys found per walk of the dict's front for eviction: the walk also passes the dead
# slots there (at most the dict's size), so a larger run makes it rarer.
_FRONT = 1024


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
    """Each key maps to its response or a tuple of variants, least recently used first.

    The bound in bytes is kept from each response's size (CachedResponse.size), figured
    on a put or an eviction rather than held per entry. Before a put, the least recently
    used keys go until the new response fits."""

    def __init__(self, max_bytes: int) -> None:
        self._held: dict[str, Held] = {}
        # The oldest keys as last found (_evict), and those of them not used since.
        self._front: deque[str] = deque()
        self._unused: set[str] = set()
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries = 0  # the responses (variants) held
        self._evictions = 0
        keep_untracked(self)

    async def get(self, key: str, headers: Headers | None = None
                  ) -> tuple[CachedResponse, ...]:
        return self.peek(key)  # (every variant: in memory, reading costs nothing)

    def peek(self, key: str) -> tuple[CachedResponse, ...]:
        """get() without a coroutine: a hit answered where it was parsed (proxy/quick.py).
        It counts as a use (the LRU order), as get() does."""
        held_by_key = self._held
        held = held_by_key.pop(key, None)  # (not a KeyError raised: every miss looks)
        if held is None:
            return ()
        held_by_key[key] = held  # (now the most recently used)
        unused = self._unused
        if unused:  # (empty until the store first evicts)
            unused.discard(key)
        return held if isinstance(held, tuple) else (held,)

    async def put(self, entry: CachedResponse) -> bool:
        """The newest variant first; older ones go when the key would pass MAX_VARIANTS or
        the store's size. A response too big for the store is refused, and then what the
        key held stays as it was."""
        return self.put_now(entry)

    def touch_held(self, entry: CachedResponse) -> bool:
        """Whether the key holds entry alone (by identity): then marked recently used, as
        peek and put_now of it would (a 304 that changed nothing validating the very
        response read at lookup, proxy/driver.py validated_now). False: nothing done."""
        held_by_key, key = self._held, entry.key
        if held_by_key.get(key) is not entry:
            return False
        del held_by_key[key]  # (set again below: now the most recently used)
        self._unused.discard(key)
        held_by_key[key] = entry
        return True

    def put_now(self, entry: CachedResponse) -> bool:
        """put() without a coroutine: a revalidation answered where its 304 was read
        (proxy/quick_forward.py)."""
        held_by_key, key = self._held, entry.key
        held = held_by_key.get(key)
        if held is entry:  # a 304 that changed nothing (stored.refreshed): recently used
            del held_by_key[key]
            self._unused.discard(key)
            held_by_key[key] = entry
            return True
        if type(held) is CachedResponse and entry.sized_as(held):
            # The common revalidation: a 304 that changed no field refreshed the one
            # response the key holds (stored.refreshed). The same variant and the same
            # size as the response held (within max_bytes, as the bytes counted are: none
            # to evict, no size to figure), its directives untracked already.
            del held_by_key[key]  # (set again below: now the most recently used)
            self._unused.discard(key)
            untrack_response(entry, directives=False)
            held_by_key[key] = entry
            return True
        max_bytes = self._max_bytes
        size = entry.size  # (figured when asked: once here)
        if size > max_bytes:
            return False
        held = held_by_key.pop(key, None)
        variants: tuple[CachedResponse, ...] = (entry,)
        if held is not None:
            self._count_out(held)
            same = entry.variant  # (its variant_id, read without a call: every put)
            if isinstance(held, tuple) or held.variant != same:
                every = (entry, *(v for v in _variants(held) if variant_id(v) != same))
                variants = every[:MAX_VARIANTS]
                # (the oldest past the bound are evicted too: entries + evictions add up)
                self._evictions += len(every) - len(variants)
                size = _size(variants)
                while size > max_bytes:  # (its own older variants make room: evicted)
                    variants = variants[:-1]
                    size = _size(variants)
                    self._evictions += 1
        self._unused.discard(key)
        while self._bytes + size > max_bytes:  # (what is left is older than the put)
            self._evictions += self._count_out(self._evict())
        # Never in a cycle: the collector need not walk them (store/untracked.py). The
        # older variants kept are untracked already.
        untrack_response(entry)
        if len(variants) == 1:
            held_by_key[key] = entry
        else:
            untrack_container(variants)
            held_by_key[key] = variants
        self._bytes += size
        self._entries += len(variants)
        return True

    def resize(self, max_bytes: int) -> int:
        """A reload's cache.max_bytes, at once (nginx's cache manager trims to a new
        max_size, Squid applies a new cache_mem): lowered, the least recently used keys go
        until what is held fits, counted as evictions; raised, there is room for more.
        How many keys went."""
        self._max_bytes = max_bytes
        gone = 0
        while self._bytes > max_bytes:  # (bytes held: a key is held)
            self._evictions += self._count_out(self._evict())
            gone += 1
        return gone

    def _evict(self) -> Held:
        """Takes the least recently used key's value out: the first of the oldest keys
        found not used since (there is one: the caller still counts bytes held)."""
        front, unused = self._front, self._unused
        while True:
            if not front:
                front.extend(islice(self._held, _FRONT))
                unused.update(front)
            key = front.popleft()
            if key in unused:
                unused.remove(key)
                return self._held.pop(key)

    def _count_out(self, held: Held) -> int:
        """held no longer counted; how many responses (variants) it was: evictions
        count responses, as entries do (Varnish's n_lru_nuked counts objects)."""
        self._bytes -= _size(held)
        gone = len(_variants(held))
        self._entries -= gone
        return gone

    async def delete(self, key: str) -> bool:
        return self.forget(key)

    def forget(self, key: str) -> bool:
        """delete() without a coroutine (a sibling worker's purge: store/siblings.py)."""
        held = self._held.pop(key, None)
        if held is None:
            return False
        self._unused.discard(key)
        self._count_out(held)
        return True

    async def keys(self, prefix: str = "", limit: int | None = None) -> list[str]:
        return self.keys_now(prefix, limit)

    def keys_now(self, prefix: str = "", limit: int | None = None) -> list[str]:
        found: list[str] = []
        if limit is not None and limit <= 0:  # as RedisStore: none (entries?limit=0)
            return found
        for key in list(self._held):
            if key.startswith(prefix):
                found.append(key)
                if limit is not None and len(found) >= limit:
                    break
        return found

    async def delete_prefix(self, prefix: str) -> int:
        return self.forget_prefix(prefix)

    def forget_prefix(self, prefix: str) -> int:
        doomed = self.keys_now(prefix)
        for key in doomed:
            self.forget(key)
        return len(doomed)

    async def clear(self) -> int:
        return self.forget_all()

    def forget_all(self) -> int:
        keys = len(self._held)
        self._held.clear()  # (not evictions)
        self._front.clear()
        self._unused.clear()
        self._bytes = self._entries = 0
        return keys

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def stats(self) -> StoreStats:
        return StoreStats(entries=self._entries, bytes=self._bytes,
                          max_bytes=self._max_bytes, evictions=self._evictions)
