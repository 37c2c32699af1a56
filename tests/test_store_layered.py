"""store/layered.py: two LayeredStores on one redis-server are two replicas. What one
stores the other finds; a purge on one empties the other's memory layer at once (pub/sub);
a memory copy is never answered more than memory_layer_ttl after it left Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from redis_server import RedisServer
from test_store_redis import make_entry, redis_cache

from cacheproxy.store import LayeredStore, MemoryStore, RedisStore, build_store

Replicas = Callable[..., Awaitable[tuple[LayeredStore, LayeredStore]]]


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[Replicas]:
    """replicas(memory_layer_ttl=...) -> two started LayeredStores on one Redis."""
    started: list[LayeredStore] = []

    async def make(**changes: Any) -> tuple[LayeredStore, LayeredStore]:
        cache = redis_cache(redis_server, redis_timeout=0.2, redis_retry_interval=0.2, **changes)
        pair = []
        for _ in range(2):
            store = build_store(cache)
            assert isinstance(store, LayeredStore)
            await store.start()
            started.append(store)
            pair.append(store)
        return pair[0], pair[1]

    yield make
    for store in started:
        await store.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 1.0) -> float:
    start = time.monotonic()
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.005)
    return time.monotonic() - start


def test_build_store(redis_server: RedisServer) -> None:
    assert isinstance(build_store(replace(redis_cache(redis_server), store="memory")),
                      MemoryStore)
    assert isinstance(build_store(redis_cache(redis_server)), LayeredStore)
    # Without the layer, Redis behind the purge channel's listener, nothing held in front.
    for off in ({"memory_layer_bytes": 0}, {"memory_layer_ttl": 0}):
        store = build_store(redis_cache(redis_server, **off))
        assert isinstance(store, LayeredStore) and isinstance(store.back, RedisStore)
        assert store.ttl == 0 and store.front.stats().max_bytes == 0


async def test_what_a_stores_b_finds(replicas: Replicas) -> None:
    a, b = await replicas()
    e = make_entry()
    assert await a.put(e)
    assert await b.get(e.key) == (e,)
    assert await b.front.get(e.key) == (e,)  # and keeps a copy
    assert await a.front.get(e.key) == (e,)  # the writer too: the key has one variant
    assert b.stats() is b.back.stats()  # the shared cache's figures


async def test_a_copy_is_answered_up_to_ttl_after_it_left_redis(replicas: Replicas) -> None:
    a, b = await replicas(memory_layer_ttl=0.3)
    old, new = make_entry(body=b"old"), make_entry(body=b"new")
    await a.put(old)
    assert await b.get(old.key) == (old,)
    await a.put(new)  # B's copy is now older than Redis's
    assert await b.get(old.key) == (old,)
    took = await eventually(lambda: _first_body_is(b, old.key, b"new"))
    assert 0.2 < took <= 0.3 + 0.15


async def _first_body_is(store: LayeredStore, key: str, body: bytes) -> bool:
    variants = await store.get(key)
    return bool(variants) and variants[0].body == body


async def test_a_purge_empties_every_front_at_once(replicas: Replicas) -> None:
    a, b = await replicas(memory_layer_ttl=60)  # only pub/sub can explain a quick drop
    for key in ("http://o/1", "http://o/2", "http://o/p/3", "http://o/p/4"):
        await b.put(make_entry(key))
        await a.get(key)
    assert await a.delete("http://o/1")
    await eventually(lambda: _gone(b, "http://o/1"), within=3)
    assert await b.get("http://o/1") == ()

    assert await b.delete_prefix("http://o/p/") == 2
    await eventually(lambda: _gone(a, "http://o/p/3"), within=3)
    assert await a.front.get("http://o/p/4") == ()
    assert len(await a.get("http://o/2")) == 1

    await b.clear()
    await eventually(lambda: _gone(a, "http://o/2"), within=3)
    assert await a.get("http://o/2") == ()


async def _gone(store: LayeredStore, key: str) -> bool:
    return await store.front.get(key) == ()


async def test_with_redis_down_the_front_answers_within_ttl_only(
        replicas: Replicas, redis_server: RedisServer) -> None:
    a, _ = await replicas(memory_layer_ttl=0.3)
    e = make_entry()
    await a.put(e)
    redis_server.stop()
    assert await a.get(e.key) == (e,)  # from the front: Redis is not asked
    took = await eventually(lambda: _missing(a, e.key))
    assert took <= 0.3 + 0.15
    assert not await a.put(make_entry(body=b"new"))  # nothing new is kept while down
    assert await a.front.get(e.key) == ()


async def _missing(store: LayeredStore, key: str) -> bool:
    return await store.get(key) == ()


async def test_the_front_is_cleared_when_the_purge_channel_returns(
        replicas: Replicas, redis_server: RedisServer) -> None:
    a, _ = await replicas(memory_layer_ttl=60)
    await a.put(make_entry())
    assert await a.front.get("http://o/a") != ()
    redis_server.stop()
    redis_server.start()  # purges in between would have been missed
    await eventually(lambda: _gone(a, "http://o/a"), within=1.0)


async def test_a_variant_another_replica_adds_shows_within_ttl(replicas: Replicas) -> None:
    a, b = await replicas(memory_layer_ttl=0.3)
    gzip = make_entry(vary=("accept-encoding",), values=("gzip",), at=time.time())
    plain = make_entry(vary=("accept-encoding",), values=(None,), at=time.time() + 1)
    await a.put(gzip)
    await b.put(plain)
    assert await b.front.get("http://o/a") == ()  # B's front would lack gzip: left empty
    assert await b.get("http://o/a") == (plain, gzip)
    # A's front holds gzip alone, as Redis did when A stored it: the staleness bound.
    assert await a.get("http://o/a") == (gzip,)
    await eventually(lambda: _variant_count_is(a, "http://o/a", 2))


async def _variant_count_is(store: LayeredStore, key: str, count: int) -> bool:
    return len(await store.get(key)) == count


async def test_too_big_for_the_front_is_read_from_redis(redis_server: RedisServer) -> None:
    cache = redis_cache(redis_server, memory_layer_bytes=2000)
    store = build_store(cache)
    assert isinstance(store, LayeredStore)
    await store.start()
    try:
        big = make_entry(body=b"x" * 3000)
        assert await store.put(big)
        assert await store.front.get(big.key) == ()
        assert await store.get(big.key) == (big,)
    finally:
        await store.close()


async def test_peek_answers_only_what_get_would_answer_without_redis(replicas: Replicas
                                                                    ) -> None:
    """peek() (a hit answered where it was parsed) is the memory layer's copy while it is
    in step with Redis, and None (ask get()) otherwise: never an older answer than get's."""
    a, b = await replicas(memory_layer_ttl=0.3)
    old, new = make_entry(body=b"old"), make_entry(body=b"new")
    assert b.peek(old.key) is None  # nothing synced: only Redis can say
    await a.put(old)
    assert b.peek(old.key) is None
    assert await b.get(old.key) == (old,)
    assert b.peek(old.key) == (old,)  # synced by that get
    await a.put(new)
    await eventually(lambda: _peek_is_none(b, old.key), within=3)  # the ttl ran out
    assert await b.get(old.key) == (new,)
    assert b.peek(old.key) == (new,)
    await a.delete(old.key)  # a purge empties b's layer at once: peek then asks Redis
    await eventually(lambda: _peek_is_none(b, old.key), within=3)


async def _peek_is_none(store: LayeredStore, key: str) -> bool:
    return store.peek(key) is None
