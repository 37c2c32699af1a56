"""The shared store: entries in Redis, so that every replica answers from one cache.

Layout: one hash per primary key, `{prefix}e:{key}`, with a field per Vary variant (the
JSON of its Vary values) holding serial.encode(entry), and a field "#" with each
variant's [response_time, expires_at_ms]. A put is one Lua script (one round trip): it
replaces the variant with the same Vary fields and values, drops expired ones, keeps the newest
MAX_VARIANTS, and sets the key to expire with its longest-lived variant.

A lookup reads only the variants the request may select (RFC 9111 §4.1): one Lua script
answers the whole hash when it holds at most one variant (the common key: one round trip),
else its field names; of those, the ones whose Vary values are the request's are read
with HMGET (a second round trip). Other variants' bodies never leave Redis.

Key TTL, per variant: max(freshness left + max(stale-while-revalidate, stale-if-error), 0),
plus REVALIDATION_GRACE when the response has a validator (ETag or Last-Modified), at
least MIN_TTL. Past that an entry is not fresh, past its RFC 5861 windows, and has
nothing to revalidate with (a client's max-stale may still want it, but a cache may
always have discarded a stale response).

Size: an entry whose body exceeds max_object_bytes is refused (put returns False). The
total is bounded by Redis itself: run it with `maxmemory` and `maxmemory-policy
allkeys-lru` (docker-compose.yml does); a warning is logged when maxmemory is unset or
the policy never evicts.

Failures: every call is bounded by redis_timeout. A failed call (connection, timeout)
marks the store down with one warning; while down, nothing is sent for
redis_retry_interval, then one operation probes (the stats task probes too, so caching
resumes with no traffic), with at most one log line per interval until it answers.
get and put never raise: a miss, and "not stored", send the request to the origin
uncached. delete, delete_prefix, clear and keys raise StoreUnavailable, so that a purge
is never reported done when it was not. A key whose delete failed (an invalidation, RFC
9111 §4.4, that the request path cannot wait for) is deleted once Redis answers: before
the key is read or written again here, and by the probe loop, so other replicas stop
serving it within a retry interval of Redis's return. An error reply (OOM under noeviction) fails
that one call and leaves the store up: Redis answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError

try:  # redis-py >= 7.2
    from redis import DriverInfo
except ImportError:  # older: the version is read once, when redis-py is imported
    DriverInfo = None

from cacheproxy.config import CacheConfig
from cacheproxy.http.cache_control import MAX_DELTA
from cacheproxy.http.cache_key import Selectable, in_variant, variant_id
from cacheproxy.http.fields import Headers
from cacheproxy.http.stored import CachedResponse
from cacheproxy.store.base import StoreStats, StoreUnavailable
from cacheproxy.store.memory import MAX_VARIANTS
from cacheproxy.store.serial import check_servable, decode, encode

log = logging.getLogger("cacheproxy.store")
T = TypeVar("T")

# Kept for conditional revalidation: past its stale windows, a response with a validator
# still saves the origin a body (a 304 instead of a 200).
REVALIDATION_GRACE = 3600.0
MIN_TTL = 1.0
MAX_TTL = float(MAX_DELTA)
# Connections per replica; at ~0.3 ms a round trip, far more than a proxy needs.
POOL_CONNECTIONS = 64
# Redis refuses a string over 512 MiB; the limit per response is max_object_bytes, which the
# exchange applies per route (a route may allow more than [cache]).
MAX_VALUE_BYTES = 512 * 1024 * 1024 - 64 * 1024
STATS_INTERVAL = 5.0  # seconds between refreshes of stats() (INFO)
_SCAN_COUNT = 1000
# The keys of failed deletes kept for when Redis is back, in characters (a client chooses
# a key's length, and POSTs as often as it likes): past it the oldest are given up, logged.
MAX_UNDONE_CHARS = 2 * 1024 * 1024
_META = b"#"

# KEYS[1]: the entry hash. ARGV: field, encoded entry, put time (the variants put last
# stay), expires_at_ms, now_ms, max_variants. Returns how many variants the hash holds
# afterwards.
_PUT = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('DEL', KEYS[1])  -- not ours (another program, another layout): replaced
end
local meta = {}
local raw = redis.call('HGET', KEYS[1], '#')
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' then meta = decoded end
end
meta[ARGV[1]] = {tonumber(ARGV[3]), tonumber(ARGV[4])}
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local now, live = tonumber(ARGV[5]), {}
for field, m in pairs(meta) do
  -- numbers only from here on: a damaged list ("1" for 1) must not fail the script
  -- halfway, after the HSET above (a script's writes are not undone).
  local put_at = type(m) == 'table' and type(m[1]) == 'number' and m[1]
  local expires_at = put_at and type(m[2]) == 'number' and m[2]
  if field == ARGV[1] or (expires_at and expires_at > now
                          and redis.call('HEXISTS', KEYS[1], field) == 1)
  then
    live[#live + 1] = field
  else
    redis.call('HDEL', KEYS[1], field)
    meta[field] = nil
  end
end
table.sort(live, function(a, b) return meta[a][1] > meta[b][1] end)
for i = tonumber(ARGV[6]) + 1, #live do
  redis.call('HDEL', KEYS[1], live[i])
  meta[live[i]] = nil
end
local expires = 0
for _, m in pairs(meta) do
  if m[2] > expires then expires = m[2] end
end
redis.call('HSET', KEYS[1], '#', cjson.encode(meta))
redis.call('PEXPIREAT', KEYS[1], expires)
return math.min(#live, tonumber(ARGV[6]))
"""


# KEYS[1]: the entry hash. Returns {1, HGETALL} when it holds at most one variant, else
# {0, HKEYS}: the caller then reads the variants it may select.
_LOOK = """
local variants = redis.call('HLEN', KEYS[1]) - redis.call('HEXISTS', KEYS[1], '#')
if variants <= 1 then return {1, redis.call('HGETALL', KEYS[1])} end
return {0, redis.call('HKEYS', KEYS[1])}
"""


def entry_ttl(entry: CachedResponse, now: float) -> float:
    """Seconds from now that Redis keeps entry (the formula is in the module docstring)."""
    d = entry.directives
    left = entry.lifetime - entry.age(now)
    ttl = max(left + max(d.stale_while_revalidate or 0, d.stale_if_error or 0), 0.0)
    if entry.etag is not None or entry.last_modified is not None:
        ttl += REVALIDATION_GRACE
    return min(max(ttl, MIN_TTL), MAX_TTL) if not math.isnan(ttl) else MIN_TTL


def _bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")  # keys from raw request targets


def _glob_escape(b: bytes) -> bytes:
    """A literal for SCAN MATCH: Redis's glob specials are * ? [ ] and backslash."""
    out = bytearray()
    for c in b:
        if c in b"*?[]\\":
            out += b"\\"
        out.append(c)
    return bytes(out)


def _variant_field(entry: CachedResponse) -> bytes:
    """The variant's identity: the fields it varies on and their values (RFC 9111 §4.1),
    so responses for different Vary field sets never overwrite each other."""
    return _bytes(json.dumps(variant_id(entry), separators=(",", ":")))


def _selectable(field: bytes, headers: Headers) -> bool:
    """§4.1: may the request select the variant stored under field (its Vary fields and
    values, _variant_field)? A field that does not parse as one is read: its entry then
    decides (and a damaged one is dropped)."""
    try:
        names, values = json.loads(field)
    except (ValueError, TypeError):
        return True
    if not (isinstance(names, list) and isinstance(values, list)
            and all(isinstance(n, str) for n in names)
            and all(v is None or isinstance(v, str) for v in values)):
        return True
    return in_variant((tuple(names), tuple(values)), headers)


def _vary_names(field: bytes) -> tuple[str, ...]:
    """The Vary names of the variant stored under field (_variant_field); () when it does
    not parse as one."""
    try:
        names = json.loads(field)[0]
    except (ValueError, TypeError, IndexError, KeyError):
        return ()
    return tuple(names) if isinstance(names, list) \
        and all(isinstance(n, str) for n in names) else ()


def _strings(found: Any) -> list[bytes]:
    """A list of bytes, as Redis answers; TypeError for what no Redis answers (a server
    that only looks like one): in a call, that is an outage like a protocol error."""
    if not (isinstance(found, list) and all(isinstance(x, bytes) for x in found)):
        raise TypeError(f"not a Redis answer: {found!r:.80}")
    return found


def _pairs(whole: Any) -> list[tuple[bytes, bytes]]:
    """A hash's (field, value) pairs, checked as _strings."""
    if not isinstance(whole, dict):
        raise TypeError(f"not a Redis answer: {whole!r:.80}")
    _strings([*whole, *whole.values()])
    return list(whole.items())


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    message = str(exc)
    if isinstance(exc, AuthenticationError) or (isinstance(exc, ResponseError) and (
            message.startswith("NOAUTH") or "authenticated" in message)):
        # (a password missing from the URL comes back as NOAUTH, or HELLO's "must be
        # called with the client already authenticated")
        text += "; check the password in cache.redis_url"
    return text


class _Health:
    """Up or down. While down, one operation per retry interval probes and the others
    are skipped; the log gets one line when it goes down, at most one per interval
    while it stays down, and one when it is back."""

    def __init__(self, retry_interval: float) -> None:
        self.up = True
        self.interval = retry_interval
        self._down_since = self._retry_at = self._logged_at = 0.0
        self._skipped = 0

    def admit(self) -> bool:
        if self.up:
            return True
        now = time.monotonic()
        if now >= self._retry_at:
            self._retry_at = now + self.interval  # the others wait for this probe
            return True
        self._skipped += 1
        return False

    def failed(self, exc: BaseException, started: float) -> bool:
        """True when this failure takes the store down."""
        now = time.monotonic()
        if self.up:
            self.up = False
            self._down_since = self._logged_at = now
            self._retry_at, self._skipped = now + self.interval, 0
            log.warning("redis store unavailable (%s): requests go to the origin uncached "
                        "until it returns", _describe(exc))
            return True
        if started >= self._down_since and now - self._logged_at >= self.interval:
            self._logged_at = now
            log.warning("redis store still unavailable (%s), %d operations skipped",
                        _describe(exc), self._skipped)
            self._skipped = 0
        return False

    def succeeded(self, started: float) -> None:
        # A call sent before the outage began says nothing about now.
        if self.up or started < self._down_since:
            return
        self.up = True
        log.info("redis store is back after %.1f s", time.monotonic() - self._down_since)


class PurgeSubscriber(PubSub):
    """Counts reconnections: redis-py reconnects and subscribes again by itself, and what
    was published in between is lost."""

    reconnects = 0

    async def on_connect(self, connection: Any) -> None:
        self.reconnects += 1  # called on reconnections only (the first connect precedes it)
        await super().on_connect(connection)


def _driver_info() -> dict[str, Any]:
    """What CLIENT SETINFO names us by, figured once: without it redis-py >= 7.2 reads its
    own package metadata from disk for every new connection (3-4 ms with the loop blocked,
    so 64 connections opening in a burst stalled it for over 200 ms)."""
    if DriverInfo is None:
        return {}
    try:
        ours = version("cacheproxy")
    except PackageNotFoundError:
        ours = "0"
    return {"driver_info": DriverInfo().add_upstream_driver("cacheproxy", ours)}


# Entries live under <redis_prefix>e<generation>:<key>. The generation changes with the
# spelling of cache keys: under an older spelling a key can name another route's answers
# (before a22bc7f, a route to an API as user alice stored under `http://api/me`, today
# the key of a route to it without credentials), and Redis outlives the proxies. A new
# build reads none of them (an upgrade starts from an empty shared cache, and old and new
# replicas of a rolling one share nothing); they go with their TTLs.
KEYS_GENERATION = b"2"
# The generation before, under <redis_prefix>e:<key>, which replicas of the release before
# read during a rolling upgrade: a delete, a purge or a clear here removes its entries of
# the same keys too, so that an invalidation (RFC 9111 §4.4) or an operator's purge that
# reaches a new replica also holds on the old ones (which never read this generation).
_RETIRED = b"e:"


class RedisStore:
    """The Store protocol over redis.asyncio; see the module docstring."""

    def __init__(self, cache: CacheConfig) -> None:
        prefix = _bytes(cache.redis_prefix)
        self._prefix = prefix
        self._entries = prefix + b"e" + KEYS_GENERATION + b":"
        self._retired = prefix + _RETIRED
        self.channel = prefix + b"purge"  # "d<key>", "p<prefix>" or "c", after each purge
        self.timeout = cache.redis_timeout
        self.retry_interval = cache.redis_retry_interval
        pool = BlockingConnectionPool.from_url(
            cache.redis_url, max_connections=POOL_CONNECTIONS,
            timeout=None,  # a wait for a free connection counts toward redis_timeout
            socket_timeout=cache.redis_timeout, socket_connect_timeout=cache.redis_timeout,
            # One retry, on a new connection: after a Redis restart the pooled ones are dead.
            retry=Retry(NoBackoff(), 1),
            **_driver_info(),
        )
        self._redis = Redis.from_pool(pool)
        self._db = int(self._redis.connection_pool.connection_kwargs.get("db", 0))
        self._put_script = self._redis.register_script(_PUT)
        self._look_script = self._redis.register_script(_LOOK)
        self._health = _Health(cache.redis_retry_interval)
        self._refused_logged_at = -math.inf
        self._stats = StoreStats(entries=0, bytes=0, max_bytes=cache.max_bytes, evictions=0)
        self._default_max = cache.max_bytes
        self._checked_memory = False
        self._refresher: asyncio.Task[None] | None = None
        self._undone: dict[str, None] = {}  # keys whose delete failed, oldest first
        self._undone_chars = 0

    @property
    def available(self) -> bool:
        return self._health.up

    async def ping(self) -> bool:
        """Does Redis answer now? (For a readiness check: it asks even while down.)"""
        try:
            await self._call(self._redis.ping, probe=True)
        except StoreUnavailable:
            return False
        return True

    # -- the Store protocol ------------------------------------------------------------

    async def get(self, key: str, headers: Headers | None = None
                  ) -> tuple[CachedResponse, ...]:
        """Every variant; with a request's headers, a Selectable: the variants it may
        select (all of them when the key holds one) and how many others were left unread."""
        name = self._entries + _bytes(key)
        if key in self._undone and not await self._redo(key):
            return ()  # what an invalidation removed must not be served again
        try:
            if headers is None:
                fields, unread = await self._call(partial(self._read_all, name)), 0
            else:
                fields, unread, varies_on = await self._read_selectable(name, headers)
        except StoreUnavailable:
            return ()
        variants = await self._decoded(key, name, fields)
        return variants if headers is None else Selectable(variants, unread, varies_on)

    async def _read_all(self, name: bytes) -> list[tuple[bytes, bytes]]:
        return _pairs(await self._redis.hgetall(name))

    async def _read_selectable(self, name: bytes, headers: Headers
                               ) -> tuple[list[tuple[bytes, bytes]], int, tuple[str, ...]]:
        """The (field, data) of the variants the request may select, how many others the
        hash holds, and the Vary names of one of those (cache_key.wait_group). One round
        trip when it holds at most one variant, else two."""
        async def look() -> tuple[bool, list[Any]]:
            whole, found = await self._look_script(keys=[name])
            if whole:  # (field, value) pairs
                return True, list(zip(found[::2], _strings(found)[1::2], strict=True))
            return False, _strings(found)

        whole, found = await self._call(look)
        if whole:
            return found, 0, ()
        wanted = [f for f in found if f != _META and _selectable(f, headers)]
        unread = len(found) - len(wanted) - (_META in found)
        if not wanted:
            other = next((f for f in found if f != _META), None)
            return [], unread, () if other is None else _vary_names(other)

        async def read() -> list[tuple[bytes, bytes]]:
            data = await self._redis.hmget(name, wanted)
            # (None: removed since the look, by a put that dropped it or a purge)
            return _pairs({f: d for f, d in zip(wanted, data, strict=True) if d is not None})

        return await self._call(read), unread, ()

    async def _decoded(self, key: str, name: bytes, fields: list[tuple[bytes, bytes]]
                       ) -> tuple[CachedResponse, ...]:
        """The entries of the variant fields read, newest first; damaged ones dropped."""
        variants, bad = [], []
        for field, data in fields:
            if field == _META:
                continue
            try:
                entry = decode(data)
                check_servable(entry)  # (well-typed is not enough: damaged or foreign)
                if entry.key != key:  # copied or renamed from another URL's hash
                    raise ValueError(f"stored entry: it is for {entry.key[:200]!r}")
            except ValueError as exc:
                log.warning("dropping an unreadable entry for %s: %s", key, exc)
                bad.append(field)
            else:
                variants.append(entry)
        if bad:  # a miss now; the next put overwrites them anyway
            with contextlib.suppress(StoreUnavailable):
                await self._call(partial(self._redis.hdel, name, *bad))
        variants.sort(key=lambda v: v.born, reverse=True)
        return tuple(variants)

    async def put(self, entry: CachedResponse) -> bool:
        return await self.put_variant(entry) > 0

    async def put_variant(self, entry: CachedResponse) -> int:
        """put(), but tells how many variants the key holds afterwards (0: not stored)."""
        if len(entry.body) > MAX_VALUE_BYTES:  # each route's max_object_bytes is the exchange's
            return 0
        if entry.key in self._undone and not await self._redo(entry.key):
            return 0  # (a put adds one variant: the others the delete removed would stay)
        now = time.time()
        expires_ms = int((now + entry_ttl(entry, now)) * 1000)
        args = [_variant_field(entry), encode(entry), repr(now), expires_ms,
                int(now * 1000), MAX_VARIANTS]
        async def put() -> int:
            held = await self._put_script(keys=[self._entries + _bytes(entry.key)], args=args)
            if not isinstance(held, int):
                raise TypeError(f"the put script answered {held!r}")
            return held

        try:
            return await self._call(put)
        except StoreUnavailable:
            return 0

    async def delete(self, key: str) -> bool:
        async def unlink() -> Any:
            # One round trip, no MULTI: Redis at maxmemory under noeviction refuses every
            # command queued in a transaction, but runs UNLINK and PUBLISH alone (they free
            # memory), and an invalidation (RFC 9111 §4.4) or a purge must hold then too.
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.unlink(self._entries + _bytes(key))
                pipe.unlink(self._retired + _bytes(key))  # (what old replicas read)
                pipe.publish(self.channel, b"d" + _bytes(key))
                return (await pipe.execute())[0]
        try:
            deleted = bool(await self._call(unlink))
        except StoreUnavailable:
            self._undo_later(key)
            raise
        if self._undone.pop(key, 0) is None:
            self._undone_chars -= len(key)
        return deleted

    async def keys(self, prefix: str = "", limit: int | None = None) -> list[str]:
        found: dict[str, None] = {}  # SCAN may return a key twice
        if limit is not None and limit <= 0:
            return []
        async with contextlib.aclosing(self._scan(self._entries + _bytes(prefix))) as batches:
            async for batch in batches:
                for name in batch:
                    found[name[len(self._entries):].decode("utf-8", "surrogateescape")] = None
                    if limit is not None and len(found) >= limit:
                        return list(found)
        return list(found)

    async def delete_prefix(self, prefix: str) -> int:
        removed = await self._unlink_all(self._entries + _bytes(prefix))
        await self._unlink_all(self._retired + _bytes(prefix))  # (what old replicas read)
        await self._call(partial(self._redis.publish, self.channel, b"p" + _bytes(prefix)))
        return removed

    async def clear(self) -> int:
        """Every entry under redis_prefix, and nothing else (never FLUSHDB)."""
        removed = await self._unlink_all(self._entries)
        await self._unlink_all(self._retired)  # (what old replicas read)
        await self._call(partial(self._redis.publish, self.channel, b"c"))
        return removed

    def stats(self) -> StoreStats:
        """The figures of the last refresh (every STATS_INTERVAL s). entries counts the
        keys of the Redis database (one per URL, variants not counted one by one: a
        database of the cache's own is assumed); bytes is Redis's used_memory, the
        figure its maxmemory bounds."""
        return self._stats

    async def start(self) -> None:
        """Never fails: with Redis down at boot the proxy passes through until it is up."""
        with contextlib.suppress(StoreUnavailable):
            await self._refresh_stats()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self._redis.aclose()

    def subscriber(self) -> PurgeSubscriber:
        """A connection of its own for the purge channel."""
        return PurgeSubscriber(self._redis.connection_pool, ignore_subscribe_messages=True)

    # -- deletes that failed -------------------------------------------------------------

    def _undo_later(self, key: str) -> None:
        if key in self._undone:
            return
        self._undone[key] = None
        self._undone_chars += len(key)
        while self._undone_chars > MAX_UNDONE_CHARS and len(self._undone) > 1:
            oldest = next(iter(self._undone))
            del self._undone[oldest]
            self._undone_chars -= len(oldest)
            log.warning("redis store: a failed invalidation of %.200s is given up (too many "
                        "kept while redis is unavailable)", oldest)

    async def _redo(self, key: str) -> bool:
        """Delete key now, after its delete failed; whether that was done."""
        try:
            await self.delete(key)
        except StoreUnavailable:
            return False
        return True

    async def _redo_all(self) -> None:
        for key in list(self._undone):
            if key in self._undone and not await self._redo(key):
                return

    # -- calls -------------------------------------------------------------------------

    async def _call(self, op: Callable[[], Awaitable[T]], probe: bool = False) -> T:
        """One Redis operation, within redis_timeout; StoreUnavailable when it fails or the
        store is down (and this is not the interval's probe)."""
        if not (probe or self._health.admit()):
            raise StoreUnavailable("redis store unavailable (retrying later)")
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                result = await op()
        except ResponseError as exc:  # Redis answered: it is up, and refused this command
            self._health.succeeded(started)
            self._refused(exc)
            raise StoreUnavailable(f"redis refused the command: {exc}") from exc
        except Exception as exc:  # connection, timeout or protocol: no store for now
            if self._health.failed(exc, started):
                await self._drop_idle_connections()
            raise StoreUnavailable(f"redis store unavailable: {_describe(exc)}") from exc
        self._health.succeeded(started)
        return result

    def _refused(self, exc: ResponseError) -> None:
        now = time.monotonic()
        if now - self._refused_logged_at >= self.retry_interval:  # e.g. OOM under noeviction
            self._refused_logged_at = now
            log.warning("redis store refused a command: %s", exc)

    async def _drop_idle_connections(self) -> None:
        """So that the probe after an outage connects afresh."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout):
                await self._redis.connection_pool.disconnect(inuse_connections=False)

    async def _scan(self, prefix: bytes) -> AsyncIterator[list[bytes]]:
        """Batches of key names that start with prefix."""
        cursor: int = 0
        match = _glob_escape(prefix) + b"*"
        while True:
            cursor, names = await self._call(
                partial(self._redis.scan, cursor, match=match, count=_SCAN_COUNT))
            yield names
            if cursor == 0:
                return

    async def _unlink_all(self, prefix: bytes) -> int:
        removed = 0
        async for batch in self._scan(prefix):
            if batch:
                removed += await self._call(partial(self._redis.unlink, *batch))
        return removed

    # -- stats -------------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        # While down, this probes once per retry interval: caching resumes with no traffic.
        refreshed = time.monotonic()
        while True:
            await asyncio.sleep(min(self.retry_interval, STATS_INTERVAL))
            if not self.available or time.monotonic() - refreshed >= STATS_INTERVAL:
                refreshed = time.monotonic()
                with contextlib.suppress(StoreUnavailable):
                    await self._refresh_stats(probe=True)
            if self._undone and self.available:  # for the replicas that read these keys
                await self._redo_all()

    async def _refresh_stats(self, probe: bool = False) -> None:
        info = await self._call(partial(self._redis.info, "memory", "stats", "keyspace"),
                                probe=probe)
        maxmemory = int(info.get("maxmemory", 0))
        db = info.get(f"db{self._db}", {})
        self._stats = StoreStats(
            entries=int(db.get("keys", 0)) if isinstance(db, dict) else 0,
            bytes=int(info.get("used_memory", 0)),
            max_bytes=maxmemory or self._default_max,
            evictions=int(info.get("evicted_keys", 0)),
        )
        if not self._checked_memory:
            self._checked_memory = True
            policy = str(info.get("maxmemory_policy", ""))
            if not maxmemory:
                log.warning("redis has no maxmemory: the shared cache grows without bound "
                            "(set maxmemory and maxmemory-policy allkeys-lru)")
            elif policy == "noeviction":
                log.warning("redis maxmemory-policy is noeviction: puts fail once maxmemory "
                            "is reached (use allkeys-lru)")
