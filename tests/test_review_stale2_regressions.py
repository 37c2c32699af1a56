"""Second review of stale answers and origin errors (RFC 9111 §4, §4.2.4, §4.3.3, §5.2.2.2,
§5.2.2.8, §5.2.2.10; RFC 5861 §3-§4; RFC 9211), taking up what the first one
(test_review_stale_regressions.py) left: collapsed requests behind a foreground
revalidation the origin answered with a 5xx, a slow background refresh racing a newer
foreground answer, the words of the 504 that stale forbidden by a directive makes, the
label of a fresh response served on an origin error, and a collapsed waiter whose client
left. Read as an operator of nginx (proxy_cache_lock) or Varnish would. Each test failed
before its fix."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import cache_status, read_json_log, until
from test_forward_mode import raw
from test_proxy_caching import stale_entry

from cacheproxy.http.dates import format_http_date
from cacheproxy.proxy.collapse import Collapser


def count_waits(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many collapsed waits began ("in") and ended ("out"), counted as they happen."""
    counts = {"in": 0, "out": 0}
    real = Collapser.wait

    async def wait(self: Collapser, *args: Any, **kwargs: Any) -> bool:
        counts["in"] += 1
        try:
            return await real(self, *args, **kwargs)
        finally:
            counts["out"] += 1
    monkeypatch.setattr(Collapser, "wait", wait)
    return counts


async def test_waiters_behind_a_revalidation_answered_5xx_do_not_all_go_upstream_at_once(
        origin: Any, proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale response (no stale-if-error) is revalidated for 8 concurrent requests: one
    goes upstream, 7 wait behind it. The origin, failing, answers 503. The 503 (not
    storable: no freshness of its own) marked the URL hit-for-pass for 30 s (`detail=status`)
    and released the 7 waiters as after an answer that simply was not stored: they all
    went upstream at once (8 concurrent requests made 8 upstream requests, 7 of them side
    by side), and every request for the next 30 s skipped collapsing: a herd on the origin
    exactly while it fails. nginx's proxy_cache_lock passes the waiters on one at a time
    once the lock is released without a cached answer; a 503 with no freshness may not be
    shared with the waiters (RFC 9111 §4: only a stored or storable response satisfies
    collapsed requests), so they now go one at a time, as behind a leader that got no
    answer at all, and a 5xx (the origin's state, not the URL's) marks no hit-for-pass.
    Severity: medium (origin load multiplied while it is failing)."""
    waits = count_waits(monkeypatch)
    state: dict[str, Any] = {"fail": False, "calls": 0, "now": 0, "most": 0}
    hold, held = asyncio.Event(), asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        if not state["fail"]:
            return web.Response(text="good", headers={
                "Cache-Control": "max-age=1", "Age": "5", "ETag": '"v1"'})
        state["calls"] += 1
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        try:
            if state["calls"] == 1:
                held.set()
                await hold.wait()
            await asyncio.sleep(0)  # (an origin's own time: another request may come by)
            return web.Response(status=503, text="origin error")
        finally:
            state["now"] -= 1

    app = web.Application()
    app.router.add_get("/r", handle)
    c = await proxy(await origin(app))
    assert "stored" in cache_status(await c.get("/r"))
    state["fail"] = True
    leader = asyncio.ensure_future(c.get("/r"))
    await asyncio.wait_for(held.wait(), 5)
    waiters = [asyncio.ensure_future(c.get("/r")) for _ in range(7)]
    assert await until(lambda: waits["in"] == 7)
    hold.set()
    answers = [await leader, *await asyncio.gather(*waiters)]
    assert [r.status for r in answers] == [503] * 8
    assert state["most"] == 1, \
        f"{state['most']} of {state['calls']} upstream requests side by side"
    assert state["calls"] == 8  # (each its own 503: one not storable is not shared, §4)
    assert not c.app_proxy.driver.collapser._pass, "a 503 marked the URL hit-for-pass"


async def test_a_slow_background_refresh_does_not_overwrite_a_newer_foreground_answer(
        origin: Any, proxy: Any) -> None:
    """RFC 5861 §3: a stale-while-revalidate answer starts a background refresh; the
    origin is slow to answer it (200 "v2"). Meanwhile a client reloads (`Cache-Control:
    no-cache`) and its answer, "v3", is stored. When the refresh's 200 came, it was stored
    over "v3" unconditionally: every client then got the older "v2" as a fresh hit for its
    max-age, though a newer response had been stored. A 304 that comes late was already
    checked ("still the one we revalidated", §4.3.4); the refresh's 200 now is too: it is
    stored where the store still holds the response it refreshed (or nothing, or one older
    by Date: RFC 9111 §4, the most recent response by Date is the one to use). Severity:
    low (needs a slow refresh and a reload meanwhile), but the older body is served to
    everyone for max-age."""
    calls: list[str] = []
    hold, held = asyncio.Event(), asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        calls.append(request.headers.get("Cache-Control", ""))
        date = format_http_date(time.time())  # (when the request came: the page is made)
        if len(calls) == 1:
            return web.Response(text="v1", headers={
                "Cache-Control": "max-age=1, stale-while-revalidate=600", "Age": "5",
                "ETag": '"v1"'})
        if len(calls) == 2:  # the background refresh: slow
            held.set()
            await hold.wait()
            return web.Response(text="v2", headers={
                "Cache-Control": "max-age=100", "ETag": '"v2"', "Date": date})
        return web.Response(text="v3", headers={
            "Cache-Control": "max-age=100", "ETag": '"v3"', "Date": date})

    app = web.Application()
    app.router.add_get("/r", handle)
    c = await proxy(await origin(app))
    assert await (await c.get("/r")).text() == "v1"
    stale = await c.get("/r")
    assert await stale.text() == "v1" and "stale-while-revalidate" in cache_status(stale)
    await asyncio.wait_for(held.wait(), 5)
    reload = await c.get("/r", headers={"Cache-Control": "no-cache"})
    assert await reload.text() == "v3" and "stored" in cache_status(reload)
    hold.set()
    assert await until(lambda: not c.app_proxy.driver._background)
    after = await c.get("/r")
    assert await after.text() == "v3", "the late background 200 replaced the newer answer"
    assert cache_status(after).startswith("cacheproxy; hit")


@pytest.mark.parametrize(("cc", "directive"), [
    ("max-age=10, must-revalidate", "must-revalidate"),
    ("max-age=10, proxy-revalidate", "proxy-revalidate"),
    ("s-maxage=10", "s-maxage"),
])
async def test_the_504_for_stale_forbidden_names_the_directive(
        origin: Any, proxy: Any, cc: str, directive: str) -> None:
    """RFC 9111 §5.2.2.2, §5.2.2.8, §5.2.2.10: must-revalidate, proxy-revalidate and
    s-maxage each forbid a shared cache to serve the stale response when the origin
    cannot be reached: a 504. Its text said "(must-revalidate)" whichever directive it
    was, and its Cache-Status carried no detail: an operator looking at a 504 for an
    `s-maxage` response searched the origin's headers for a must-revalidate that was not
    there. Both now name the directive (RFC 9211 §2.8 detail). Severity: low
    (diagnosis)."""
    async with stale_entry(origin, proxy, cc) as (_o, c, _state, relay):
        relay.mode = "refuse"
        resp = await c.get("/r")
        assert resp.status == 504
        assert f"({directive})" in await resp.text()
        assert f"detail={directive}" in cache_status(resp)


async def test_a_fresh_response_served_on_an_origin_error_is_not_called_stale(
        origin: Any, proxy: Any, tmp_path: Path) -> None:
    """A client reloads (`Cache-Control: no-cache`, or `max-age=0`) a URL whose stored
    response is fresh and has no stale-if-error; the origin answers 503, and the cache
    answers with the fresh stored response (§5.2.1.4: no-cache is the client's
    preference; the response is fresh, §4.2). It was labelled
    `detail=stale-if-error` in Cache-Status and `STALE` in the log, though it is neither
    stale nor under stale-if-error: an operator counting stale answers (or a client
    reading RFC 9211) was told wrong. Now `fwd=request; fwd-status=503; ttl=N;
    detail=fresh-on-error` and `HIT` in the log. Severity: low (labels)."""
    state = {"fail": False}

    async def handle(request: web.Request) -> web.Response:
        if state["fail"]:
            return web.Response(status=503, text="origin error")
        return web.Response(text="good", headers={"Cache-Control": "max-age=100",
                                                  "ETag": '"v1"'})

    app = web.Application()
    app.router.add_get("/r", handle)
    c = await proxy(await origin(app), log={"path": str(tmp_path / "r.log")})
    assert "stored" in cache_status(await c.get("/r"))
    state["fail"] = True
    for reload in ("no-cache", "max-age=0"):
        resp = await c.get("/r", headers={"Cache-Control": reload})
        assert resp.status == 200 and await resp.text() == "good"
        status = cache_status(resp)
        assert "stale-if-error" not in status, status
        assert "fwd-status=503" in status and "detail=fresh-on-error" in status, status
    lines = await read_json_log(c)
    assert [line["cache"] for line in lines] == ["MISS", "HIT", "HIT"]


async def test_a_collapsed_waiter_whose_client_left_is_freed_at_once(
        origin: Any, proxy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request waits behind another's fetch of the same URL (collapsed); its client
    leaves. The waiter went on waiting until the leader's answer came or collapse_timeout
    (10 s) passed, holding its task and its connection's state all that while, although
    it would never be sent anything (it is not sent upstream since the streaming review).
    It now ends when its client goes, as the pass-through of a long poll does
    (Downstream.watch_gone); nginx drops a request waiting on proxy_cache_lock when its
    client closes. Its line says 499, collapsed, at once. Severity: low (a task and its
    state held up to collapse_timeout per departed client)."""
    waits = count_waits(monkeypatch)
    hold, held = asyncio.Event(), asyncio.Event()
    calls = []

    async def handle(request: web.Request) -> web.Response:
        calls.append(1)
        held.set()
        await hold.wait()
        return web.Response(text="page", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/r", handle)
    c = await proxy(await origin(app), log={"path": str(tmp_path / "r.log")})
    head = b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n"
    first_reader, first = await raw(c.port, head)
    await asyncio.wait_for(held.wait(), 5)
    _, second = await raw(c.port, head)
    assert await until(lambda: waits["in"] == 1)
    second.close()
    try:
        assert await until(lambda: waits["out"] == 1), \
            "the waiter whose client left still waited for its leader"
    finally:
        hold.set()
    assert (await asyncio.wait_for(first_reader.read(65536), 5)).endswith(b"page")
    first.close()
    lines = await read_json_log(c)
    assert sorted((line["status"], line["collapsed"]) for line in lines) == [
        (200, False), (499, True)]
    assert len(calls) == 1
