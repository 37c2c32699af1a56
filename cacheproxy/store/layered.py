"""A memory layer in front of Redis: hot entries answered without a round trip.

The staleness bound: the front answers from its own copy only within `ttl` seconds
(memory_layer_ttl) of fetching it from Redis or writing it there. So a replica may serve
a copy up to ttl seconds older than Redis's (when another replica stored a newer one).
Purges go to Redis, which publishes them on `{prefix}purge`; every replica's subscriber
drops those keys from its front at once. A lost message (subscriber reconnecting, a
purge racing a fill) still takes effect within ttl, and the front is cleared when the
subscriber reconnects after an outage, since purges may have been missed.

What another replica forgot (an invalidation by an unsafe method, a purge) is also told to
`heard`, which the proxy sets: a fill under way here, sent before it, is then not stored
(RFC 9111 §4.4; proxy/invalidations.py), as its own invalidations already kept it from
storing. This replica's own messages come back on the channel too; they are not told
again (the answer to a POST stored after its own invalidation would be refused).

With memory_layer_bytes or memory_layer_ttl at 0 there is no front (a ttl of 0: nothing is
held or read there), but the purge channel is still listened to, for `heard`.

With Redis down the front goes on answering, but only within ttl of its last exchange
with Redis (the bound holds), and it takes nothing new: requests go to the origin
until Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from cachetools import TTLCache

from cacheproxy.http.fields import Headers
from cacheproxy.http.stored import CachedResponse
from cacheproxy.store.base import StoreStats
from cacheproxy.store.memory import MemoryStore
from cacheproxy.store.redis import RedisStore

log = logging.getLogger("cacheproxy.store")
_LISTEN_WAIT = 1.0  # seconds per wait for a purge message (then wait again)
# Own deletes whose message is awaited, at most (and so many characters of keys: a client
# chooses a key's length); beyond, all count as another's.
_MAX_OWN, _MAX_OWN_CHARS = 10_000, 2 * 1024 * 1024

# What a replica forgot: a key, or a prefix (key None), or everything (both None).
Heard = Callable[[str | None, str | None], None]

# What a key listed in LayeredStore._synced costs beyond its characters: the string's
# header, the cache's slots and its expiry link.
_SYNCED_OVERHEAD = 300


def _weight(size: int) -> int:
    return size


class LayeredStore:
    """front answers within ttl of its last exchange with back; back is the shared truth."""

    def __init__(self, front: MemoryStore, back: RedisStore, ttl: float) -> None:
        self.front, self.back, self.ttl = front, back, ttl
        # Keys whose front copy is in step with Redis; each expires ttl seconds after the
        # exchange. A key the front evicted may stay listed (the front then has nothing),
        # so the index is bounded by the front's bytes too, by its keys' lengths (a client
        # chooses them, up to 16 KiB): bounded by their number alone (max_bytes / 240), it
        # held GBs of keys beside a 32 MiB layer. The least recently synced go first.
        self._synced: TTLCache[str, int] = TTLCache(
            maxsize=max(1, front.stats().max_bytes), ttl=ttl, getsizeof=_weight)
        # Bumped by every purge: a fill that saw it change may hold what was purged.
        self._generation = 0
        self._first_try = asyncio.Event()  # set once the first subscription attempt ends
        self._listener: asyncio.Task[None] | None = None
        self.heard: Heard | None = None  # (set by the proxy: what other replicas forgot)
        # Keys this replica deleted whose message has not come back yet (how many times):
        # a message for one of them is its own. Forgotten with the subscription (a lost
        # message), or past _MAX_OWN: a message of its own then told as another's costs
        # at most one answer not stored.
        self._own: dict[str, int] = {}
        self._own_chars = 0
        # Keys read from Redis now -> [reads under way, puts of the key ended meanwhile]: a
        # read that a put ended during may hold what the put replaced (and not its new
        # variant), so it does not fill the front. Only keys being read are held.
        self._reading: dict[str, list[int]] = {}

    @property
    def available(self) -> bool:
        return self.back.available

    async def ping(self) -> bool:
        return await self.back.ping()

    async def get(self, key: str, headers: Headers | None = None
                  ) -> tuple[CachedResponse, ...]:
        """Every variant, headers or not: the front's copy of a key stands for all of it,
        so it is filled from a whole read of Redis."""
        if self.ttl <= 0:  # no layer: Redis's own read, of the variant headers select
            return await self.back.get(key, headers)
        if key in self._synced:
            variants = await self.front.get(key)
            if variants:
                return variants
        generation = self._generation
        reading = self._reading.get(key)
        if reading is None:
            reading = self._reading[key] = [0, 0]
        reading[0] += 1
        puts = reading[1]
        try:
            variants = await self.back.get(key)  # () when Redis is down: then a miss too
        finally:
            reading[0] -= 1
            if not reading[0] and self._reading.get(key) is reading:
                del self._reading[key]
        if generation == self._generation and reading[1] == puts:
            await self._fill(key, variants)
        return variants

    def peek(self, key: str) -> tuple[CachedResponse, ...] | None:
        """What get() answers without I/O: the memory layer's copy while it is in step
        with Redis; None when only Redis can say."""
        if self.ttl > 0 and key in self._synced:
            return self.front.peek(key) or None
        return None

    async def put(self, entry: CachedResponse) -> bool:
        generation = self._generation
        held = await self.back.put_variant(entry)
        reading = self._reading.get(entry.key)
        if reading is not None:  # those reads may have been answered before this write
            reading[1] += 1
        # The front takes the key only when it then holds the same variants as Redis.
        if held == 1 and generation == self._generation:
            await self._fill(entry.key, (entry,))
        else:  # its copy is older than what was just offered, stored or not
            await self._forget(entry.key, bump=False)
        return held > 0

    async def delete(self, key: str) -> bool:
        own = self._own
        if len(own) >= _MAX_OWN or self._own_chars > _MAX_OWN_CHARS:
            self._forget_own()
        if key not in own:
            self._own_chars += len(key)
        own[key] = own.get(key, 0) + 1
        try:
            return await self.back.delete(key)
        except BaseException:  # (no message, or one that is heard as another's: no harm)
            self._heard_own(key)
            raise
        finally:  # dropped even when Redis is down: it is never wrong to forget
            await self._forget(key)

    async def delete_prefix(self, prefix: str) -> int:
        try:
            return await self.back.delete_prefix(prefix)
        finally:
            self._generation += 1
            await self.front.delete_prefix(prefix)

    async def clear(self) -> int:
        try:
            return await self.back.clear()
        finally:
            await self._forget_all()

    async def keys(self, prefix: str = "", limit: int | None = None) -> list[str]:
        return await self.back.keys(prefix, limit)

    def stats(self) -> StoreStats:
        """Redis's figures: the shared cache."""
        return self.back.stats()

    async def start(self) -> None:
        await self.back.start()
        self._listener = asyncio.get_running_loop().create_task(self._listen())
        # Purges heard from the first request on when Redis is up; never fails the start.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.back.timeout * 2):
                await self._first_try.wait()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.back.close()

    # -- the front -------------------------------------------------------------------

    async def _fill(self, key: str, variants: tuple[CachedResponse, ...]) -> None:
        await self._forget(key, bump=False)
        if not variants or self.ttl <= 0:
            return
        for v in reversed(variants):  # oldest first: the front keeps them newest first
            if not await self.front.put(v):  # too big for the front: all or nothing
                await self.front.delete(key)
                return
        self._synced[key] = len(key) + _SYNCED_OVERHEAD

    async def _forget(self, key: str, bump: bool = True) -> None:
        if bump:
            self._generation += 1
        self._synced.pop(key, None)
        await self.front.delete(key)

    async def _forget_all(self) -> None:
        self._generation += 1
        self._synced.clear()
        await self.front.clear()

    async def _purged(self, message: bytes) -> None:
        kind, arg = message[:1], message[1:].decode("utf-8", "surrogateescape")
        if kind == b"d":
            if not self._heard_own(arg):
                self._tell(arg, None)
            await self._forget(arg)
        elif kind == b"p":
            self._tell(None, arg)
            self._generation += 1
            await self.front.delete_prefix(arg)
        else:  # "c", or a kind this version does not know: forgetting all is always safe
            self._tell(None, None)
            await self._forget_all()

    def _heard_own(self, key: str) -> bool:
        """Whether a delete of key by this replica awaited its message (now come)."""
        count = self._own.pop(key, 0)
        if count > 1:
            self._own[key] = count - 1
        elif count:
            self._own_chars -= len(key)
        return count > 0

    def _forget_own(self) -> None:
        self._own.clear()
        self._own_chars = 0

    def _tell(self, key: str | None, prefix: str | None) -> None:
        if self.heard is not None:
            self.heard(key, prefix)

    async def _missed_purges(self) -> None:
        self._forget_own()
        self._tell(None, None)  # (what was missed may have been an invalidation)
        await self._forget_all()
        log.info("purge channel subscribed again: memory layer cleared (purges may have "
                 "been missed)")

    async def _listen(self) -> None:
        """Subscribe to the purge channel; after a failure, again every retry interval."""
        missed = False
        while True:
            pubsub = self.back.subscriber()
            try:
                async with asyncio.timeout(self.back.timeout):
                    await pubsub.subscribe(self.back.channel)
                if missed:
                    await self._missed_purges()
                missed = False
                self._first_try.set()
                while True:
                    reconnects = pubsub.reconnects
                    message = await pubsub.get_message(timeout=_LISTEN_WAIT)
                    if pubsub.reconnects != reconnects:
                        await self._missed_purges()
                    if message is not None and message["type"] == "message":
                        await self._purged(message["data"])
            except Exception as exc:  # Redis down: the store itself logs the outage
                log.debug("purge channel lost: %r", exc)
                missed = True
                self._first_try.set()
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.back.timeout):
                        await pubsub.aclose()
            await asyncio.sleep(self.back.retry_interval)
