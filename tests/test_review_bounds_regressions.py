"""Review (bounds): every structure that lives longer than a request and grows with what
clients or origins send (hit-for-pass marks, collapse and invalidation tables, clock-skew
warnings, per-host stats and /metrics labels, the pool's per-origin maps, forward-mode
plans, the memoised heads of hits, the parsers' memo tables, the Redis memory layer) and
whether `cache.max_bytes` bounds the memory of what the store holds. Measured against a
real proxy in front of origins on 127.0.0.1, by the store's own figures beside the
objects it holds, and by what stays allocated once the store is emptied."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import sys
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from redis_server import RedisServer
from support import raw_get, raw_origin
from test_forward_mode import forward_get
from test_review_forward2_regressions import Nameserver

from cacheproxy.http.stored import CachedResponse
from cacheproxy.proxy import destinations

_PATH = re.compile(rb"^GET /u/(\d+)")


def _response(fields: Callable[[int], list[str]]) -> Callable[[bytes], bytes]:
    """An origin's answer to GET /u/<n>: an empty storable 200 with fields(n)."""
    def answer(head: bytes) -> bytes:
        match = _PATH.match(head)
        n = int(match.group(1)) if match else 0
        lines = ["HTTP/1.1 200 OK", "Content-Length: 0", *fields(n)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()
    return answer


def _unique_fields(n: int) -> list[str]:
    """300 short fields whose names and values no other response has (X-<n>-<i>)."""
    return ["Cache-Control: max-age=3600", *(f"X-{n}-{i}: {i}" for i in range(300))]


def _private_list(n: int) -> list[str]:
    """A qualified private="..." naming 1,000 fields of its own (§5.2.2.7)."""
    names = ",".join(f"f{n}x{i}" for i in range(1000))
    return [f'Cache-Control: max-age=3600, private="{names}"']


def _long_vary(n: int) -> list[str]:
    """A Vary of 1,000 field names the request does not send (§4.1)."""
    return ["Cache-Control: max-age=3600",
            "Vary: " + ", ".join(f"v{n}x{i}" for i in range(1000))]


def held_bytes(entries: Iterable[CachedResponse]) -> int:
    """What the objects these entries hold weigh (sys.getsizeof), each object counted once
    however many entries share it: the entry, its key, body, field tuples and strings,
    directives, the fields private="..." names, its Vary names and values."""
    seen: set[int] = set()
    total = 0

    def weigh(*objects: object) -> None:
        nonlocal total
        for o in objects:
            if id(o) not in seen:
                seen.add(id(o))
                total += sys.getsizeof(o)

    for e in entries:
        weigh(e, e.key, e.body, e.names, e.values, *e.names, *e.values, e.directives,
              e.directives.private_fields, *e.directives.private_fields, e._vary,
              e.vary, e.vary_values, *e.vary, *(v for v in e.vary_values if v is not None))
    return total


async def _fill(client: Any, count: int, first: int = 0) -> None:
    for n in range(first, first + count):  # (raw: aiohttp's client takes 128 fields)
        status, _, _ = await raw_get(client, f"/u/{n}")
        assert status == 200


@pytest.mark.parametrize("fields", [_unique_fields, _private_list, _long_vary],
                         ids=["unique-fields", "private-list", "long-vary"])
async def test_max_bytes_counts_what_a_stored_response_holds(
        proxy: Any, fields: Callable[[int], list[str]]) -> None:
    """cache.max_bytes did not bound the memory of what the store held: a response's size
    counted the characters of its field names and values and 16 bytes a line, taking
    every name and value to be shared with other entries (interned), which only the
    usual ones are; and it counted nothing for the fields a qualified private="..." names
    (a tuple of strings kept in the entry's directives) nor for the Vary field names and
    the tuple of the request's values (absent ones, None, counted 0). An origin (any site,
    in forward mode) whose empty responses carry 300 fields of their own, a
    private="..." list or a long Vary held 4 to 8 times the bytes `stats` and
    `cacheproxy_store_bytes` showed: a full 256 MiB store of them, 1-2 GiB of RSS.
    Varnish and nginx count a stored object's whole header block. Now every value and
    every uncommon name counts as a string object of its own, and the private names and
    Vary tuples count too: what the entries hold (each object once, shared ones too) is
    within what the store accounts. Severity: high (the one memory bound an operator sets
    is exceeded several times over by responses an origin chooses)."""
    async with raw_origin(_response(fields)) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        await _fill(client, 30)
        store = client.app_proxy.store
        entries = [v for k in store.keys_now() for v in store.peek(k)]
        assert len(entries) == 30
        assert store.stats().bytes >= held_bytes(entries)


def _pinning(n: int) -> list[str]:
    """Values no real response repeats, each long: a private="..." list of 1,000 names,
    a Date and an Expires of 20 KB, and 300 field names of its own."""
    junk = f"{n}-" + "j" * 20_000
    return [*_private_list(n), f"Date: {junk}", f"Expires: {junk}",
            *(f"X-{n}-{i}: {i}" for i in range(300))]


async def test_what_stored_responses_parsed_goes_with_them(proxy: Any) -> None:
    """Memo tables kept what an origin sent after its responses had left the store,
    beyond every bound: parse_response_directives memoised 2,048 Cache-Control values
    (with what was parsed from them: a private="..." list of up to 20,000 names),
    parse_http_date 4,096 Date and Expires values, the shared field-names tuples 4,096
    shapes, each up to the 128 KiB an answer's fields may hold. Some GBs for a few
    thousand responses of a site (in forward mode, any site a client visits) that no
    purge, eviction or max_bytes gave back. Here 60 responses of ~130 KB of such fields
    left ~6 MB behind once the store was emptied; now only values short enough to
    repeat are memoised (256 characters, 64 for a date, 64 field names of 1,024
    characters). Severity: high (memory grows with responses an origin chooses, past
    cache.max_bytes, for good)."""
    async with raw_origin(_response(_pinning)) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        store = client.app_proxy.store
        await _fill(client, 5, first=10_000)  # (what the first requests make once)
        await store.clear()
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            await _fill(client, 60)
            assert store.stats().entries == 60
            await store.clear()
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert after - before < 1_500_000


async def test_field_blocks_of_replayed_entries_are_bounded(proxy: Any) -> None:
    """Hits answered on the full path (a Range, a HEAD, a conditional request) keep each
    entry's fields as a ready multidict (respond.HeaderBlocks) for the last 4,096 entries
    replayed, bounded in number only: a block holds a new string per field name beside
    its own structure, ~100 bytes a field that cache.max_bytes does not count. Entries of
    many fields (an origin's, up to 128 KiB of them) replayed so doubled what the store
    holds: here 40 entries of 300 fields asked for with a Range left ~1.5 MB behind; a
    full store of them, as much again as max_bytes. Now a block is kept only for entries
    of up to 64 fields and all of them within 8 MiB (the bound of replay.py's heads);
    larger ones are made when asked. Severity: medium (memory past max_bytes, by as
    much as the store, for responses an origin chooses)."""
    async with raw_origin(_response(_unique_fields)) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        await _fill(client, 40)
        await _fill(client, 40)  # (hits: whatever a first hit makes once)
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            for n in range(40):
                status, _, _ = await raw_get(client, f"/u/{n}", "Range: bytes=0-0")
                assert status == 416  # (an empty body: no byte 0)
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert after - before < 500_000


async def test_the_redis_memory_layer_index_is_bounded_by_its_bytes(
        proxy: Any, redis_server: RedisServer) -> None:
    """The Redis store's memory layer bounds the entries it holds by memory_layer_bytes,
    but the index of keys it takes as in step with Redis (LayeredStore._synced) was
    bounded by a number of keys, memory_layer_bytes / 240 (139,810 for the default
    32 MiB), and kept keys the layer had evicted until their memory_layer_ttl passed. A
    client chooses a key's length (a target and a Host of 8 KiB each): the index could
    hold GBs of keys beside a 32 MiB layer, as fast as the proxy stores distinct URLs
    (here, 256 KiB of layer, 1,000 URLs of 500 characters: 514 KB of keys in the index
    for 24 entries in the layer). Now the index counts its keys' characters (and ~100
    bytes each) within memory_layer_bytes too; a key let go is asked of Redis again.
    Severity: medium (memory past the layer's bound, with long distinct URLs)."""
    layer = 256 * 1024
    long = "/u/{n}?" + "k" * 500
    async with raw_origin(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"
                          b"Cache-Control: max-age=3600\r\n\r\nx") as port:
        client = await proxy(f"http://127.0.0.1:{port}", cache={
            "store": "redis", "redis_url": redis_server.url, "memory_layer_bytes": layer,
            "memory_layer_ttl": 60.0})
        for n in range(1000):
            status, _, _ = await raw_get(client, long.format(n=n))
            assert status == 200
        store = client.app_proxy.store
        assert store.front.stats().bytes <= layer
        assert sum(map(len, store._synced)) <= layer


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_misses_for_distinct_variants_are_not_serialised(
        proxy: Any, origin: Any, store: str, request: pytest.FixtureRequest) -> None:
    """Found while measuring many Vary variants of one URL: 30,000 requests with distinct
    Accept-Language values, 32 at a time, took 99 s (3.3 ms each, one after the other:
    ~300 a second, where distinct URLs went at ~5,000). Every miss for a Vary'd URL waits
    behind the one in flight (collapsing), and when that leader's answer is another
    variant's, it waits again behind the next: a site that varies on User-Agent or
    Accept-Language has its misses go to the origin one at a time, each client's latency
    that of all the misses queued before it (up to cache.collapse_timeout, 10 s, then
    alone). Varnish serialises Vary'd misses on its waiting list the same way (its docs
    warn about Vary: User-Agent); nginx's proxy_cache_lock is off by default. Here 8
    concurrent requests of 8 new variants, once the URL's Vary is known, should reach
    the origin together. Severity: medium (latency and throughput, not correctness).
    Now a miss waits behind a fetch of its own variant (cache_key.wait_group): the 8 go
    together, and the 4 requests of one more variant make one upstream request. With the
    Redis store (no memory layer) once the key holds two variants, Redis reads only those a
    request may select, and says the Vary names of the others (Selectable.varies_on)."""
    from aiohttp import web

    in_flight, most = 0, 0
    calls = [0]
    gated, all_in = [False], asyncio.Event()

    async def vary(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        calls[0] += 1
        in_flight += 1
        most = max(most, in_flight)
        if in_flight == 8:
            all_in.set()
        try:
            if gated[0]:  # the 8 answer once all are in (2 s at most: one at a time before)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(all_in.wait(), 2)
            else:
                await asyncio.sleep(0.2)  # (long enough for the others to arrive meanwhile)
        finally:
            in_flight -= 1
        return web.Response(text=request.headers.get("Accept-Language", ""), headers={
            "Cache-Control": "max-age=3600", "Vary": "Accept-Language"})

    app = web.Application()
    app.router.add_get("/v", vary)
    cache: dict[str, Any] = {}
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        cache = {"store": "redis", "redis_url": server.url, "memory_layer_bytes": 0}
    client = await proxy(await origin(app), cache=cache)
    for language in ("first", "second"):  # (two variants: Redis then reads them apart)
        first = await client.get("/v", headers={"Accept-Language": language})
        assert first.status == 200
    most, gated[0] = 0, True
    answers = await asyncio.gather(*(client.get("/v", headers={"Accept-Language": f"l{i}"})
                                     for i in range(8)))
    assert [a.status for a in answers] == [200] * 8
    assert [await a.text() for a in answers] == [f"l{i}" for i in range(8)]
    assert most == 8
    # Requests of one variant still make one upstream request between them.
    most, before, gated[0] = 0, calls[0], False
    same = await asyncio.gather(*(client.get("/v", headers={"Accept-Language": "fr"})
                                  for _ in range(4)))
    assert [await a.text() for a in same] == ["fr"] * 4
    assert calls[0] - before == 1


async def test_forward_mode_lookups_keep_a_bounded_number_of_answers(
        proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward mode looks names up with c-ares, whose query cache keeps every answer for
    its TTL (up to an hour) with no bound in number, and pycares gives it none: measured,
    ~3 KB of the process per distinct name (50,000 names: +129 MB RSS, growing as fast
    as names came), names any client or web page chooses (a wildcard domain's). Now a
    resolver answers LOOKUPS_PER_RESOLVER lookups (10,000; 3 here), then the next takes
    a new one, with an empty cache (the old one closed once its lookups are done): the
    cache holds that many answers at most. Seen here as a name asked of the nameserver
    again once its resolver was replaced (before: answered from the cache for good).
    Squid's ipcache and fqdncache are bounded in entries (ipcache_size, 1,024). Severity:
    medium (memory grows with the names clients choose, for up to an hour each)."""
    monkeypatch.setattr(destinations, "LOOKUPS_PER_RESOLVER", 3, raising=False)
    dns, server = await asyncio.get_running_loop().create_datagram_endpoint(
        Nameserver, local_addr=("127.0.0.1", 0))
    dns_port = dns.get_extra_info("sockname")[1]
    async with raw_origin(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                          b"Connection: close\r\n\r\nok") as port:  # (no pooled connection)
        client = await proxy(f"http://127.0.0.1:{port}", forward={
            "enabled": True, "resolver": [f"127.0.0.1:{dns_port}"],
            "allow_hosts": ["*.fast.example"]})

        async def get(name: str) -> None:
            status, _, body = await forward_get(client.port,
                                                f"http://{name}.fast.example:{port}/")
            assert (status, body) == (200, b"ok")

        await get("a")
        asked = server.asked.count("a.fast.example")
        for i in range(4):  # (the resolver that answered "a" is replaced)
            await get(f"n{i}")
        await get("a")
    dns.close()
    assert server.asked.count("a.fast.example") > asked
