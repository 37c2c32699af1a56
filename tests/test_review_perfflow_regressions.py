"""Review perfflow: the flow's steps of a miss and a pass-through (request_facts, lookup's
miss and revalidation branches, the decision on a 200), made with fewer objects and calls
per request: decision values that never differ (a Verdict's "no", a Pass for a reason, a
Forward that validates nothing) are made once and handed out again, and the request's
validators and preconditions are read once where its facts are made. The tests pin,
through the real proxy, what those shapes could get wrong: one request's decision
reaching another, and a client's own conditionals on a URL whose answers are not stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from support import raw_origin
from test_client_plane import Raw
from test_quick_hits import request


def _answer(head: bytes) -> bytes:
    """/pass* is never storable (no-store); with a client validator, the origin says 304."""
    line = head.split(b"\r\n", 1)[0]
    lowered = head.lower()
    if b"if-none-match:" in lowered or b"if-modified-since:" in lowered:
        return b'HTTP/1.1 304 Not Modified\r\nETag: "p1"\r\nCache-Control: no-store\r\n\r\n'
    if b"if-unmodified-since:" in lowered:
        return b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\n\r\n"
    if b" /private" in line:
        return b"HTTP/1.1 200 OK\r\nCache-Control: private\r\nContent-Length: 2\r\n\r\nok"
    return b'HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nETag: "p1"\r\n' \
        b"Content-Length: 2\r\n\r\nok"


@asynccontextmanager
async def _through(proxy: Any) -> AsyncIterator[tuple[Raw, list[bytes]]]:
    """A connection to a proxy (no collapsing) in front of an origin answering _answer,
    and the request heads the origin saw, in order."""
    heads: list[bytes] = []

    def seen(head: bytes) -> bytes:
        heads.append(head)
        return _answer(head)

    async with raw_origin(seen) as port:
        client = await proxy(f"http://127.0.0.1:{port}", cache={"collapse": False})
        yield await Raw.open(client), heads


async def test_a_hit_for_pass_url_sends_each_clients_own_validators(proxy: Any) -> None:
    """Performance (perfflow), a behaviour no end-to-end test pinned for If-Modified-Since
    alone: lookup reads whether the client sent validators from a fact made with the
    request (RequestFacts.validating), no longer from two properties. On a URL whose last
    answer was not storable (hit-for-pass), a request with If-None-Match or with
    If-Modified-Since alone goes as it is (Varnish's pass: RFC 9111 §4.3.2 strips them
    only so that the cache can fill), and the origin's 304 reaches the client; the next
    request without validators gets the 200, not a 304 decided for another. Severity if
    broken: medium (a wasted full answer, or a 304 to a client that cannot use it)."""
    async with _through(proxy) as (conn, heads):
        sequence = ((), ('If-None-Match: "p1"',),
                    ("If-Modified-Since: Wed, 01 Jan 2025 00:00:00 GMT",), (),
                    ("If-Modified-Since: Wed, 01 Jan 2025 00:00:00 GMT",), ())
        for fields in sequence:
            await conn.send(request("/pass", fields))
            reply = await conn.reply()
            assert reply.status == (304 if fields else 200), fields
            assert reply.headers.get("x-cache") == "MISS"
        # Each validator reached the origin as the client sent it, after the first answer
        # made the URL hit-for-pass; no request without one carried one.
        for fields, head in zip(sequence, heads, strict=True):
            lowered = head.lower()
            sent = b"if-none-match:" in lowered or b"if-modified-since:" in lowered
            assert sent == bool(fields), head


async def test_pass_decisions_shared_between_requests_keep_each_ones_reason(
        proxy: Any) -> None:
    """Performance (perfflow): a Pass for a reason is made once and handed to every answer
    with that reason, as is the Verdict behind it. Different reasons on one connection
    must still be each answer's own: Cache-Status detail=no-store for one, detail=private
    for the next (RFC 9211 §2.8), and the client's If-Unmodified-Since (a precondition
    only the origin evaluates here, RFC 9110 §13.2.2: RequestFacts.preconditioned, now
    read once as a field) goes upstream as it is and its 412 comes back as a bypass.
    Severity if broken: medium (a wrong reason logged and sent; a precondition dropped)."""
    async with _through(proxy) as (conn, heads):
        for path, detail in (("/pass", "no-store"), ("/private", "private"),
                             ("/pass", "no-store"), ("/private", "private")):
            await conn.send(request(path, ()))
            reply = await conn.reply()
            assert reply.status == 200
            assert f"detail={detail}" in reply.headers["cache-status"], reply.headers
        await conn.send(request("/other", ("If-Unmodified-Since: Wed, 01 Jan 2025 "
                                           "00:00:00 GMT",)))
        reply = await conn.reply()
        assert reply.status == 412
        assert "fwd=bypass" in reply.headers["cache-status"], reply.headers
        assert b"if-unmodified-since:" in heads[-1].lower()
