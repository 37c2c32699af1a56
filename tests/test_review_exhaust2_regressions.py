"""Review (exhaust2): resource exhaustion in the day's new code (WebSocket pass-through,
the peek of an intercepted CONNECT, Happy Eyeballs, Via loops, a trusted front's scheme,
the status-line scanner): CPU, memory, descriptors or time a client can make the proxy
spend without bound. Each test failed on the code it was written against (0d960eb), or is
marked xfail (strict) with the reason it stays; real servers on 127.0.0.1 as elsewhere.
The bounds asserted are counts, or times with a wide margin (ten times) either way."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from cacheproxy.http.front_scheme import forwarded_proto


def scheme_app() -> web.Application:
    """An origin that answers with the X-Forwarded-Proto it was sent."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("X-Forwarded-Proto", "-"))

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return app


# --- a trusted front's Forwarded: proto= ---------------------------------------------------------


async def test_a_long_forwarded_element_costs_no_quadratic_time(proxy: Any, origin: Any) -> None:
    """With proxy.trust_forwarded, every request's scheme is read from its Forwarded field
    when it has no X-Forwarded-Proto (http/front_scheme.py), with a regular expression
    searched (finditer) through the last element: a run of token characters with no `=`
    made it try each start position and scan to the end from each, O(n²). One field line
    of 8,000 bytes (under the 8,190 a line may have) cost about 1.4 s of CPU, during which
    the event loop served no other client: a handful of such requests a second, from
    anyone who can reach the front, keeps the proxy from answering at all. The element's
    pairs are now split once (RFC 7239 §4: forwarded-pair *( ";" forwarded-pair )) and
    each read by itself. Severity: medium (trust_forwarded only, and only behind a front
    that leaves a client's Forwarded as it came, which nginx and HAProxy do by default)."""
    for value in ("a" * 8000, '"' + "a" * 8000, "proto=x;" * 1000 + "a" * 1000,
                  "a=" + "\"x;" * 2600):
        began = time.perf_counter()
        assert forwarded_proto([value]) is None
        assert time.perf_counter() - began < 0.05, value[:20]
    assert forwarded_proto(['for=1.2.3.4;proto="HTTPS";by=x']) == "https"
    assert forwarded_proto(["proto=https, for=x;proto=http"]) == "http"
    assert forwarded_proto(['proto="https";for="a;b"']) == "https"
    assert forwarded_proto(['for="a;proto=https"']) is None  # (inside a quoted-string)

    client = await proxy(await origin(scheme_app()), proxy={"trust_forwarded": True})
    began = time.perf_counter()
    resp = await client.get("/a", headers={"Forwarded": '"' + "a" * 8100})
    took = time.perf_counter() - began
    assert resp.status == 200 and await resp.text() == "http"
    assert took < 0.3, f"{took:.2f} s for one request"
    resp = await client.get("/b", headers={"Forwarded": "for=x;proto=https"})
    assert await resp.text() == "https"
