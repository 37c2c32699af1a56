"""Findings of the races review (review-races): interleavings of requests for one key at
the proxy's await points (a fill, a revalidation, a background refresh, an invalidation or
a purge overlapping another). The origins are real aiohttp servers on 127.0.0.1 whose
handlers wait on asyncio.Events the test sets, so each interleaving is chosen, not hoped
for. Each test fails on the code it was written against (1916a5a) and says what is wrong,
why it matters and how severe it is."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from support import until


def _bodies(store: Any) -> list[bytes]:
    """The bodies the (memory) store holds, over every key and variant."""
    return [v.body for held in list(store._held.values())
            for v in (held if isinstance(held, tuple) else (held,))]


# -- RFC 9111 §4.3.4: a 304 updates the stored response it selects, as stored when it comes --

async def test_a_late_304_does_not_put_back_an_older_response_over_a_newer_200(
        origin: Any, proxy: Any) -> None:
    """A client's revalidation (max-age=0) of "v1" is answered 304 by the origin, but the
    304 is slow to arrive; meanwhile the stale-while-revalidate refresh of the same URL
    gets the new representation ("v2", 200) and stores it. When the late 304 arrives, the
    proxy puts the "v1" response it read at lookup, freshened, in place of the stored "v2":
    every client then gets the old body as fresh for its whole max-age, though the cache
    had the new one. RFC 9111 §4.3.4: the 304 updates the stored responses it *selects*
    (by its validator, "v1"); the one stored now has "v2" and is not selected, so "the
    cache MUST NOT use the new response to update any stored responses" there. The
    driver already applies that rule to the other variants a strong tag freshens
    (freshened_still_held, 2639325), not to the response validated itself. Severity:
    medium (an outdated body served as fresh to everyone for max-age; needs a slow 304
    racing another fill: a background refresh, a collapse_timeout expiry, collapse off)."""
    state = {"version": "v1", "held": 0}
    hold, held = asyncio.Event(), asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        inm = request.headers.get("If-None-Match")
        current = state["version"]
        if inm == f'"{current}"':
            state["held"] += 1
            if state["held"] == 1:  # the client's validation: 304 now, sent late
                state["version"] = "v2"  # (the origin changes right after)
                held.set()
                await hold.wait()
            return web.Response(status=304, headers={
                "ETag": inm, "Cache-Control": "max-age=60, stale-while-revalidate=600"})
        return web.Response(text=f"body {current}", headers={
            "ETag": f'"{current}"', "Age": "5" if current == "v1" else "0",
            "Cache-Control": "max-age=1, stale-while-revalidate=600" if current == "v1"
            else "max-age=60, stale-while-revalidate=600"})

    app = web.Application()
    app.router.add_get("/r", handle)
    c = await proxy(await origin(app))
    store = c.app_proxy.store
    assert await (await c.get("/r")).text() == "body v1"  # stored stale (Age 5 > 1)
    validating = asyncio.ensure_future(c.get("/r", headers={"Cache-Control": "max-age=0"}))
    await asyncio.wait_for(held.wait(), 5)
    stale = await c.get("/r")  # stale-while-revalidate: "v1" now, refreshed behind
    assert await stale.text() == "body v1"
    assert await until(lambda: _bodies(store) == [b"body v2"]), "the refresh stored v2"
    hold.set()
    assert (await validating).status == 200
    after = await c.get("/r")
    assert await after.text() == "body v2", "the late 304 put the older v1 back over v2"


# -- RFC 9111 §4.4: an invalidation (or a purge) during a fill of the same URL ---------------

def _slow_fill_app(state: dict[str, Any], hold: asyncio.Event, started: asyncio.Event
                   ) -> web.Application:
    """GET /r: the current version, fresh for 60 s; the first GET sends half its body,
    then waits for hold. POST /r (and the DELETE of a purge-less origin) changes it."""
    async def get(request: web.Request) -> web.StreamResponse:
        body = f"body {state['version']}".encode() * 100
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60",
                                           "Content-Length": str(len(body))})
        await resp.prepare(request)
        state["gets"] += 1
        if state["gets"] == 1:
            await resp.write(body[:300])
            started.set()
            await hold.wait()
            await resp.write(body[300:])
        else:
            await resp.write(body)
        await resp.write_eof()
        return resp

    async def post(request: web.Request) -> web.Response:
        state["version"] = "v2"
        return web.Response(text="changed")

    app = web.Application()
    app.router.add_get("/r", get)
    app.router.add_post("/r", post)
    return app


async def test_a_fill_under_way_does_not_store_what_an_unsafe_request_invalidated(
        origin: Any, proxy: Any) -> None:
    """A GET miss is being filled (its answer's body still coming) when a POST to the same
    URL succeeds: the proxy invalidates the URL (RFC 9111 §4.4), but nothing is stored
    yet, and the fill then completes and stores the representation from before the POST.
    Every later GET gets that pre-POST body as a fresh HIT for its whole max-age, though
    the cache saw the POST change it: §4.4's invalidation is lost exactly when it races a
    fill. The answer being filled was made before the invalidating request reached the
    origin; stored after the invalidation, it undoes it (nginx and Varnish do not
    invalidate on POST at all, so the README's §4.4 row is this proxy's own promise).
    Severity: medium (a stale representation served to everyone for max-age after a
    write the cache saw)."""
    state: dict[str, Any] = {"version": "v1", "gets": 0}
    hold, started = asyncio.Event(), asyncio.Event()
    c = await proxy(await origin(_slow_fill_app(state, hold, started)))
    filling = asyncio.ensure_future(c.get("/r"))
    await asyncio.wait_for(started.wait(), 5)
    posted = await c.post("/r", data=b"new")
    assert posted.status == 200 and state["version"] == "v2"
    hold.set()
    first = await filling
    assert await first.read() == b"body v1" * 100  # (its own answer: made before the POST)
    after = await c.get("/r")
    assert await after.read() == b"body v2" * 100, \
        f"the pre-POST body was stored after the invalidation ({after.headers['X-Cache']})"


async def test_a_fill_under_way_does_not_store_what_a_purge_removed(
        origin: Any, proxy: Any) -> None:
    """An admin purge of a URL (README "Admin API": POST .../purge?url=, or PURGE) while a
    miss for it is being filled reports 404 (nothing stored yet), then the fill completes
    and stores the answer fetched before the purge: the operator purged after changing
    the origin, and clients keep getting the old body for its max-age, with no sign of it
    in the purge's answer. The fill's answer predates the purge; stored after it, it
    undoes the purge. Severity: medium
    (the purge silently does nothing for the fill in flight, a common case for a hot URL
    right after a deploy)."""
    state: dict[str, Any] = {"version": "v1", "gets": 0}
    hold, started = asyncio.Event(), asyncio.Event()
    c = await proxy(await origin(_slow_fill_app(state, hold, started)))
    filling = asyncio.ensure_future(c.get("/r"))
    await asyncio.wait_for(started.wait(), 5)
    state["version"] = "v2"  # a deploy, then the purge
    purged = await c.post("/_cacheproxy/purge", params={"url": "/r"})
    assert purged.status in (200, 404)
    hold.set()
    assert await (await filling).read() == b"body v1" * 100
    after = await c.get("/r")
    assert await after.read() == b"body v2" * 100, \
        f"the pre-purge body was stored after the purge ({after.headers['X-Cache']})"


# -- README "Concurrent misses?": one upstream request per key, under Vary too --------------

async def test_waiters_for_another_variant_do_not_all_go_upstream_at_once(
        origin: Any, proxy: Any) -> None:
    """Four requests with Accept-Language: fr wait behind a leader (en) for a URL not yet
    stored; its answer says Vary: Accept-Language, so it answers none of them. Each then
    looked again and went upstream on its own, all at once: four identical requests for
    the fr variant where one would do. README ("Concurrent misses?"): "one upstream
    request per key; the others wait ... the others do not all go upstream at once: one
    tries again and the rest wait for it, still within collapse_timeout from their
    arrival (nginx's proxy_cache_lock)" (said of a leader that failed; a leader whose
    answer is another variant's is the same case for its waiters). A cold or expired
    popular URL that varies (Accept-Encoding, Accept-Language) meets exactly this: one
    herd per variant behind the first request. Severity: medium (origin load the
    collapsing exists to prevent; answers stay right)."""
    seen: list[str] = []
    hold, started = asyncio.Event(), asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        lang = request.headers.get("Accept-Language", "")
        seen.append(lang)
        if lang == "en":
            started.set()
            await hold.wait()
        await asyncio.sleep(0.05)  # (an origin's own time: the other waiters come by)
        return web.Response(text=f"in {lang}", headers={
            "Cache-Control": "max-age=60", "Vary": "Accept-Language"})

    app = web.Application()
    app.router.add_get("/r", handle)
    c = await proxy(await origin(app))
    leader = asyncio.ensure_future(c.get("/r", headers={"Accept-Language": "en"}))
    await asyncio.wait_for(started.wait(), 5)
    waiters = [asyncio.ensure_future(c.get("/r", headers={"Accept-Language": "fr"}))
               for _ in range(4)]
    await until(lambda: len(c.app_proxy.driver.collapser._inflight) == 1)
    await asyncio.sleep(0.1)  # (the four are waiting behind en)
    hold.set()
    assert await (await leader).text() == "in en"
    for waiter in waiters:
        assert await (await waiter).text() == "in fr"
    assert seen.count("fr") == 1, f"{seen.count('fr')} upstream requests for fr, not 1"


# -- RFC 9111 §4.3.5: a HEAD's 200 freshens the stored response it selects, as now stored --

async def test_a_late_head_answer_does_not_put_back_an_older_response_over_a_newer_200(
        origin: Any, proxy: Any) -> None:
    """A HEAD the cache sends on as HEAD (here with If-Match, the origin's to evaluate once
    the client asks for validation) is answered 200 with the
    stored response's ETag ("v1") and length, but slowly; meanwhile a reload (no-cache)
    fetches and stores the new representation ("v2"). When the HEAD's answer arrives,
    the proxy freshens the "v1" response it read at lookup and puts it in place of the
    stored "v2" (Freshen was put unconditionally): every client then gets the old body as
    a fresh HIT for its max-age. RFC 9111 §4.3.5 updates the stored response the HEAD's
    validators select; "v2" has another ETag and is not selected (the rule §4.3.4 states
    for 304s, which the proxy applies to them since this review's first fix). Severity:
    low (needs a HEAD sent on as HEAD racing a new fill of the same variant), but the
    outdated body is served to everyone for max-age."""
    state = {"version": "v1"}
    hold, held = asyncio.Event(), asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        body = f"body {state['version']}"
        headers = {"ETag": f'"{state["version"]}"', "Cache-Control": "max-age=60",
                   "Content-Length": str(len(body))}
        if request.method == "HEAD":  # answered for v1, sent late; the origin changes
            state["version"] = "v2"
            held.set()
            await hold.wait()
            return web.Response(headers=headers)
        return web.Response(body=body.encode(), headers=headers)

    app = web.Application()
    app.router.add_route("*", "/r", handle)
    c = await proxy(await origin(app))
    assert await (await c.get("/r")).text() == "body v1"
    head = asyncio.ensure_future(
        c.head("/r", headers={"If-Match": '"v1"', "Cache-Control": "max-age=0"}))
    await asyncio.wait_for(held.wait(), 5)
    newer = await c.get("/r", headers={"Cache-Control": "no-cache"})
    assert await newer.text() == "body v2"
    hold.set()
    assert (await head).status == 200
    after = await c.get("/r")
    assert await after.text() == "body v2", "the late HEAD put the older v1 back over v2"
