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
