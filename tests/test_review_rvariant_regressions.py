"""A Redis lookup reads only the variants the request may select (RFC 9111 §4.1).

The Redis store keeps one hash per URL, a field per Vary variant. It read the whole hash
(HGETALL), every variant's body included, to serve one: 32 variants of 1 MiB made each
hit read 32 MiB (tests/test_review_faults_regressions.py
test_a_hit_on_one_variant_does_not_read_every_variant_from_redis). These tests hold what
the change must keep: one round trip for a key with one variant, fwd=vary-miss when the
variants left unread are all the key holds, damaged entries dropped, the memory layer's
whole copy, and a 304 that revalidates one variant."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict
from redis.asyncio import Redis
from redis_server import RedisServer
from test_store_redis import make_entry, redis_cache

from cacheproxy.http.cache_key import Selectable
from cacheproxy.store import RedisStore

# MONITOR's line: `+1700000000.123456 [0 127.0.0.1:5555] "evalsha" "..."`; a command a
# Lua script runs shows `[0 lua]` instead of the client's address.
_LINE = re.compile(rb'^\+?\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]*)"(.*)$')
# A new connection's handshake (this monitor's own ECHO client's among them) and the
# store's stats task: not what a lookup sends.
_NOT_PER_REQUEST = frozenset({"hello", "client", "info", "ping", "select", "auth"})


class Monitor:
    """The commands clients send to redis-server, as MONITOR reports them: what the proxy
    asks of Redis, one entry per round trip (a script's own commands are left out, as are
    the INFO calls of the store's stats task)."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Monitor:
        self._reader, self._writer = await asyncio.open_connection(
            "127.0.0.1", self.server.port, limit=1 << 26)
        self._writer.write(b"MONITOR\r\n")
        assert await self._reader.readline() == b"+OK\r\n"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._writer is not None
        self._writer.close()

    async def commands(self) -> list[tuple[str, bytes]]:
        """(command, its arguments as MONITOR quotes them) sent since the last call."""
        assert self._reader is not None
        mark = uuid.uuid4().hex.encode()
        other = Redis.from_url(self.server.url)
        try:
            await other.echo(mark)
        finally:
            await other.aclose()
        seen: list[tuple[str, bytes]] = []
        async with asyncio.timeout(5):
            while True:
                line = (await self._reader.readline()).rstrip(b"\r\n")
                m = _LINE.match(line)
                if m is None:
                    continue
                source, command, args = m.group(1), m.group(2).lower().decode(), m.group(3)
                if command == "echo" and mark in args:
                    return seen
                if source != b"lua" and command not in _NOT_PER_REQUEST:
                    seen.append((command, args))


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def redis_only(server: RedisServer, **changes: Any) -> dict[str, Any]:
    """The Redis store with no memory layer in front: every lookup asks Redis."""
    return {"store": "redis", "redis_url": server.url, "memory_layer_bytes": 0, **changes}


def negotiated(calls: list[str], **extra: str) -> web.Application:
    """/page, varying on Accept-Language: the body names the language."""
    async def page(request: web.Request) -> web.Response:
        lang = request.headers.get("Accept-Language", "none")
        calls.append(lang)
        return web.Response(text=f"page in {lang}", headers={
            "Cache-Control": "max-age=600", "Vary": "Accept-Language", **extra})

    app = web.Application()
    app.router.add_get("/page", page)
    return app


async def fetch(client: Any, lang: str | None, path: str = "/page") -> tuple[str, str, str]:
    """(body, X-Cache, Cache-Status) for a request in lang."""
    headers = {} if lang is None else {"Accept-Language": lang}
    resp = await client.get(path, headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.text(), resp.headers["X-Cache"], resp.headers["Cache-Status"]


# -- the store ---------------------------------------------------------------------------------

async def test_the_store_reads_only_the_variants_a_request_may_select(
        redis_server: RedisServer) -> None:
    """RedisStore.get with a request's headers answers the variants whose Vary'd values
    are the request's, and counts the others as left unread (they cannot be selected,
    RFC 9111 §4.1); without headers (the admin API, the memory layer's fill) every
    variant. A variant of another Vary field set that the request also matches is read
    too: select_variant then picks the newest. Severity: medium (the read grew with the
    variants clients chose to fill)."""
    store = RedisStore(redis_cache(redis_server))
    await store.start()
    try:
        t = time.time()
        en = make_entry(vary=("accept-language",), values=("en",), at=t)
        de = make_entry(vary=("accept-language",), values=("de",), at=t + 1)
        gz = make_entry(vary=("accept-encoding",), values=("gzip",), at=t + 2)
        for entry in (en, de, gz):
            assert await store.put(entry)
        assert await store.get("http://o/a") == (gz, de, en)
        got = await store.get("http://o/a", _headers(("Accept-Language", "EN")))
        assert isinstance(got, Selectable) and got == (en,) and got.unread == 2
        both = await store.get("http://o/a", _headers(("Accept-Language", "de"),
                                                       ("Accept-Encoding", "gzip")))
        assert both == (gz, de) and both.unread == 1
        none = await store.get("http://o/a", _headers(("Accept-Language", "fr")))
        assert none == () and none.unread == 3
        one = make_entry(key="http://o/one", vary=("accept-language",), values=("en",))
        assert await store.put(one)
        # One variant: read whole, matching or not (lookup's select_variant decides).
        assert await store.get("http://o/one", _headers(("Accept-Language", "fr"))) == (one,)
        assert await store.get("http://o/none", _headers()) == ()
    finally:
        await store.close()


def _headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


# -- round trips ---------------------------------------------------------------------------------

async def test_a_hit_on_a_key_with_one_variant_is_one_round_trip(
        origin, proxy, redis_server) -> None:
    """The common key holds one response: its hit must stay one command to Redis (it
    was one HGETALL; now one EVALSHA whose script answers the whole hash when it holds
    at most one variant), not a look then a read. A key with several variants takes
    two: the look (the field names), then HMGET of the matching variant alone.
    Severity: medium (a round trip more on every hit would cost every replica)."""
    calls: list[str] = []
    app = negotiated(calls)

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain", headers={"Cache-Control": "max-age=600"})

    app.router.add_get("/plain", plain)
    client = await proxy(await origin(app), cache=redis_only(redis_server))
    assert (await fetch(client, None, "/plain"))[1] == "MISS"
    assert (await fetch(client, "en"))[1] == "MISS"
    assert (await fetch(client, None, "/plain"))[1] == "HIT"  # (the script is loaded now)
    async with Monitor(redis_server) as monitor:
        await monitor.commands()
        assert (await fetch(client, None, "/plain"))[:2] == ("plain", "HIT")
        assert [c for c, _ in await monitor.commands()] == ["evalsha"]
        body, x_cache, _ = await fetch(client, "en")  # one variant, with Vary
        assert (body, x_cache) == ("page in en", "HIT")
        assert [c for c, _ in await monitor.commands()] == ["evalsha"]
        assert (await fetch(client, "de"))[1] == "MISS"  # now two variants
        await monitor.commands()
        body, x_cache, _ = await fetch(client, "de")
        assert (body, x_cache) == ("page in de", "HIT")
        sent = await monitor.commands()
        assert [c for c, _ in sent] == ["evalsha", "hmget"]
        assert b"de" in sent[1][1] and b"en" not in sent[1][1], sent[1]
    assert calls == ["en", "de"]


# -- Cache-Status -------------------------------------------------------------------------------

async def test_a_miss_on_another_variant_stays_a_vary_miss(origin, proxy, redis_server) -> None:
    """RFC 9211 §2.2: fwd=vary-miss when the cache holds responses for the URI but none
    for the request's Vary'd values, uri-miss when it holds none. The store now leaves
    out the variants a request cannot select; when none it holds can be, the lookup
    sees no variant, and must still say vary-miss (the store tells it how many it left
    unread), with one variant stored or several. Severity: low (Cache-Status, read by
    people and tools debugging a cache's hit ratio)."""
    calls: list[str] = []
    client = await proxy(await origin(negotiated(calls)), cache=redis_only(redis_server))
    assert "fwd=uri-miss" in (await fetch(client, "en"))[2]
    assert "fwd=vary-miss" in (await fetch(client, "de"))[2]  # one variant held
    assert "fwd=vary-miss" in (await fetch(client, "fr"))[2]  # two held, neither read
    for lang in ("en", "de", "fr"):
        body, x_cache, status = await fetch(client, lang)
        assert (body, x_cache) == (f"page in {lang}", "HIT") and "; hit" in status
    assert calls == ["en", "de", "fr"]


# -- damaged entries -----------------------------------------------------------------------------

async def test_damaged_variant_fields_are_still_dropped(
        origin, proxy, redis_server, raw, caplog) -> None:
    """A variant whose record does not decode (another version's, written by hand) is a
    miss and is deleted, with a warning, as when the whole hash was read; with several
    variants that is the one HMGET read, and the others stay (a vary-miss: they are
    still held). A field whose name is no variant's JSON is read whatever the request
    (its entry decides), and dropped the same way. Severity: medium (a damaged record
    must never go out as an answer, nor stay to fail every lookup)."""
    calls: list[str] = []
    client = await proxy(await origin(negotiated(calls)), cache=redis_only(redis_server))
    for lang in ("en", "de"):
        assert (await fetch(client, lang))[1] == "MISS"
    (name,) = await raw.keys("*e2:*")
    fields = {f for f in await raw.hkeys(name) if f != b"#"}
    (en_field,) = [f for f in fields if b'"en"' in f]
    await raw.hset(name, mapping={en_field: b"not a record", b"not json": b"nor this"})
    with caplog.at_level(logging.WARNING, logger="cacheproxy.store"):
        body, x_cache, status = await fetch(client, "en")
    assert (body, x_cache) == ("page in en", "MISS") and "fwd=vary-miss" in status
    dropped = [r.getMessage() for r in caplog.records if "unreadable entry" in r.getMessage()]
    assert len(dropped) == 2, dropped  # the en record and the unnamed one
    assert b"not json" not in await raw.hkeys(name)
    assert (await fetch(client, "en"))[:2] == ("page in en", "HIT")
    assert (await fetch(client, "de"))[:2] == ("page in de", "HIT")
    assert calls == ["en", "de", "en"]


# -- the memory layer ----------------------------------------------------------------------------

async def test_the_memory_layer_still_holds_every_variant_it_filled(
        origin, proxy, redis_server) -> None:
    """With the memory layer in front (the default), the front's copy of a key stands
    for all of it: it is filled from a whole read of Redis, so a replica that looked up
    one variant answers the key's other variants from memory, with no command to Redis,
    and serves each its own body. A purge through the other replica still reaches it.
    Severity: medium (a front holding one variant as the whole key would answer the
    others as misses, or worse, wrongly)."""
    calls: list[str] = []
    up = await origin(negotiated(calls))
    shared = {"x_forwarded_host": False}
    a = await proxy(up, proxy=shared, cache={"store": "redis", "redis_url": redis_server.url})
    b = await proxy(up, proxy=shared, cache={"store": "redis", "redis_url": redis_server.url})
    for lang in ("en", "de"):
        assert (await fetch(a, lang))[1] == "MISS"
    async with Monitor(redis_server) as monitor:
        assert (await fetch(b, "en"))[:2] == ("page in en", "HIT")  # fills b's front
        assert [c for c, _ in await monitor.commands()] == ["hgetall"]
        assert (await fetch(b, "de"))[:2] == ("page in de", "HIT")
        assert (await fetch(b, "en"))[:2] == ("page in en", "HIT")
        assert await monitor.commands() == []
    assert "fwd=vary-miss" in (await fetch(b, "fr"))[2]
    purge = await a.post("/_cacheproxy/purge", params={"url": str(up.make_url("/page"))})
    assert purge.status == 200 and (await purge.json())["purged"] == 1, await purge.text()
    deadline = time.monotonic() + 5
    while (await fetch(b, "de"))[1] != "MISS":
        assert time.monotonic() < deadline, "the purge did not reach b's memory layer"
        await asyncio.sleep(0.05)
    assert calls[:3] == ["en", "de", "fr"] and calls[3:4] == ["de"]


# -- revalidation --------------------------------------------------------------------------------

async def revalidated(client: Any, lang: str, path: str) -> bool:
    """Was the request answered from storage after a 304 (RFC 9211: fwd=stale,
    fwd-status=304), with its own language's body?"""
    body, x_cache, status = await fetch(client, lang, path)
    assert (body, x_cache) == (f"page in {lang}", "HIT"), (body, x_cache, status)
    return "fwd=stale" in status and "fwd-status=304" in status


async def test_a_304_revalidates_one_variant_under_redis(origin, proxy, redis_server) -> None:
    """RFC 9111 §4.3.4: a 304 freshens the stored response it validated (its fields,
    its freshness), and the cache stores it where the store still holds the response
    as read at lookup; with the store reading only the variants the request may select,
    that check reads those too. en and de are stored stale (Age past max-age), each with
    its own strong tag; en's 304 (max-age=600) makes en a hit, de is left as stored and
    is revalidated with its own tag. Two variants sharing one strong tag: the 304 that
    validates en leaves de for its own request (§4.3.4's initial set is the responses
    that could have been chosen for the request, which de could not). Severity: high (a
    304 lost would send every request to the origin; one put over the wrong variant would
    serve another language)."""
    seen: list[tuple[str, str | None]] = []
    shared_tag: list[bool] = [False]

    async def page(request: web.Request) -> web.Response:
        lang = request.headers.get("Accept-Language", "none")
        tag = '"v1"' if shared_tag[0] else f'"{lang}-v1"'
        inm = request.headers.get("If-None-Match")
        seen.append((lang, inm))
        if inm == tag:
            return web.Response(status=304, headers={
                "ETag": tag, "Cache-Control": "max-age=600", "Date": formatdate(usegmt=True)})
        return web.Response(text=f"page in {lang}", headers={
            "ETag": tag, "Cache-Control": "max-age=1", "Age": "5",
            "Vary": "Accept-Language"})

    app = web.Application()
    app.router.add_get("/page", page)
    app.router.add_get("/shared", page)
    client = await proxy(await origin(app), cache=redis_only(redis_server))
    for lang in ("en", "de"):
        assert (await fetch(client, lang))[1] == "MISS"
    assert await revalidated(client, "en", "/page")
    assert (await fetch(client, "en"))[:2] == ("page in en", "HIT")
    assert await revalidated(client, "de", "/page")
    assert (await fetch(client, "de"))[:2] == ("page in de", "HIT")
    assert seen == [("en", None), ("de", None), ("en", '"en-v1"'), ("de", '"de-v1"')]

    seen.clear()
    shared_tag[0] = True
    for lang in ("en", "de"):
        assert (await fetch(client, lang, "/shared"))[1] == "MISS"
    assert await revalidated(client, "en", "/shared")
    assert (await fetch(client, "en", "/shared"))[:2] == ("page in en", "HIT")
    assert await revalidated(client, "de", "/shared")
    assert (await fetch(client, "de", "/shared"))[:2] == ("page in de", "HIT")
    assert seen == [("en", None), ("de", None), ("en", '"v1"'), ("de", '"v1"')]
