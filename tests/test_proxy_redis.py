"""Proxies sharing one redis-server ([cache] store = "redis"): replicas share entries and
purges, and a dead Redis costs caching, never an answer."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis_server import RedisServer
from test_proxy_caching import Origin, ok

MAX_AGE = ok(**{"Cache-Control": "max-age=60"})


# Two proxies on two ports are two Hosts: without X-Forwarded-Host the key is the upstream
# URL, which they share (as the compose file's replicas do).
SHARED_KEYS = {"x_forwarded_host": False}


def redis_cache(server: RedisServer, **changes: Any) -> dict[str, Any]:
    return {"store": "redis", "redis_url": server.url, "redis_timeout": 0.2,
            "redis_retry_interval": 0.2, **changes}


# For the tests of sharing, which time nothing: a store that took longer than 0.2 s on a
# loaded machine (CI's 2 cores running the suite) was taken as unavailable, the response
# not shared, and B answered MISS.
PATIENT = {"redis_timeout": 2.0}


async def x_cache(client: TestClient, path: str) -> str:
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    await resp.read()
    return resp.headers["X-Cache"]


async def until(client: TestClient, path: str, wanted: str, within: float) -> float:
    start = time.monotonic()
    async with asyncio.timeout(within):
        while await x_cache(client, path) != wanted:
            await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_a_response_fetched_through_a_is_a_hit_on_b(origin, proxy, redis_server):
    o = Origin(a=MAX_AGE)
    up = await origin(o.app)
    a = await proxy(up, proxy=SHARED_KEYS, cache=redis_cache(redis_server, **PATIENT))
    b = await proxy(up, proxy=SHARED_KEYS, cache=redis_cache(redis_server, **PATIENT))
    assert await x_cache(a, "/a") == "MISS"
    assert await x_cache(b, "/a") == "HIT"
    assert await x_cache(b, "/a") == "HIT"  # from B's memory layer now
    assert o.calls["a"] == 1
    stats = await (await b.get("/_cacheproxy/stats")).json()
    assert stats["store"]["backend"] == "layered"


async def test_an_admin_purge_on_a_reaches_b(origin, proxy, redis_server):
    o = Origin(a=MAX_AGE)
    up = await origin(o.app)
    a = await proxy(up, proxy=SHARED_KEYS, cache=redis_cache(redis_server, **PATIENT))
    b = await proxy(up, proxy=SHARED_KEYS,
                    cache=redis_cache(redis_server, memory_layer_ttl=30, **PATIENT))
    await x_cache(a, "/a")
    assert await x_cache(b, "/a") == "HIT"  # B's memory layer holds it for up to 30 s
    purged = await a.post("/_cacheproxy/purge", params={"url": str(up.make_url("/a"))})
    assert purged.status == 200 and (await purged.json())["purged"] == 1, await purged.text()
    await until(b, "/a", "MISS", within=3)  # pub/sub, not the 30 s
    assert o.calls["a"] == 2


@pytest.mark.parametrize("layer", [0, 1 << 20], ids=["redis-only", "with-memory-layer"])
async def test_redis_killed_under_traffic(origin, proxy, redis_server, caplog, layer):
    caplog.set_level(logging.INFO, "cacheproxy.store")
    o = Origin(a=MAX_AGE, b=MAX_AGE)
    c = await proxy(await origin(o.app), cache=redis_cache(redis_server,
                                                            memory_layer_bytes=layer))
    assert await x_cache(c, "/a") == "MISS"
    redis_server.stop()
    start = time.monotonic()
    verdicts = [await x_cache(c, "/b") for _ in range(30)]  # each asserts a 200
    verdicts += await asyncio.gather(*(x_cache(c, "/b") for _ in range(30)))
    took = time.monotonic() - start
    assert set(verdicts) == {"MISS"} and o.calls["b"] == 60  # to the origin, uncached
    assert took < 1.5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "unavailable" in r.getMessage()]
    assert len(warnings) <= 1 + took / 0.2

    redis_server.start()  # empty: a restart after a crash
    await until(c, "/b", "HIT", within=2.0)
    assert any(r.getMessage().startswith("redis store is back") for r in caplog.records)


async def test_a_hung_redis_delays_one_request_by_redis_timeout_at_most(
        origin, proxy, redis_server):
    o = Origin(a=MAX_AGE)
    c = await proxy(await origin(o.app), cache=redis_cache(redis_server, memory_layer_bytes=0))
    assert await x_cache(c, "/a") == "MISS"
    redis_server.pause()  # connections stay open, nothing answers
    try:
        start = time.monotonic()
        verdicts = await asyncio.gather(*(x_cache(c, "/a") for _ in range(20)))
        assert set(verdicts) == {"MISS"}  # from the origin, uncached
        # Not 20 waits of redis_timeout (0.2 s) in a row, which would be 4 s: the first
        # failure marks Redis down and the rest skip it (bound loose for a loaded CI host).
        assert time.monotonic() - start < 2.0
    finally:
        redis_server.resume()
    await until(c, "/a", "HIT", within=2.0)  # the entry was there all along


async def test_admin_calls_answer_503_while_redis_is_down(origin, proxy, redis_server):
    o = Origin(a=MAX_AGE)
    c = await proxy(await origin(o.app), cache=redis_cache(redis_server))
    await x_cache(c, "/a")
    redis_server.stop()
    for method, path, params in [
        ("POST", "/_cacheproxy/purge", {"url": "/a"}),
        ("POST", "/_cacheproxy/purge", {"prefix": "/"}),
        ("POST", "/_cacheproxy/clear", {}),
        ("GET", "/_cacheproxy/entries", {}),
        ("PURGE", "/a", {}),
    ]:
        resp = await c.request(method, path, params=params)
        assert resp.status == 503, (method, path)
        assert "store unavailable" in (await resp.json())["error"]
    assert (await c.get("/_cacheproxy/stats")).status == 200  # the last known figures


async def test_an_unsafe_request_while_redis_is_down_still_reaches_the_origin(
        origin, proxy, redis_server):
    o = Origin(a=MAX_AGE)
    c = await proxy(await origin(o.app), cache=redis_cache(redis_server))
    redis_server.stop()
    resp = await c.post("/a", data=b"x")
    assert resp.status == 200
