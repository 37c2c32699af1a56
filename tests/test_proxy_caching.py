"""RFC 9111 behaviour through the running proxy: a real origin on 127.0.0.1,
the proxy in front, a real client. Grouped by RFC section.

A response with `Age` larger than its `max-age` is stale on arrival: that is
how these tests get stale entries without sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import Callable

from aiohttp import web
from faults import faulty_relay
from support import cache_status

Handler = Callable[[web.Request], web.Response]


class Origin:
    """An origin whose routes are plain functions; it counts and records requests."""

    def __init__(self, **routes: Handler) -> None:
        self.calls: Counter[str] = Counter()
        self.seen: list[web.Request] = []
        self.app = web.Application()
        for name, fn in routes.items():
            self.app.router.add_route("*", "/" + name, self._wrap(name, fn))

    def _wrap(self, name: str, fn: Handler):  # type: ignore[no-untyped-def]
        async def handle(request: web.Request) -> web.StreamResponse:
            self.calls[name] += 1
            self.seen.append(request)
            result = fn(request)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return handle


def ok(body: str = "body", **headers: str) -> Handler:
    return lambda request: web.Response(text=body, headers=headers)


async def start(origin, proxy, o: Origin, **sections):  # type: ignore[no-untyped-def]
    return await proxy(await origin(o.app), **sections)


# -- §3 storing ---------------------------------------------------------------

async def test_s3_no_store_response_is_not_stored(origin, proxy):
    o = Origin(r=ok(**{"Cache-Control": "no-store, max-age=60"}))
    c = await start(origin, proxy, o)
    for _ in range(2):
        resp = await c.get("/r")
        assert resp.headers["X-Cache"] == "MISS" and "detail=no-store" in cache_status(resp)
    assert o.calls["r"] == 2


async def test_s3_no_store_request_is_not_stored(origin, proxy):
    o = Origin(r=ok(**{"Cache-Control": "max-age=60"}))
    c = await start(origin, proxy, o)
    await c.get("/r", headers={"Cache-Control": "no-store"})
    await c.get("/r")
    assert o.calls["r"] == 2


async def test_s3_private_not_stored_by_shared_cache_but_by_private_one(origin, proxy):
    o = Origin(r=ok(**{"Cache-Control": "private, max-age=60"}))
    shared = await start(origin, proxy, o)
    await shared.get("/r")
    assert (await shared.get("/r")).headers["X-Cache"] == "MISS"
    private = await start(origin, proxy, o, cache={"shared": False})
    await private.get("/r")
    assert (await private.get("/r")).headers["X-Cache"] == "HIT"


async def test_s3_5_authorization_needs_public_or_s_maxage(origin, proxy):
    o = Origin(plain=ok(**{"Cache-Control": "max-age=60"}),
               public=ok(**{"Cache-Control": "public, max-age=60"}),
               smax=ok(**{"Cache-Control": "s-maxage=60"}))
    c = await start(origin, proxy, o)
    auth = {"Authorization": "Bearer alice"}
    for path in ("/plain", "/public", "/smax"):
        await c.get(path, headers=auth)
    assert (await c.get("/plain", headers=auth)).headers["X-Cache"] == "MISS"
    assert (await c.get("/public")).headers["X-Cache"] == "HIT"
    assert (await c.get("/smax")).headers["X-Cache"] == "HIT"


async def test_s3_set_cookie_never_replayed_by_default(origin, proxy):
    o = Origin(r=ok(**{"Cache-Control": "max-age=60", "Set-Cookie": "sid=alice"}))
    c = await start(origin, proxy, o)
    first = await c.get("/r")
    assert first.headers["Set-Cookie"] == "sid=alice" and "detail=set-cookie" in cache_status(first)
    second = await c.get("/r")
    assert second.headers["X-Cache"] == "MISS"
    assert o.calls["r"] == 2


async def test_s3_set_cookie_strip_mode_stores_without_the_cookie(origin, proxy):
    o = Origin(r=ok(**{"Cache-Control": "max-age=60", "Set-Cookie": "sid=alice"}))
    c = await start(origin, proxy, o, cache={"set_cookie": "strip"})
    first = await c.get("/r")
    assert first.headers["Set-Cookie"] == "sid=alice"  # the client that caused it
    second = await c.get("/r")
    assert second.headers["X-Cache"] == "HIT" and "Set-Cookie" not in second.headers


async def test_s3_head_is_answered_from_a_stored_get(origin, proxy):
    o = Origin(r=ok("x" * 100, **{"Cache-Control": "max-age=60"}))
    c = await start(origin, proxy, o)
    miss = await c.head("/r")  # fetched upstream as GET and stored, answered without body
    assert miss.headers["X-Cache"] == "MISS" and "stored" in cache_status(miss)
    assert miss.headers["Content-Length"] == "100" and await miss.read() == b""
    head = await c.head("/r")
    assert head.headers["X-Cache"] == "HIT" and head.headers["Content-Length"] == "100"
    assert await head.read() == b""
    get = await c.get("/r")
    assert get.headers["X-Cache"] == "HIT" and await get.text() == "x" * 100
    assert [r.method for r in o.seen] == ["GET"]


async def test_head_of_something_too_big_to_store_does_not_read_its_body(origin, proxy):
    sent = {"bytes": 0}

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        resp.content_length = 64 * 1024 * 1024
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(1024):
                await resp.write(b"x" * 65536)
                sent["bytes"] += 65536
        return resp
    o = Origin(r=big)
    c = await start(origin, proxy, o, cache={"max_object_bytes": 65536})
    head = await c.head("/r")
    assert head.status == 200 and await head.read() == b""
    assert "detail=too-big" in cache_status(head)
    await asyncio.sleep(0.2)
    assert sent["bytes"] < 8 * 1024 * 1024  # the proxy hung up instead of reading 64 MiB


async def test_a_range_miss_stores_the_whole_and_answers_the_part(origin, proxy):
    """RFC 9110 §14.2 (more in tests/test_proxy_conformance.py)."""
    o = Origin(r=ok("0123456789", **{"Cache-Control": "max-age=60"}))
    c = await start(origin, proxy, o)
    ranged = await c.get("/r", headers={"Range": "bytes=0-3"})
    assert ranged.status == 206 and await ranged.read() == b"0123"
    assert "fwd=uri-miss" in cache_status(ranged) and "stored" in cache_status(ranged)
    assert "Range" not in o.seen[0].headers  # the whole representation was asked for
    again = await c.get("/r", headers={"Range": "bytes=4-"})
    assert again.status == 206 and await again.read() == b"456789"
    assert again.headers["X-Cache"] == "HIT" and o.calls["r"] == 1


# -- §4.1 Vary -------------------------------------------------------------------

def greet(request: web.Request) -> web.Response:
    lang = request.headers.get("Accept-Language", "en")
    return web.Response(text="bonjour" if lang.lower().startswith("fr") else "hello",
                        headers={"Cache-Control": "max-age=60", "Vary": "Accept-Language"})


async def test_s4_1_vary_keeps_one_variant_per_request_value(origin, proxy):
    o = Origin(g=greet)
    c = await start(origin, proxy, o)
    assert await (await c.get("/g", headers={"Accept-Language": "fr"})).text() == "bonjour"
    assert await (await c.get("/g", headers={"Accept-Language": "en"})).text() == "hello"
    fr = await c.get("/g", headers={"Accept-Language": "FR"})  # normalised: case-insensitive
    assert await fr.text() == "bonjour" and fr.headers["X-Cache"] == "HIT"
    en = await c.get("/g", headers={"Accept-Language": "en"})
    assert await en.text() == "hello" and en.headers["X-Cache"] == "HIT"
    de = await c.get("/g", headers={"Accept-Language": "de"})
    assert "fwd=vary-miss" in cache_status(de)
    assert o.calls["g"] == 3


async def test_s4_1_vary_star_is_never_stored(origin, proxy):
    o = Origin(r=ok(**{"Cache-Control": "max-age=60", "Vary": "*"}))
    c = await start(origin, proxy, o)
    await c.get("/r")
    assert (await c.get("/r")).headers["X-Cache"] == "MISS"


# -- §4.2 freshness and age ---------------------------------------------------------

async def test_s4_2_1_s_maxage_beats_max_age_in_a_shared_cache(origin, proxy):
    o = Origin(r=ok(**{"Cache-Control": "max-age=0, s-maxage=60"}))
    c = await start(origin, proxy, o)
    await c.get("/r")
    assert (await c.get("/r")).headers["X-Cache"] == "HIT"


async def test_s4_2_2_heuristic_freshness_from_last_modified(origin, proxy):
    o = Origin(r=ok(**{"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}))
    c = await start(origin, proxy, o)
    first = await c.get("/r")
    assert "stored" in cache_status(first)
    assert (await c.get("/r")).headers["X-Cache"] == "HIT"


async def test_s4_2_3_age_includes_the_upstream_age(origin, proxy):
    o = Origin(r=ok(**{"Cache-Control": "max-age=600", "Age": "100"}))
    c = await start(origin, proxy, o)
    await c.get("/r")
    hit = await c.get("/r")
    assert 100 <= int(hit.headers["Age"]) <= 102
    ttl = int(cache_status(hit).split("ttl=")[1].split(";")[0])
    assert 497 <= ttl <= 500


async def test_s5_3_invalid_expires_means_stale(origin, proxy):
    o = Origin(r=ok(**{"Expires": "0", "ETag": '"v1"'}))
    c = await start(origin, proxy, o)
    await c.get("/r")
    second = await c.get("/r")
    assert "fwd=stale" in cache_status(second)  # stored, but revalidated at once
    assert o.seen[-1].headers["If-None-Match"] == '"v1"'


# -- §4.3 validation ------------------------------------------------------------------

def etagged(tag: str = '"v1"', cc: str = "no-cache") -> Handler:
    def handle(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers={"ETag": tag, "Cache-Control": cc,
                                                     "X-Checked": "yes"})
        return web.Response(text="full body", headers={"ETag": tag, "Cache-Control": cc})
    return handle


async def test_s4_3_304_freshens_and_updates_the_stored_response(origin, proxy):
    o = Origin(r=etagged())
    c = await start(origin, proxy, o)
    await c.get("/r")
    second = await c.get("/r")
    assert second.status == 200 and await second.text() == "full body"
    assert second.headers["X-Checked"] == "yes"  # §3.2: the 304's fields were merged
    assert "fwd=stale; fwd-status=304" in cache_status(second)
    assert o.seen[-1].headers["If-None-Match"] == '"v1"'
    third = await c.get("/r")
    assert third.headers["X-Checked"] == "yes"  # and kept in storage


async def test_s4_3_revalidation_by_last_modified(origin, proxy):
    """The 304 names the validator it matched, as nginx and Apache send it: §4.3.4 lets a
    304 without any validator select only a stored response that has none either."""
    lm = "Mon, 01 Jan 2024 00:00:00 GMT"

    def handle(request: web.Request) -> web.Response:
        if request.headers.get("If-Modified-Since") == lm:
            return web.Response(status=304, headers={"Last-Modified": lm})
        return web.Response(text="v", headers={"Last-Modified": lm, "Cache-Control": "max-age=0"})
    o = Origin(r=handle)
    c = await start(origin, proxy, o)
    await c.get("/r")
    second = await c.get("/r")
    assert await second.text() == "v" and "fwd-status=304" in cache_status(second)


async def test_s4_3_a_200_replaces_the_stored_response(origin, proxy):
    version = {"tag": '"v1"'}

    def handle(request: web.Request) -> web.Response:
        tag = version["tag"]
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers={"ETag": tag})
        return web.Response(text=tag, headers={"ETag": tag, "Cache-Control": "no-cache"})
    o = Origin(r=handle)
    c = await start(origin, proxy, o)
    assert await (await c.get("/r")).text() == '"v1"'
    version["tag"] = '"v2"'
    assert await (await c.get("/r")).text() == '"v2"'
    assert await (await c.get("/r")).text() == '"v2"'
    assert o.seen[-1].headers["If-None-Match"] == '"v2"'


async def test_s4_3_2_fresh_entry_answers_conditional_clients(origin, proxy):
    o = Origin(r=ok(**{"Cache-Control": "max-age=60", "ETag": 'W/"x"',
                      "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}))
    c = await start(origin, proxy, o)
    await c.get("/r")
    inm = await c.get("/r", headers={"If-None-Match": '"a", "x"'})  # weak comparison
    assert inm.status == 304 and inm.headers["ETag"] == 'W/"x"' and await inm.read() == b""
    assert inm.headers["Cache-Control"] == "max-age=60" and "Age" in inm.headers
    ims = await c.get("/r", headers={"If-Modified-Since": "Tue, 02 Jan 2024 00:00:00 GMT"})
    assert ims.status == 304
    both = await c.get("/r", headers={"If-None-Match": '"other"',
                                      "If-Modified-Since": "Tue, 02 Jan 2024 00:00:00 GMT"})
    assert both.status == 200  # If-Modified-Since is ignored when If-None-Match is present
    assert o.calls["r"] == 1


async def test_s4_3_2_client_validators_on_a_miss_are_answered_by_the_cache(origin, proxy):
    o = Origin(r=ok(**{"Cache-Control": "max-age=60", "ETag": '"x"'}))
    c = await start(origin, proxy, o)
    resp = await c.get("/r", headers={"If-None-Match": '"x"'})
    assert resp.status == 304
    assert "If-None-Match" not in o.seen[0].headers  # the cache fetched the full response
    full = await c.get("/r")
    assert full.headers["X-Cache"] == "HIT" and await full.text() == "body"


async def test_s4_3_2_a_miss_that_cannot_fill_gets_the_origins_304(origin, proxy):
    """The client's validators go to the origin when the cache could not fill anyway:
    after a private answer (hit-for-pass), and with Authorization. The first private
    request still tries to fill (its 200 is passed on); the quick path (the next ones)
    and the full path decide alike."""
    def page(request: web.Request) -> web.Response:
        fields = {"ETag": '"p1"', "Cache-Control": "private, max-age=60"}
        if request.headers.get("If-None-Match") == '"p1"':
            return web.Response(status=304, headers=fields)
        return web.Response(text="private page", headers=fields)

    o = Origin(account=page, api=page)
    c = await start(origin, proxy, o)
    first = await c.get("/account", headers={"If-None-Match": '"p1"'})
    assert first.status == 200 and "detail=private" in cache_status(first)
    for _ in range(2):
        again = await c.get("/account", headers={"If-None-Match": '"p1"'})
        assert again.status == 304 and await again.read() == b""
        assert again.headers["ETag"] == '"p1"' and "fwd=bypass" in cache_status(again)
        authorized = await c.get("/api", headers={"If-None-Match": '"p1"',
                                                  "Authorization": "Bearer x"})
        assert authorized.status == 304 and authorized.headers["X-Cache"] == "MISS"
    assert [r.headers.get("If-None-Match") for r in o.seen] == [None] + ['"p1"'] * 4
    full = await c.get("/account")  # without a validator, it still tries to fill
    assert full.status == 200 and await full.text() == "private page"


# -- §4.4 invalidation -------------------------------------------------------------------

async def test_s4_4_unsafe_methods_invalidate_target_and_location(origin, proxy):
    o = Origin(a=lambda r: web.Response(text="a", headers={"Cache-Control": "max-age=60"})
               if r.method == "GET" else web.Response(text="done"),
               b=lambda r: web.Response(text="b", headers={"Cache-Control": "max-age=60"})
               if r.method == "GET" else web.Response(status=201, headers={"Location": "/a"}),
               bad=lambda r: web.Response(text="x", headers={"Cache-Control": "max-age=60"})
               if r.method == "GET" else web.Response(status=500))
    c = await start(origin, proxy, o)
    for path in ("/a", "/b", "/bad"):
        await c.get(path)
    await c.post("/a", data=b"x")
    assert (await c.get("/a")).headers["X-Cache"] == "MISS"
    await c.post("/b", data=b"x")  # 201 with Location: /a invalidates /a too
    assert (await c.get("/a")).headers["X-Cache"] == "MISS"
    assert (await c.get("/b")).headers["X-Cache"] == "MISS"
    await c.delete("/bad")  # an error response invalidates nothing
    assert (await c.get("/bad")).headers["X-Cache"] == "HIT"


# -- §5.2.1 request directives -------------------------------------------------------------

async def test_s5_2_1_1_max_age_0_is_a_reload_that_revalidates(origin, proxy):
    o = Origin(r=etagged(cc="max-age=60"))
    c = await start(origin, proxy, o)
    await c.get("/r")
    assert (await c.get("/r")).headers["X-Cache"] == "HIT"  # address bar: a hit
    reload = await c.get("/r", headers={"Cache-Control": "max-age=0"})  # F5
    assert "fwd=request; fwd-status=304" in cache_status(reload)
    assert await reload.text() == "full body"


async def test_s5_2_1_4_no_cache_and_pragma_force_validation(origin, proxy):
    o = Origin(r=etagged(cc="max-age=60"))
    c = await start(origin, proxy, o)
    await c.get("/r")
    assert "fwd=request" in cache_status(await c.get("/r", headers={"Cache-Control": "no-cache"}))
    assert "fwd=request" in cache_status(await c.get("/r", headers={"Pragma": "no-cache"}))
    # §5.4: Pragma is ignored when Cache-Control is present.
    both = await c.get("/r", headers={"Pragma": "no-cache", "Cache-Control": "max-stale"})
    assert both.headers["X-Cache"] == "HIT" and "fwd" not in cache_status(both)


async def test_s5_2_1_7_only_if_cached(origin, proxy):
    o = Origin(r=ok(**{"Cache-Control": "max-age=60"}))
    c = await start(origin, proxy, o)
    miss = await c.get("/r", headers={"Cache-Control": "only-if-cached"})
    assert miss.status == 504 and o.calls["r"] == 0
    await c.get("/r")
    hit = await c.get("/r", headers={"Cache-Control": "only-if-cached"})
    assert hit.status == 200 and hit.headers["X-Cache"] == "HIT"


async def test_s5_2_1_2_max_stale_accepts_a_stale_response(origin, proxy):
    o = Origin(r=ok(**{"Cache-Control": "max-age=10", "Age": "20"}))
    c = await start(origin, proxy, o)
    await c.get("/r")
    stale = await c.get("/r", headers={"Cache-Control": "max-stale=60"})
    assert stale.headers["X-Cache"] == "HIT" and "hit" in cache_status(stale)
    assert o.calls["r"] == 1


# -- §5.2.2 and RFC 5861: serving stale ---------------------------------------------------

@contextlib.asynccontextmanager
async def stale_entry(origin, proxy, cc: str):  # type: ignore[no-untyped-def]
    """An entry that is stale on arrival, behind a relay that can cut the origin off.
    Yields (origin, proxy client, the origin's next status, relay)."""
    state = {"status": 200}

    def handle(request: web.Request) -> web.Response:
        return web.Response(status=state["status"], text=f"status {state['status']}",
                            headers={"Cache-Control": cc, "Age": "20",
                                     # no pooled connection may outlive a relay switch
                                     "Connection": "close"})
    o = Origin(r=handle)
    server = await origin(o.app)
    async with faulty_relay(server.host, server.port) as relay:
        c = await proxy(f"http://127.0.0.1:{relay.port}", proxy={"connect_timeout": 0.5})
        first = await c.get("/r")
        assert "stored" in cache_status(first)
        yield o, c, state, relay


async def test_rfc5861_stale_if_error_on_5xx_and_on_unreachable(origin, proxy):
    cc = "max-age=10, stale-if-error=600"
    async with stale_entry(origin, proxy, cc) as (_o, c, state, relay):
        state["status"] = 503
        resp = await c.get("/r")
        assert resp.status == 200 and await resp.text() == "status 200"
        assert "fwd-status=503" in cache_status(resp) and "stale-if-error" in cache_status(resp)
        relay.mode = "refuse"
        resp = await c.get("/r")
        assert resp.status == 200 and "stale-if-error" in cache_status(resp)


async def test_s5_2_2_2_must_revalidate_gives_504_not_stale(origin, proxy):
    cc = "max-age=10, must-revalidate, stale-if-error=600"
    async with stale_entry(origin, proxy, cc) as (_o, c, _state, relay):
        relay.mode = "refuse"
        resp = await c.get("/r")
        assert resp.status == 504 and "Traceback" not in await resp.text()
        stale_ok = await c.get("/r", headers={"Cache-Control": "max-stale=600"})
        assert stale_ok.status == 504  # §4.2.4: the client cannot override must-revalidate


async def test_stale_without_permission_is_not_served_on_error(origin, proxy):
    async with stale_entry(origin, proxy, "max-age=10") as (_o, c, state, relay):
        state["status"] = 500
        resp = await c.get("/r")
        assert resp.status == 500  # §4.2.4: the origin's own answer, not the stale copy
        relay.mode = "refuse"
        assert (await c.get("/r")).status == 502


async def test_rfc5861_stale_while_revalidate_serves_then_refreshes(origin, proxy):
    cc = "max-age=10, stale-while-revalidate=600"
    async with stale_entry(origin, proxy, cc) as (o, c, _state, _relay):
        resp = await c.get("/r")
        assert resp.headers["X-Cache"] == "HIT"
        assert "stale-while-revalidate" in cache_status(resp)
        for _ in range(100):  # the refresh happens in the background
            if o.calls["r"] == 2:
                break
            await asyncio.sleep(0.01)
        assert o.calls["r"] == 2


# -- request collapsing --------------------------------------------------------------------

async def test_concurrent_misses_make_one_upstream_request(origin, proxy):
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        return web.Response(text="shared", headers={"Cache-Control": "max-age=60"})
    o = Origin(r=slow)
    c = await start(origin, proxy, o)
    responses = await asyncio.gather(*(c.get("/r") for _ in range(10)))
    assert [await r.text() for r in responses] == ["shared"] * 10
    assert o.calls["r"] == 1
    assert sum("collapsed" in cache_status(r) for r in responses) == 9


async def test_collapsed_waiters_never_get_a_private_answer(origin, proxy):
    async def personal(request: web.Request) -> web.Response:
        await asyncio.sleep(0.1)
        return web.Response(text=request.headers["X-User"],
                            headers={"Cache-Control": "private, max-age=60"})
    o = Origin(r=personal)
    c = await start(origin, proxy, o)
    users = [f"user{i}" for i in range(5)]
    responses = await asyncio.gather(*(c.get("/r", headers={"X-User": u}) for u in users))
    assert [await r.text() for r in responses] == users
    assert o.calls["r"] == 5


async def test_a_fill_goes_on_when_the_client_that_led_it_leaves(origin, proxy):
    """The first client of a collapsed miss gives up before the answer comes: what is being
    stored is still read and stored, and those waiting behind it get it, one request to
    the origin in all (it used to be dropped with its client, and every waiter went to
    the origin itself)."""
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(body=b"h" * 100_000, headers={"Cache-Control": "max-age=60"})
    o = Origin(r=slow)
    c = await start(origin, proxy, o)
    _, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
    writer.write(f"GET /r HTTP/1.1\r\nHost: 127.0.0.1:{c.server.port}\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0.1)
    waiters = [asyncio.ensure_future(c.get("/r")) for _ in range(5)]
    await asyncio.sleep(0.1)
    writer.transport.abort()  # the leader leaves before the head came
    responses = await asyncio.gather(*waiters)
    assert [len(await r.read()) for r in responses] == [100_000] * 5
    assert all("collapsed" in cache_status(r) for r in responses)
    assert o.calls["r"] == 1
    assert "hit" in cache_status(await c.get("/r"))  # stored


async def test_a_fill_goes_on_when_the_client_that_led_it_stops_reading(origin, proxy):
    """The first client of a collapsed miss reads nothing: at send_timeout its connection
    is closed, and what is being stored is still read and stored for those waiting."""
    big = b"b" * (6 * 1024 * 1024)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        return web.Response(body=big, headers={"Cache-Control": "max-age=60"})
    o = Origin(r=slow)
    c = await proxy(await origin(o.app), proxy={"send_timeout": 0.5})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", c.server.port))
        await loop.sock_sendall(
            sock, f"GET /r HTTP/1.1\r\nHost: 127.0.0.1:{c.server.port}\r\n\r\n".encode())
        await asyncio.sleep(0.1)
        waiters = [asyncio.ensure_future(c.get("/r")) for _ in range(3)]
        responses = await asyncio.wait_for(asyncio.gather(*waiters), 10)
        assert [len(await r.read()) for r in responses] == [len(big)] * 3
    finally:
        sock.close()
    assert o.calls["r"] == 1
    assert "hit" in cache_status(await c.get("/r"))  # stored


async def test_collapse_wait_is_bounded(origin, proxy):
    async def very_slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.6 if o.calls["r"] == 1 else 0)
        return web.Response(text="ok", headers={"Cache-Control": "max-age=60"})
    o = Origin(r=very_slow)
    c = await start(origin, proxy, o, cache={"collapse_timeout": 0.1})
    first = asyncio.ensure_future(c.get("/r"))
    await asyncio.sleep(0.05)
    second = await c.get("/r")  # gives up waiting after 0.1 s and fetches itself
    # RFC 9211 §2.6: "collapsed" only when another request's answer served this one.
    assert second.status == 200 and "collapsed" not in cache_status(second)
    assert not first.done()
    await first
    assert o.calls["r"] == 2


async def test_waiters_of_a_leader_that_got_no_answer_try_again_one_at_a_time(origin, proxy):
    """The leader's connection breaks before its answer: its waiters do not all go
    upstream at once (a herd on an origin that just failed); one tries again and the
    others wait for it, as behind nginx's proxy_cache_lock or Varnish's waiting list."""
    async def slow_first(request: web.Request) -> web.Response:
        if o.calls["r"] == 1:
            await asyncio.sleep(0.4)
        return web.Response(text="ok", headers={"Cache-Control": "max-age=60"})
    o = Origin(r=slow_first)
    server = await origin(o.app)
    async with faulty_relay(server.host, server.port) as relay:
        c = await proxy(f"http://127.0.0.1:{relay.port}")
        relay.mode, relay.reset_after_bytes = "reset_after", 0  # the leader's connection
        leader = asyncio.ensure_future(c.get("/r"))
        for _ in range(100):
            if relay.connections:
                break
            await asyncio.sleep(0.01)
        relay.mode = "pass"
        waiters = [asyncio.ensure_future(c.get("/r")) for _ in range(4)]
        assert (await leader).status == 502
        answers = await asyncio.gather(*waiters)
    assert [r.status for r in answers] == [200] * 4
    assert o.calls["r"] == 2  # the leader's try, and one more
    assert sum("collapsed" in cache_status(r) for r in answers) == 3


async def test_s3_2_a_304_cannot_smuggle_set_cookie_or_no_store_into_storage(origin, proxy):
    """§3.2 merges the 304's fields, but the merged response is judged like a new one (§3)."""
    mode = {"304": {"ETag": '"v1"', "Set-Cookie": "sid=alice"}}

    def handle(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers=mode["304"])
        return web.Response(text="body", headers={"ETag": '"v1"', "Cache-Control": "no-cache"})
    o = Origin(r=handle)
    c = await start(origin, proxy, o, cache={"set_cookie": "strip"})
    await c.get("/r")
    alice = await c.get("/r")  # revalidated; the 304 set Alice's cookie
    assert alice.headers["Set-Cookie"] == "sid=alice" and "fwd-status=304" in cache_status(alice)
    mode["304"] = {"ETag": '"v1"'}
    bob = await c.get("/r")
    assert "Set-Cookie" not in bob.headers and "fwd-status=304" in cache_status(bob)
    mode["304"] = {"ETag": '"v1"', "Cache-Control": "no-store"}
    await c.get("/r")  # with Alice's cookie: an answer made for her evicts nothing
    assert c.app_proxy.store.stats().entries == 1
    c.session.cookie_jar.clear()
    await c.get("/r")
    assert c.app_proxy.store.stats().entries == 0  # the merged response says no-store


async def test_uncacheable_urls_are_not_collapsed_again(origin, proxy):
    """Hit-for-pass: once an answer was not storable, concurrent requests for the URL
    go upstream side by side instead of queueing behind one leader."""
    active = {"now": 0, "most": 0}
    all_in = asyncio.Event()

    async def personal(request: web.Request) -> web.Response:
        active["now"] += 1
        active["most"] = max(active["most"], active["now"])
        if active["now"] == 5:
            all_in.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 1.0)
        active["now"] -= 1
        return web.Response(text="mine", headers={"Cache-Control": "no-store"})
    o = Origin(r=personal)
    c = await start(origin, proxy, o)
    await c.get("/r")  # learns that /r is not storable
    active["most"] = 0
    responses = await asyncio.gather(*(c.get("/r") for _ in range(5)))
    assert all(r.status == 200 for r in responses)
    assert not any("collapsed" in cache_status(r) for r in responses)
    assert active["most"] == 5  # all five reached the origin at once


async def test_collapsed_reloads_share_one_validation(origin, proxy):
    """Clients asking for validation themselves (max-age=0, a reload storm) are all
    answered by a validation that completed after they arrived (§5.2.1.1)."""
    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(text="body", headers={"ETag": '"v1"', "Cache-Control": "max-age=60"})
    o = Origin(r=handle)
    c = await start(origin, proxy, o)
    await c.get("/r")
    reload = {"Cache-Control": "max-age=0"}
    responses = await asyncio.gather(*(c.get("/r", headers=reload) for _ in range(8)))
    assert [await r.text() for r in responses] == ["body"] * 8
    assert o.calls["r"] == 2  # the first fetch and one validation for all eight
    assert sum("collapsed" in cache_status(r) for r in responses) == 7


async def test_no_cache_responses_are_validated_for_every_request(origin, proxy):
    """§5.2.2.4: a no-cache response is validated for each request that reuses it;
    another request's validation is not enough (it may carry other credentials)."""
    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(0.1)
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(text="body", headers={"ETag": '"v1"', "Cache-Control": "no-cache"})
    o = Origin(r=handle)
    c = await start(origin, proxy, o)
    await c.get("/r")
    responses = await asyncio.gather(*(c.get("/r") for _ in range(5)))
    assert [await r.text() for r in responses] == ["body"] * 5
    assert o.calls["r"] == 6  # one validation each
    assert all("fwd-status=304" in cache_status(r) for r in responses)


# -- §2 the cache key ---------------------------------------------------------


async def test_s2_the_key_names_the_upstream_so_every_host_shares_it(origin, proxy):
    """host_header = upstream and no X-Forwarded-Host: whatever Host a client uses, the
    origin sees the same request, so the entry is one (replicas reached as localhost:8080
    and :8082 share it)."""
    o = Origin(r=ok(**{"Cache-Control": "max-age=60"}))
    c = await proxy(await origin(o.app), proxy={"x_forwarded_host": False})
    first = await c.get("/r", headers={"Host": "a.example"})
    second = await c.get("/r", headers={"Host": "b.example:8082"})
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert o.calls["r"] == 1


async def test_s2_with_x_forwarded_host_each_host_has_its_own_entry(origin, proxy):
    """The default sends X-Forwarded-Host, which an origin may build links from: the
    client's Host is then in the key, so no Host's answer is served for another."""
    o = Origin(r=lambda request: web.Response(text=request.headers["X-Forwarded-Host"],
                                              headers={"Cache-Control": "max-age=60"}))
    c = await start(origin, proxy, o)
    a = await c.get("/r", headers={"Host": "a.example"})
    b = await c.get("/r", headers={"Host": "b.example"})
    assert (await a.text(), await b.text()) == ("a.example", "b.example")
    assert b.headers["X-Cache"] == "MISS" and o.calls["r"] == 2


async def test_s2_with_host_passed_each_host_has_its_own_entry(origin, proxy):
    """host_header = pass: the origin sees the client's Host, which may select another
    site, so the Host is part of the key."""
    o = Origin(r=lambda request: web.Response(text=request.host,
                                              headers={"Cache-Control": "max-age=60"}))
    c = await proxy(await origin(o.app), proxy={"host_header": "pass"})
    a = await c.get("/r", headers={"Host": "a.example"})
    b = await c.get("/r", headers={"Host": "b.example"})
    assert (await a.text(), await b.text()) == ("a.example", "b.example")
    assert b.headers["X-Cache"] == "MISS" and o.calls["r"] == 2
    again = await c.get("/r", headers={"Host": "A.EXAMPLE"})
    assert again.headers["X-Cache"] == "HIT" and await again.text() == "a.example"
