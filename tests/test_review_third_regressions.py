"""Findings of a third reader's review of the latest changes (review-third): the single-range
miss streamed as its body arrives (95fdf3a), the request-head bound, collapsing after a failed
leader, and HTTP/1.1 status lines to HTTP/1.0 clients. Each test fails on the code it was
written against (08d4a51) and says what is expected, why (RFC section, or what a peer does)
and how severe it is. The origins and the proxy run on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web
from test_hostile_http_regressions import exchange
from test_review_second_regressions import stale_waiters

BODY = bytes(range(256)) * 64  # 16 KiB


def _media_app(seen: list[dict[str, str]], body: bytes = BODY,
               extra: dict[str, str] | None = None) -> web.Application:
    """An origin of one cacheable 200 (ETag "v1") that answers a Range itself, as
    aiohttp's static files do; seen gets each request's fields."""
    async def media(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        headers = {"Cache-Control": "max-age=600", "ETag": '"v1"',
                   "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
                   "Content-Type": "video/mp4", "Accept-Ranges": "bytes", **(extra or {})}
        rng = request.headers.get("Range")
        if rng is not None and rng.startswith("bytes=") and "," not in rng:
            first_s, _, last_s = rng[6:].partition("-")
            if first_s:
                first = int(first_s)
                last = min(int(last_s), len(body) - 1) if last_s else len(body) - 1
            else:
                first, last = len(body) - int(last_s), len(body) - 1
            headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
            return web.Response(status=206, body=body[first:last + 1], headers=headers)
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/v.mp4", media)
    return app


async def test_a_range_miss_with_a_matching_if_none_match_gets_304(
        origin: Any, proxy: Any) -> None:
    """A Range miss with the client's own If-None-Match (or If-Modified-Since) that the
    fetched 200 satisfies gets a 206 of the range (95fdf3a's streamed part), where the
    store-first path (and any hit) answers 304. RFC 9110 §13.2.2: If-None-Match is
    evaluated before Range, and a match means 304; README (`Range` row): "If-None-Match/
    If-Modified-Since come first (304)". The proxy strips the client's validators upstream
    to store the whole (strips_client_conditionals), so only it can answer them; the
    streamed path (driver._perform, whole_first with one range) goes to exchange.relay
    without client_answer. nginx's not_modified filter runs before its range filter.
    Severity: low (the client gets bytes it already has; nothing wrong is cached)."""
    seen: list[dict[str, str]] = []
    client = await proxy(await origin(_media_app(seen)))
    for conditional in ({"If-None-Match": '"v1"'},
                        {"If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"}):
        resp = await client.get(f"/v.mp4?{len(seen)}",
                                headers={"Range": "bytes=0-99", **conditional})
        assert resp.status == 304, (conditional, resp.status, resp.headers)
        assert await resp.read() == b""



def _fields_of(n: int, tag: bytes) -> bytes:
    """n header field lines of 8,000 bytes each (under aiohttp's 8,190 per field)."""
    return b"".join(b"X-%s%d: %s\r\n" % (tag, i, b"a" * 8000) for i in range(n))


async def test_a_head_begun_after_a_request_body_is_bounded(origin: Any, proxy: Any) -> None:
    """The request-head bound (64 KiB, client_conn MAX_HEAD_BYTES) misses the part of a
    head read together with the end of the previous request's body: _begun_head counts
    what follows the last whole request only when that request had no body, and the head
    is measured whole (_heads_within) only when the count plus the read that ends it
    passes the bound. A GET with `Content-Length: 5` followed, in the same write, by a
    head of 7 fields of 8,000 bytes, then 8 more in two writes, carried a 120 KB head to
    the origin (200) where README says "a whole head (request line and fields) over 64 KiB
    **431** as soon as it passes that, whether or not it has ended". What slips past is up
    to one read (uvloop reads 256 KiB) per request, so the per-connection memory the bound
    exists for is not what README says; nginx (large_client_header_buffers) and Squid
    (request_header_max_size) bound every head whatever came before it. Severity: low
    (aiohttp's own 128-field, 8,190-byte bounds still hold a head near 1 MB)."""
    seen: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="ok", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    client = await proxy(await origin(app))
    answer = await exchange(
        client.server.port,
        b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /b HTTP/1.1\r\nHost: x\r\n" + _fields_of(7, b"a"),
        _fields_of(4, b"b"), _fields_of(4, b"c"), b"\r\n")
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"200", b"431"], statuses
    assert seen == ["/a"], seen


async def test_a_head_held_behind_a_full_pipeline_is_bounded(origin: Any, proxy: Any) -> None:
    """The request-head bound misses the part of a head the parser held while its message
    queue was full (MAX_PIPELINED, 32 requests waiting): data_received sets the count to 0
    on a full queue (b5d63a8: "reset only on a full message queue"), and when the held
    bytes are fed again (data_received(b"")) nothing after the last message they complete
    is counted (_begun_head of b""). 40 pipelined GETs, then in the same write the start of
    a head with 7 fields of 8,000 bytes, then 8 more in two writes: the 120 KB head went to
    the origin (200), where README says a head over 64 KiB gets 431 as soon as it passes
    that. nginx and Squid bound each head whatever was pipelined before it. Severity: low
    (one read's worth per request beyond the bound; aiohttp's field bounds still hold)."""
    seen: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        seen.append(request.path)
        await asyncio.sleep(0.02)
        return web.Response(text="ok", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    client = await proxy(await origin(app))
    small = b"".join(b"GET /s%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(40))
    answer = await exchange(client.server.port,
                            small + b"GET /big HTTP/1.1\r\nHost: x\r\n" + _fields_of(7, b"a"),
                            _fields_of(4, b"b"), _fields_of(4, b"c"), b"\r\n", idle=3)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"200"] * 40 + [b"431"], statuses[-3:]
    assert "/big" not in seen


async def test_waiters_behind_a_leader_answered_stale_on_a_5xx_are_answered_stale(
        origin: Any, proxy: Any) -> None:
    """6b67761 answers the waiters behind a leader that got no answer (LEADER_FAILED) with
    the stored response usable on error, as the leader was. A leader that got a 5xx (here
    a 503 after 0.3 s) and was answered stale-if-error (RFC 5861 §4: 500, 502, 503, 504)
    released its waiters as if it had succeeded: each looked again, found the same stale
    response and went to the failing origin, all at once (4 requests to the origin for 4
    clients, the waiters answered at 0.6 s instead of 0.3 s): the herd on an origin that
    just failed that LEADER_FAILED exists to avoid. Varnish's grace and nginx's
    proxy_cache_use_stale (with proxy_cache_background_update / lock) serve the waiters
    the stale copy. Severity: low (load on a failing origin, latency, within
    collapse_timeout)."""
    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down", headers={"Cache-Control": "no-store"})

    answers, calls = await stale_waiters(origin, proxy, unavailable)
    assert all(a[:2] == (200, "v1") and "stale-if-error" in a[2] for a in answers), answers
    assert sum("collapsed" in cs for _, _, cs in answers) == 3, answers
    assert calls == 1, calls
