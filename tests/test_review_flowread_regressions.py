"""Findings of a deep read of the sans-I/O request flow (cacheproxy/http/flow/) and the
driver that performs it (proxy/driver.py, exchange.py, handler.py, respond.py, fill.py,
collapse.py) against RFC 9111, RFC 9110, RFC 5861 and RFC 9211 (review-flowread): where
two rules meet (a Range behind a stale-while-revalidate refresh, a 304 to a conditional
request, HEAD freshening, only-if-cached, max-stale with must-revalidate, Vary changed by a
304). Each test ran against the real proxy with an origin on 127.0.0.1, failed before its
fix, and says what is expected, why, and how severe it is."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from support import raw_get, raw_origin, until

# -- 1. a Range that triggers a stale-while-revalidate refresh loses the refresh --------------


async def test_rfc5861_s3_a_range_request_s_background_refresh_stores_a_chunked_200(
        proxy) -> None:
    """A Range request (a media element's seek, a download manager) answered from a stored
    response under stale-while-revalidate started a background refresh that kept the
    client's Range in its facts: the origin's new 200 of unknown length (chunked) was then
    taken as "ask again with the Range" (RFC 9110 §14.2, meant for a client waiting) and
    dropped, the connection closed. Clients went on getting the old representation for as
    long as stale-while-revalidate allowed, and every Range request in that window fetched
    the new one again for nothing. RFC 5861 §3: the refresh is to "refresh the stale
    response in the background", which a whole 200 does whatever its framing (Varnish's
    background fetch stores it). Severity: medium (a changed file keeps being served old
    within the stale window, upstream traffic per request)."""
    heads: list[bytes] = []
    answer = _in_turn(
        heads,
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0, stale-while-revalidate=60"
        b'\r\nETag: "1"\r\nContent-Length: 2\r\n\r\nv1',
        b'HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nETag: "2"\r\n'
        b"Transfer-Encoding: chunked\r\n\r\n2\r\nv2\r\n0\r\n\r\n")

    async with raw_origin(answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        assert (await raw_get(c, "/r"))[2] == b"v1"
        status, fields, body = await raw_get(c, "/r", "Range: bytes=0-0")
        assert (status, body) == (206, b"v")  # the stale part, from storage
        assert "stale-while-revalidate" in fields["cache-status"]
        assert await until(lambda: len(heads) == 2)
        assert await until(lambda: not c.app_proxy.driver._background)
        assert b"Range" not in heads[1] and b'If-None-Match: "1"' in heads[1]
        status, fields, body = await raw_get(c, "/r")
        assert (status, body) == (200, b"v2"), fields
        assert fields["cache-status"].startswith("cacheproxy; hit")
        assert len(heads) == 2


# -- 2. a no-store request leads a collapse whose answer it may not store --------------------


def _waiting(c: Any) -> int:
    """The requests waiting behind another's upstream request (their callbacks on the
    leaders' futures)."""
    return sum(len(f._callbacks or ()) for f in c.app_proxy.driver.collapser._inflight.values())


async def test_s5_2_1_5_a_no_store_request_does_not_lead_a_collapse(origin: Any, proxy: Any
                                                                     ) -> None:
    """A miss from a client sending `Cache-Control: no-store` became the leader of the URL's
    collapse: the requests for the URL that came while its answer was on its way waited
    behind it, although that answer may not be stored (§5.2.1.5: "a cache MUST NOT store
    any part of either this request or any response to it"). Released at its head with
    nothing stored, each of them then went to the origin on its own, at once: a herd of
    N upstream requests, where one would have filled the cache for the others, and each
    had waited for the no-store request's origin time first. RFC 9111 §4 shares an answer
    between requests only when it is stored; nginx's proxy_cache_lock is not taken by a
    request that bypasses the cache. Severity: medium (collapse defeated by any one
    client's no-store at the moment of a miss, origin load and latency)."""
    seen: list[str] = []
    hold = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cache-Control", ""))
        await hold.wait()
        return web.Response(text="hi", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/r", handle)
    c = await proxy(await origin(app))
    first = asyncio.ensure_future(c.get("/r", headers={"Cache-Control": "no-store"}))
    assert await until(lambda: len(seen) == 1)
    others = [asyncio.ensure_future(c.get("/r")) for _ in range(3)]
    # Each of the three is either at the origin or waiting behind another request.
    assert await until(lambda: len(seen) - 1 + _waiting(c) == 3)
    hold.set()
    assert await (await first).text() == "hi"
    for other in others:
        assert await (await other).text() == "hi"
    assert len(seen) == 2, f"{len(seen) - 1} upstream requests for the three, not 1"


# -- 3. a new representation too big to store left the outdated one to be served stale ------

_BIG = b"2" * 300  # past the max_object_bytes of 100 the tests below set
_V1_STALE_IF_ERROR = (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0, stale-if-error=600\r\n"
                      b'ETag: "1"\r\nContent-Length: 2\r\n\r\nv1')
_DOWN = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown"
_CHUNKED_V2 = (b'HTTP/1.1 200 OK\r\nCache-Control: max-age=0, stale-if-error=600\r\n'
               b'ETag: "2"\r\nTransfer-Encoding: chunked\r\n\r\n12c\r\n' + _BIG
               + b"\r\n0\r\n\r\n")


def _in_turn(heads: list[bytes], *answers: bytes) -> Callable[[bytes], bytes]:
    """A raw origin's script: each request head noted in heads, answered by the answer of
    its turn (the last one for every request past them)."""
    def answer(head: bytes) -> bytes:
        heads.append(head)
        return answers[min(len(heads), len(answers)) - 1]
    return answer


async def test_s4_3_3_a_chunked_200_too_big_to_store_removes_the_response_it_outdates(
        proxy) -> None:
    """A stale stored response (v1, with stale-if-error) was revalidated and the origin
    answered a new representation (v2) of unknown length (chunked) that proved bigger
    than cache.max_object_bytes: the client got v2, nothing was stored, and v1 stayed.
    When the origin then failed (503), the proxy served v1 under stale-if-error: a user
    who had just been sent v2 was sent the older v1 after it, content going back in
    time. The same answer with a Content-Length over the limit removed v1 at once (the
    flow's rule for "a new representation (200) that may not be stored", _not_stored):
    only the framing decided. RFC 9111 §4.3.3: the full response is the cache's current
    knowledge of the resource, and RFC 5861 §4 serves "a stale response" that is the
    cache's latest, not one it knows to be replaced. Severity: medium (outdated content
    served after newer, under stale-if-error or stale-while-revalidate, for large files
    sent chunked)."""
    heads: list[bytes] = []
    answer = _in_turn(heads, _V1_STALE_IF_ERROR, _CHUNKED_V2, _DOWN)

    async with raw_origin(answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}", cache={"max_object_bytes": 100})
        assert (await raw_get(c, "/r"))[2] == b"v1"
        status, fields, body = await raw_get(c, "/r")
        assert (status, fields["etag"]) == (200, '"2"')  # v2, not stored (too big)
        status, fields, body = await raw_get(c, "/r")
        assert (status, body) == (503, b"down"), (status, fields, body)
        assert "stale-if-error" not in fields["cache-status"]


async def test_rfc5861_s3_a_background_refresh_too_big_to_store_removes_the_old_response(
        proxy) -> None:
    """The background refresh behind stale-while-revalidate got a new representation of
    unknown length, too big to store: v1 stayed, so every client in the window went on
    getting v1 (each starting another refresh that fetched v2 again and dropped it),
    though the origin had answered with v2. As in the foreground (the test above), the
    outdated response is removed: the next request is a miss. Severity: medium."""
    heads: list[bytes] = []
    answer = _in_turn(
        heads,
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0, stale-while-revalidate=600"
        b'\r\nETag: "1"\r\nContent-Length: 2\r\n\r\nv1',
        _CHUNKED_V2)

    async with raw_origin(answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}", cache={"max_object_bytes": 100})
        assert (await raw_get(c, "/r"))[2] == b"v1"
        status, fields, body = await raw_get(c, "/r")
        assert body == b"v1" and "stale-while-revalidate" in fields["cache-status"]
        assert await until(lambda: len(heads) == 2)
        assert await until(lambda: not c.app_proxy.driver._background)
        status, fields, body = await raw_get(c, "/r")
        assert (status, fields["etag"]) == (200, '"2"'), (status, fields, body)
        assert "fwd=uri-miss" in fields["cache-status"]


async def test_rfc9110_s14_2_a_range_refetched_from_a_new_200_removes_the_old_response(
        proxy) -> None:
    """A Range request for a stale stored response (v1, stale-if-error) was revalidated;
    the origin answered the new representation (v2) whole, of unknown length, so the
    proxy asked again with the client's Range (the origin's 206 of v2 went to the client)
    and stored nothing, keeping v1. The next request, the origin failing, got v1 under
    stale-if-error after the client had been sent part of v2. As for a whole answer too
    big to store (above), the outdated response goes. Severity: low (a Range request, a
    chunked 200 and a failing origin in a row)."""
    heads: list[bytes] = []
    answer = _in_turn(
        heads, _V1_STALE_IF_ERROR,
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0, stale-if-error=600\r\n"
        b'ETag: "2"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nv2\r\n0\r\n\r\n',
        b'HTTP/1.1 206 Partial Content\r\nETag: "2"\r\n'
        b"Content-Range: bytes 0-0/2\r\nContent-Length: 1\r\n\r\nv",
        _DOWN)

    async with raw_origin(answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        assert (await raw_get(c, "/r"))[2] == b"v1"
        status, fields, body = await raw_get(c, "/r", "Range: bytes=0-0")
        assert (status, fields["etag"], body) == (206, '"2"', b"v")
        assert b"Range: bytes=0-0" in heads[2]
        status, fields, body = await raw_get(c, "/r")
        assert (status, body) == (503, b"down"), (status, fields, body)
