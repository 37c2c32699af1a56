"""A review of the Redis store and --workers under faults (a Redis killed, hung, full,
read-only or holding damaged records): each test showed a defect against a real
redis-server, real aiohttp origins and the real proxy on 127.0.0.1."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.asyncio import Redis
from redis_server import RedisServer, _pong

BODY = b"0123456789" * 1000


def _versioned_origin(state: dict[str, int]) -> web.Application:
    """GET /x answers "v<N>" (max-age=600, an ETag); a POST makes N one more."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"v{state['version']}",
                            headers={"Cache-Control": "max-age=600",
                                     "ETag": f'"{state["version"]}"'})

    async def change(request: web.Request) -> web.Response:
        state["version"] += 1
        return web.Response(text="changed")

    app = web.Application()
    app.router.add_get("/{name}", page)
    app.router.add_post("/{name}", change)
    return app


# -- serial.py: a record cut short ------------------------------------------------------------


async def test_a_truncated_record_is_a_miss_not_a_short_body(
        origin: Any, proxy: Any, redis_server: RedisServer) -> None:
    """README (The Redis store): "a record from another version or a damaged one is treated
    as a miss and deleted". A record is its header then the raw body, and nothing checked
    the body's length when it was read: a value cut short (a damaged or half-written record,
    another program's write) was served as a HIT with the shorter body, and with a
    Content-Length made from that body (proxy/replay.py), so the client could not even see
    that the answer was cut: 5,000 of the 10,000 bytes the origin sent, as a complete 200.
    The record already carries what the body's length must be (its Content-Length field, and
    the size written beside it). A shared cache must not hand out a different body than the
    origin's (RFC 9111 §3: only a complete response is stored and reused). Severity: high
    (a wrong body served as complete, to every client, for the entry's lifetime)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=BODY, headers={"Cache-Control": "max-age=600"})

    app = web.Application()
    app.router.add_get("/a", page)
    c = await proxy(await origin(app), cache={"store": "redis", "redis_url": redis_server.url,
                                              "memory_layer_bytes": 0})
    assert await (await c.get("/a")).read() == BODY
    raw = Redis.from_url(redis_server.url)
    try:
        [name] = await raw.keys("cacheproxy:e2:*")
        [(field, record)] = [(f, v) for f, v in (await raw.hgetall(name)).items() if f != b"#"]
        await raw.hset(name, field, record[:-5000])  # the body cut in half
        resp = await c.get("/a")
        assert resp.status == 200
        assert await resp.read() == BODY
        assert resp.headers["X-Cache"] == "MISS"
    finally:
        await raw.aclose()


# -- Redis at maxmemory under noeviction --------------------------------------------------------


async def test_an_invalidation_by_post_holds_when_redis_is_full_under_noeviction(
        origin: Any, proxy: Any, redis_server: RedisServer) -> None:
    """RFC 9111 §4.4: a cache MUST invalidate the target URI after a successful unsafe
    request. The store's delete sent UNLINK and the purge message's PUBLISH in a MULTI
    transaction; Redis at maxmemory with noeviction refuses every command queued in a MULTI
    (its OOM rule for transactions), though it runs UNLINK and PUBLISH alone (they are not
    refused under OOM: they are how memory is freed). So with Redis full, a POST's
    invalidation was lost silently (the driver ignores a failed delete, which it takes for an
    outage) and the pre-POST response went on being served as a fresh HIT for its whole
    max-age, by every replica; and the admin API's purge of a URL answered 503, the purge an
    operator reaches for when Redis is full. Severity: medium (stale content past an
    invalidation, in a state the README names: noeviction at maxmemory)."""
    state = {"version": 1}
    c = await proxy(await origin(_versioned_origin(state)),
                    cache={"store": "redis", "redis_url": redis_server.url})
    assert await (await c.get("/a")).text() == "v1"
    assert await (await c.get("/b")).text() == "v1"
    raw = Redis.from_url(redis_server.url)
    try:
        await raw.set("filler", b"x" * 2_000_000)
        await raw.config_set("maxmemory-policy", "noeviction")
        await raw.config_set("maxmemory", "1mb")  # full: writes now get OOM errors
        assert (await c.post("/a")).status == 200
        resp = await c.get("/a")
        assert await resp.text() == "v2", resp.headers.get("X-Cache")
        purged = await c.post("/_cacheproxy/purge", params={"url": "/b"})
        assert purged.status == 200, await purged.text()
        assert (await purged.json())["purged"] == 1
    finally:
        await raw.config_set("maxmemory", "0")
        await raw.aclose()


# -- an invalidation while Redis does not answer ----------------------------------------------


class _PersistentRedis(RedisServer):
    """redis-server with an append-only file fsynced per write: a restart keeps its data."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    def start(self) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _pong(self.port):
            assert self.process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)


async def test_an_invalidation_while_redis_is_down_holds_once_it_is_back(
        origin: Any, proxy: Any, tmp_path: Path) -> None:
    """RFC 9111 §4.4: after a successful unsafe request the cache MUST invalidate the target
    URI. With Redis down for a moment (a crash and restart with its data: AOF, RDB, a
    failover to a replica; a network blip), the POST reached the origin, the store's UNLINK
    failed and the driver dropped the failure (store/base.discard: best effort, the client
    must get its answer). Once Redis was back, the response from before the POST was still
    in it and was served as a fresh HIT for the rest of its max-age (10 minutes here), by
    this proxy and by every replica: the invalidation never happened. The proxy knows which
    invalidations it could not make; it must make them when Redis is back, before the key
    is served again (nginx and Squid invalidate in a store they own, so the question does
    not arise there). Severity: medium (stale content past an invalidation, after any short
    Redis outage)."""
    redis = _PersistentRedis(tmp_path)
    redis.start()
    try:
        state = {"version": 1}
        up = await origin(_versioned_origin(state))
        cache = {"store": "redis", "redis_url": redis.url, "redis_timeout": 0.2,
                 "redis_retry_interval": 0.2}
        # (two replicas: keyed by the upstream, not by each one's Host)
        c = await proxy(up, cache=cache, proxy={"x_forwarded_host": False})
        other = await proxy(up, cache=cache, proxy={"x_forwarded_host": False})
        assert await (await c.get("/a")).text() == "v1"
        raw = Redis.from_url(redis.url)
        try:  # (the fill is stored once its body is in, after the client has it)
            async with asyncio.timeout(3):
                while not await raw.keys("cacheproxy:e2:*"):
                    await asyncio.sleep(0.01)
        finally:
            await raw.aclose()
        redis.stop()  # SIGKILL; the entry is in its append-only file
        assert (await c.post("/a")).status == 200  # the origin now has v2
        redis.start()  # with its data
        await asyncio.sleep(0.6)  # past the retry interval: Redis is asked again
        for client in (other, c, other):  # the other replica never saw the POST
            resp = await client.get("/a")
            assert await resp.text() == "v2", resp.headers.get("X-Cache")
    finally:
        redis.stop()


# -- a key of another type --------------------------------------------------------------------


async def test_a_key_of_another_type_is_replaced_by_the_next_fill(
        origin: Any, proxy: Any, redis_server: RedisServer) -> None:
    """README (The Redis store): a damaged record "is treated as a miss and deleted". A key
    under the cache's prefix that is not a hash (a string or a list, written by another
    program or another version of the layout, and without a TTL) made every read and every
    put fail with WRONGTYPE: the URL was a miss for good, fetched from the origin on every
    request, with a "refused a command" warning every retry interval, and the key never
    went (no TTL). The put must replace what it cannot use, as it does a damaged variant
    list. Severity: low (the cache off for that URL, no wrong answer)."""
    state = {"version": 1}
    c = await proxy(await origin(_versioned_origin(state)),
                    cache={"store": "redis", "redis_url": redis_server.url})
    key = c.app_proxy.cache_key("http", f"127.0.0.1:{c.server.port}", "/a")
    raw = Redis.from_url(redis_server.url)
    try:
        await raw.set(f"cacheproxy:e2:{key}", b"not a hash")
        assert (await c.get("/a")).headers["X-Cache"] == "MISS"
        async with asyncio.timeout(3):  # (stored once the body is in)
            while await raw.type(f"cacheproxy:e2:{key}") != b"hash":
                await asyncio.sleep(0.01)
        assert (await c.get("/a")).headers["X-Cache"] == "HIT"
    finally:
        await raw.aclose()


# -- a server that is not Redis ---------------------------------------------------------------


async def test_a_server_that_only_looks_like_redis_costs_caching_not_a_500(
        origin: Any, proxy: Any) -> None:
    """README (The Redis store): when Redis is down or not itself, "requests go straight to
    the origin, uncached (no 5xx is caused by the store)". A server on cache.redis_url that
    speaks RESP but is not Redis (here one that answers +OK to every command: another
    RESP service on the port, a misbehaving Redis-compatible proxy) gave replies of another
    shape than the commands', and the store read them outside its guard ("too many values
    to unpack", "'int' object is not subscriptable"): every request got a 500 with the
    traceback in the log, for as long as it was configured so. A reply of the wrong shape
    must count as a failed call, like a protocol error. Severity: medium (every request a
    500; a misconfiguration, but exactly the one readyz and the retry logic are for)."""
    async def resp_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(b"+OK\r\n" * max(1, data.count(b"*")))  # one per command
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(resp_server, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        state = {"version": 1}
        for layer in (0, 1 << 20):
            c = await proxy(await origin(_versioned_origin(state)),
                            cache={"store": "redis", "redis_url": f"redis://127.0.0.1:{port}/0",
                                   "memory_layer_bytes": layer})
            for _ in range(2):
                resp = await c.get("/a")
                assert resp.status == 200, await resp.text()
                assert await resp.text() == "v1"
    finally:
        server.close()


# -- a record under another URL's key ----------------------------------------------------------


async def test_a_record_for_another_url_is_not_served_for_this_one(
        origin: Any, proxy: Any, redis_server: RedisServer) -> None:
    """A record names the key it was stored for, and the hash it lies in is named after that
    key; nothing compared the two when it was read. A record found under /a's hash that was
    stored for /b (copied or renamed by an operator's script or another program, a
    migration of redis_prefix gone wrong) was served for /a, /b's body as a HIT: a wrong
    body, the one thing a cache must never do (RFC 9111 §4: a stored response is reused
    only for a request whose target URI matches the key). Such a record is foreign or
    damaged, and the README's rule for those applies: a miss, and deleted. Severity: low
    (it takes a record moved by hand or by another program; the answer is then wrong)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"page {request.path}", headers={"Cache-Control": "max-age=600"})

    app = web.Application()
    app.router.add_get("/{name}", page)
    c = await proxy(await origin(app), cache={"store": "redis", "redis_url": redis_server.url,
                                              "memory_layer_bytes": 0})
    assert await (await c.get("/b")).text() == "page /b"
    key_a = c.app_proxy.cache_key("http", f"127.0.0.1:{c.server.port}", "/a")
    key_b = c.app_proxy.cache_key("http", f"127.0.0.1:{c.server.port}", "/b")
    raw = Redis.from_url(redis_server.url)
    try:
        async with asyncio.timeout(3):  # (stored once the body is in)
            while not await raw.exists(f"cacheproxy:e2:{key_b}"):
                await asyncio.sleep(0.01)
        await raw.copy(f"cacheproxy:e2:{key_b}", f"cacheproxy:e2:{key_a}")
        resp = await c.get("/a")
        assert await resp.text() == "page /a", resp.headers["X-Cache"]
    finally:
        await raw.aclose()
