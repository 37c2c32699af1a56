"""store/redis.py against a real redis-server: the Store protocol as MemoryStore keeps it,
the key TTLs, and the keyspace it may touch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis
from redis_server import RedisServer

from cacheproxy.config import CacheConfig
from cacheproxy.http.stored import CachedResponse, Heuristics, make_stored_response
from cacheproxy.store import MemoryStore, RedisStore, Store
from cacheproxy.store.memory import MAX_VARIANTS
from cacheproxy.store.redis import MAX_VALUE_BYTES, REVALIDATION_GRACE


def make_entry(key: str = "http://o/a", body: bytes = b"body", *, cc: str = "max-age=60",
               vary: tuple[str, ...] = (), values: tuple[str | None, ...] = (),
               at: float | None = None, extra: tuple[tuple[str, str], ...] = ()) -> CachedResponse:
    now = time.time() if at is None else at
    entry = make_stored_response(
        key=key, vary=vary, vary_values=values, status=200,
        pairs=[("Content-Type", "text/plain"), ("Cache-Control", cc), *extra], body=b"",
        request_time=now, response_time=now, shared=True, heuristics=Heuristics())
    return entry.replace(body=body)


def redis_cache(server: RedisServer, **changes: Any) -> CacheConfig:
    return replace(CacheConfig(), store="redis", redis_url=server.url, **changes)


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_cache(redis_server, max_object_bytes=1000, max_bytes=5000))
    await s.start()
    yield s
    await s.close()


@pytest.fixture(params=["memory", "redis"])
async def any_store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """The parity tests run on both backends."""
    if request.param == "memory":
        yield MemoryStore(10**7)
        return
    server = request.getfixturevalue("redis_server")
    s = RedisStore(redis_cache(server))
    await s.start()
    yield s
    await s.close()


# -- parity with MemoryStore ------------------------------------------------------------

async def test_a_miss_then_a_hit(any_store: Store) -> None:
    assert await any_store.get("http://o/a") == ()
    e = make_entry()
    assert await any_store.put(e)
    assert await any_store.get("http://o/a") == (e,)


async def test_variants_newest_first_and_replaced_by_vary_values(any_store: Store) -> None:
    t = time.time()
    gzip = make_entry(vary=("accept-encoding",), values=("gzip",), at=t)
    plain = make_entry(vary=("accept-encoding",), values=(None,), at=t + 1)
    await any_store.put(gzip)
    await any_store.put(plain)
    assert await any_store.get("http://o/a") == (plain, gzip)
    newer = make_entry(body=b"new", vary=("accept-encoding",), values=("gzip",), at=t + 2)
    await any_store.put(newer)
    assert await any_store.get("http://o/a") == (newer, plain)


async def test_at_most_max_variants_the_newest_kept(any_store: Store) -> None:
    t = time.time()
    made = [make_entry(vary=("user-agent",), values=(f"ua{i}",), at=t + i)
            for i in range(MAX_VARIANTS + 8)]
    for e in made:
        await any_store.put(e)
    assert await any_store.get("http://o/a") == tuple(reversed(made[-MAX_VARIANTS:]))


async def test_delete_keys_and_delete_prefix(any_store: Store) -> None:
    for key in ("http://o/a", "http://o/a*b", "http://o/aXb", "http://o/b", "http://o/caf\udce9"):
        await any_store.put(make_entry(key))
    assert sorted(await any_store.keys("http://o/a*")) == ["http://o/a*b"]  # no glob
    assert len(await any_store.keys("http://o/", limit=2)) == 2
    assert await any_store.keys("http://o/caf") == ["http://o/caf\udce9"]
    assert await any_store.delete("http://o/b")
    assert not await any_store.delete("http://o/b")
    assert await any_store.delete_prefix("http://o/a") == 3
    assert await any_store.keys() == ["http://o/caf\udce9"]
    await any_store.clear()
    assert await any_store.keys() == []


# -- Redis specifics --------------------------------------------------------------------

async def test_the_store_leaves_max_object_bytes_to_each_route(store: RedisStore) -> None:
    """The exchange applies the route's max_object_bytes (a route may allow more than
    [cache]); the store refuses only what Redis cannot hold (MAX_VALUE_BYTES)."""
    assert await store.put(make_entry(body=b"x" * 1001))  # over [cache]'s 1000 here
    assert MAX_VALUE_BYTES < 512 * 1024 * 1024


@pytest.mark.parametrize("cc, extra, seconds", [
    ("max-age=60", (), 60),
    ("max-age=60, stale-while-revalidate=30, stale-if-error=100", (), 160),
    ("max-age=60, stale-while-revalidate=300", (), 360),
    ("max-age=60", (("ETag", '"v1"'),), 60 + REVALIDATION_GRACE),
    ("max-age=0", (("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),), REVALIDATION_GRACE),
    ("max-age=0", (), 1),  # stale, nothing to revalidate with: the minimum
])
async def test_key_ttl(store: RedisStore, raw: Redis, cc: str, extra: tuple[tuple[str, str]],
                       seconds: float) -> None:
    await store.put(make_entry(cc=cc, extra=extra))
    ttl = await raw.pttl(b"cacheproxy:e2:http://o/a") / 1000
    # (the Date the cache adds is whole seconds, so the entry is up to 1 s old when made,
    # plus what passes until pttl: 58.999 for 60 was seen once)
    assert seconds - 2 < ttl <= seconds


async def test_the_key_lives_as_long_as_its_longest_lived_variant(
        store: RedisStore, raw: Redis) -> None:
    await store.put(make_entry(cc="max-age=600", vary=("x-a",), values=("1",)))
    await store.put(make_entry(cc="max-age=60", vary=("x-a",), values=("2",)))
    assert 599 < await raw.pttl(b"cacheproxy:e2:http://o/a") / 1000 <= 600
    # A variant past its own TTL (here the 1 s minimum) is dropped by the next put.
    old = make_entry(cc="max-age=10", vary=("x-a",), values=("old",), at=time.time() - 100)
    await store.put(old)
    await asyncio.sleep(1.05)
    await store.put(make_entry(cc="max-age=60", vary=("x-a",), values=("3",)))
    assert {v.vary_values for v in await store.get("http://o/a")} == {("1",), ("2",), ("3",)}


async def test_only_keys_under_the_prefix_are_touched(store: RedisStore, raw: Redis) -> None:
    await raw.set("other:thing", "1")
    await raw.set("cacheproxyX", "1")
    await store.put(make_entry())
    assert await store.keys() == ["http://o/a"]
    assert await store.delete_prefix("") == 1
    await store.put(make_entry())
    await store.clear()
    assert sorted(await raw.keys("*")) == [b"cacheproxyX", b"other:thing"]


async def test_purges_are_published(store: RedisStore, raw: Redis) -> None:
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("cacheproxy:purge")
    await store.put(make_entry())
    await store.delete("http://o/a")
    await store.delete_prefix("http://o/")
    await store.clear()
    got = []
    async with asyncio.timeout(2):
        while len(got) < 3:
            if (message := await pubsub.get_message(timeout=0.5)) is not None:
                got.append(message["data"])
    assert got == [b"dhttp://o/a", b"phttp://o/", b"c"]
    await pubsub.aclose()


async def test_an_unreadable_entry_is_a_miss_and_goes(store: RedisStore, raw: Redis) -> None:
    await store.put(make_entry(vary=("x-a",), values=("1",)))
    await raw.hset(b"cacheproxy:e2:http://o/a", b'["2"]', b"CPR\x09garbage")
    variants = await store.get("http://o/a")
    assert [v.vary_values for v in variants] == [("1",)]
    assert not await raw.hexists(b"cacheproxy:e2:http://o/a", b'["2"]')


async def test_stats(store: RedisStore, raw: Redis) -> None:
    assert store.stats().max_bytes == 5000  # no maxmemory: the configured max_bytes
    await raw.config_set("maxmemory", 50_000_000)
    await raw.config_set("maxmemory-policy", "allkeys-lru")
    for i in range(3):
        await store.put(make_entry(f"http://o/{i}"))
    await store._refresh_stats()
    stats = store.stats()
    assert (stats.entries, stats.max_bytes, stats.evictions) == (3, 50_000_000, 0)
    assert stats.bytes > 0


async def test_start_with_redis_down_does_not_fail(redis_server: RedisServer) -> None:
    redis_server.stop()
    s = RedisStore(redis_cache(redis_server, redis_timeout=0.2))
    await s.start()
    assert not s.available and await s.get("http://o/a") == ()
    await s.close()


async def test_many_concurrent_operations(redis_server: RedisServer) -> None:
    # What is tested is that 200 calls through 64 connections all land; a loaded CI
    # machine may take longer than the default half second to open the connections.
    store = RedisStore(redis_cache(redis_server, redis_timeout=10))
    await store.start()
    try:
        made = [make_entry(f"http://o/{i}", body=bytes([i])) for i in range(200)]
        assert all(await asyncio.gather(*(store.put(e) for e in made)))
        got = await asyncio.gather(*(store.get(e.key) for e in made))
        assert [g[0] for g in got] == made
    finally:
        await store.close()


async def test_opening_connections_does_not_read_package_metadata(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py >= 7.2 reads its version from disk for each new connection unless told
    who it is: 3-4 ms with the loop blocked, each, which a burst of misses multiplies."""
    import importlib.metadata

    real = importlib.metadata.version
    read: list[str] = []

    def counted(name: str) -> str:
        read.append(name)
        return real(name)

    store = RedisStore(redis_cache(redis_server, redis_timeout=10))  # (latency: not tested)
    await store.start()
    monkeypatch.setattr(importlib.metadata, "version", counted)
    try:
        made = [make_entry(f"http://o/{i}", body=bytes([i])) for i in range(100)]
        assert all(await asyncio.gather(*(store.put(e) for e in made)))
        pool = store._redis.connection_pool
        assert len(pool._in_use_connections) + len(pool._available_connections) > 8
    finally:
        await store.close()
    assert read == []  # (while many connections were opened)
