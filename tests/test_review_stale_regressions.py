"""Review of stale answers, origin failures and time (RFC 9111 §4.2, §4.2.4, §4.3.3-§4.3.4,
§5.2.2.2, §5.2.2.8, §5.2.2.10; RFC 5861; RFC 9211), read as an operator of Varnish, nginx
or Squid would: the stale-while-revalidate background refresh (one per variant, its
failure, its answer), stale-if-error on each failure kind (refused, reset, timeout, bad
framing, 500/502/503/504), Age and Date with clocks apart, invalid Expires, heuristic
freshness, and what Cache-Status and the log say for each. Each test failed before its
fix (or is marked xfail, strict, with the reason it stays)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from aiohttp import web
from support import cache_status, until

from cacheproxy.http.dates import format_http_date


class Flaky:
    """An origin whose /r answers 200 "good" (stale on arrival: Age beyond max-age) until
    told to fail with a status and fields of the test's choosing; it counts requests."""

    def __init__(self, cc: str) -> None:
        self.cc = cc
        self.error: tuple[int, dict[str, str]] | None = None
        self.calls = 0
        self.app = web.Application()
        self.app.router.add_get("/r", self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.error is not None:
            status, fields = self.error
            return web.Response(status=status, text="origin error", headers=fields)
        return web.Response(text="good", headers={"Cache-Control": self.cc, "Age": "5",
                                                  "ETag": '"v1"'})


async def test_background_refresh_5xx_does_not_replace_the_stored_response(
        origin: Any, proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 5861 §3 / RFC 9111 §4.3.3: a stale-while-revalidate refresh that got a 5xx
    carrying freshness of its own (`Cache-Control: max-age=100` on every answer, as an
    `add_header ... always` or a framework middleware sets it) stored that error page in
    place of the good response: every client after it got the origin's 503 from the
    cache (`hit; ttl=99`) for 100 s, although it was a background refresh no client was
    waiting for and the stored response was still within stale-while-revalidate. §4.3.3
    lets a cache take a 5xx to a validation "as if the server failed to respond"; for a
    background refresh that keeps the stored response (Varnish's VCL abandons a
    background fetch's 5xx: `if (beresp.status >= 500 && bereq.is_bgfetch) { return
    (abandon); }`). Severity: medium (one origin hiccup serves errors from the cache)."""
    caplog.set_level(logging.INFO, logger="cacheproxy")
    up = Flaky("max-age=1, stale-while-revalidate=600")
    c = await proxy(await origin(up.app))
    assert await (await c.get("/r")).text() == "good"
    up.error = (503, {"Cache-Control": "max-age=100"})
    stale = await c.get("/r")  # served stale, refreshed in the background
    assert await stale.text() == "good"
    assert "detail=stale-while-revalidate" in cache_status(stale)
    assert await until(lambda: up.calls == 2 and not c.app_proxy.driver._background)
    assert "background revalidation of" in caplog.text and "answered 503" in caplog.text
    after = await c.get("/r")
    assert after.status == 200 and await after.text() == "good"
    assert "detail=stale-while-revalidate" in cache_status(after)
    assert await until(lambda: up.calls == 3 and not c.app_proxy.driver._background)
    # the origin is back: the next refresh replaces the stored response as usual
    up.error, up.cc = None, "max-age=100"
    assert await (await c.get("/r")).text() == "good"
    assert await until(lambda: up.calls == 4 and not c.app_proxy.driver._background)
    fresh = await c.get("/r")
    assert await fresh.text() == "good" and cache_status(fresh).startswith("cacheproxy; hit")


async def test_an_origin_clock_behind_ours_is_named_in_a_warning(
        origin: Any, proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 9111 §4.2.3: a response is at least as old as its Date says (apparent_age),
    so an origin whose clock is 10 minutes behind sends `max-age=60` responses that arrive
    stale: each was stored (`stored; ttl=-541`) and never served fresh, every request went
    to the origin (EXPIRED), and nothing said why: the operator saw a hit ratio of zero.
    Squid computes the age the same way (within 24 h); Varnish and nginx ignore Date for
    max-age, so an operator coming from them looks for the cause in vain. Now one WARNING
    per origin (at most every 10 minutes) names the origin, the lag and a URL, and says
    to synchronise the clocks; the age stays as §4.2.3 computes it. An origin in step,
    or a response made stale by its Age (an upstream cache), is no clock's fault and gets
    no warning. Severity: low (diagnosis: the behaviour is the RFC's)."""
    caplog.set_level(logging.INFO, logger="cacheproxy")
    lag = {"/behind": -600.0, "/in-step": 0.0, "/aged": 0.0}

    async def answer(request: web.Request) -> web.Response:
        fields = {"Cache-Control": "max-age=60", "ETag": '"v1"',
                  "Date": format_http_date(time.time() + lag[request.path])}
        if request.path == "/aged":
            fields["Age"] = "100"
        return web.Response(text="page", headers=fields)
    app = web.Application()
    for path in lag:
        app.router.add_get(path, answer)
    c = await proxy(await origin(app))
    for path in ("/in-step", "/aged", "/behind", "/behind"):
        await (await c.get(path)).read()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "behind this host's clock" in warnings[0] and "/behind" in warnings[0]
    assert "synchronise the clocks" in warnings[0]
    # the age is still §4.2.3's: the response from the lagging origin is stale
    again = await c.get("/behind")
    assert "fwd=stale" in cache_status(again)
