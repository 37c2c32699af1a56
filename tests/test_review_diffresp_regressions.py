"""Findings of a differential review of unusual origin responses (review-diffresp): the
same answers sent through cacheproxy, Squid 5.7 (accel) and nginx 1.22 (proxy_cache) from
one scripted origin, what each client got compared on the miss and on the next request.
Each test fails on the code it was written against (5e47b2b) and says what is expected,
why (RFC section, or what the peers do) and how severe it is. Origins and the proxy run
on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

from aiohttp import web
from support import until

LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"


class SplitBrain:
    """An origin behind which two backends answer: the tag of the first response ("a") is
    not the other's ("b"), and the other evaluates If-Modified-Since only (RFC 9110
    §13.2.2 puts If-None-Match first; many frameworks and static servers do not), so a
    conditional request gets a 304 that carries the other tag. An unconditional request
    gets the other's 200."""

    def __init__(self, first_cc: str) -> None:
        self.first_cc = first_cc
        self.seen: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_get("/r", self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        if len(self.seen) == 1:
            return web.Response(text="one", headers={
                "Cache-Control": self.first_cc, "ETag": '"a"', "Last-Modified": LAST_MODIFIED,
                "Age": "5"})
        headers = {"Cache-Control": "max-age=60", "ETag": '"b"',
                   "Last-Modified": LAST_MODIFIED}
        if request.headers.get("If-Modified-Since") == LAST_MODIFIED:
            return web.Response(status=304, headers=headers)
        return web.Response(text="two", headers=headers)


async def test_background_refresh_follows_a_304_for_another_representation(
        origin: Any, proxy: Any) -> None:
    """RFC 9111 §4.3.4: a 304 whose strong ETag is not the stored one's does not select
    the stored response, and "the cache MUST NOT use the new response to update any stored
    responses". In the foreground the proxy then asks once more without conditions and
    stores the full answer (driver.py Refetch). The stale-while-revalidate refresh (RFC
    5861 §3, driver._refresh) drops that decision: nothing is fetched nor stored, so the
    stale response keeps being served for the whole stale-while-revalidate window (a day,
    with the common `stale-while-revalidate=86400`) although the origin has a newer one,
    and every request in that window sends the origin one more conditional request (seen
    through the proxy: 4 requests, 4 upstream requests, the first body each time). nginx
    1.22 with proxy_cache_background_update refreshes once and stops asking (it takes any
    304). Severity: medium (stale content pinned, origin load as if nothing were cached)."""
    up = SplitBrain("max-age=1, stale-while-revalidate=600")
    c = await proxy(await origin(up.app))
    first = await c.get("/r")
    assert await first.text() == "one"
    stale = await c.get("/r")  # served stale, refreshed in the background
    assert await stale.text() == "one"
    assert "stale-while-revalidate" in stale.headers["Cache-Status"]
    await until(lambda: not c.app_proxy.driver._background)
    after = await c.get("/r")
    assert await after.text() == "two"
    assert after.headers["X-Cache"] == "HIT"
    # the refresh: the conditional request, then the full one (as the foreground does)
    assert len(up.seen) == 3 and "If-None-Match" not in up.seen[2]


async def test_private_naming_no_field_keeps_the_whole_response_private(
        origin: Any, proxy: Any) -> None:
    """RFC 9111 §5.2.2.7: `private` keeps a response out of shared caches; its qualified
    form `private="F"` only the fields it names. `private=" "` and `private=","` name no
    field, and `private=""` is already read as unqualified (the whole response private),
    but these two were read as a qualified form with nothing in it: the response was
    stored and served to every client from the shared cache. Squid 5.7 and nginx 1.22
    store neither. Severity: low (an odd value, but the unsafe direction: a response
    the origin marked private is shared)."""
    calls: list[int] = []

    async def answer(request: web.Request) -> web.Response:
        calls.append(1)
        value = request.query["v"]
        return web.Response(text=f"for user {len(calls)}",
                            headers={"Cache-Control": f"max-age=60, private={value}"})
    app = web.Application()
    app.router.add_get("/r", answer)
    c = await proxy(await origin(app))
    for value in ('" "', '","', '""'):
        await c.get("/r", params={"v": value})
        other = await c.get("/r", params={"v": value})
        assert other.headers["X-Cache"] == "MISS", value
        assert "detail=private" in other.headers["Cache-Status"], value
    assert len(calls) == 6


async def test_private_content_encoding_is_not_replayed_without_its_coding(
        origin: Any, proxy: Any) -> None:
    """RFC 9111 §5.2.2.7: a shared cache must not store the fields a qualified `private`
    names, "whereas it can store the remainder". When the named field is Content-Encoding
    the remainder is a gzip body without the field that says so (RFC 9110 §8.4): the
    proxy stored it and served the compressed bytes as identity to every later client
    (README documents the qualified form as "stored without those fields"; this corner
    corrupts the content). Squid 5.7 and nginx 1.22 store no qualified-private response.
    Severity: low (an odd origin, but clients get bytes they cannot read)."""
    body = gzip.compress(b"hello world")

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={
            "Cache-Control": 'max-age=60, private="Content-Encoding"',
            "Content-Encoding": "gzip", "Content-Type": "text/plain"})
    app = web.Application()
    app.router.add_get("/r", answer)
    c = await proxy(await origin(app))
    await c.get("/r")
    again = await c.get("/r")
    assert await again.read() == body
    assert again.headers.get("Content-Encoding") == "gzip"
    assert again.headers["X-Cache"] == "MISS"


async def test_http10_answer_with_transfer_encoding_closes_its_connection(
        origin: Any, proxy: Any) -> None:
    """RFC 9112 §6.1: "A server or client that receives an HTTP/1.0 message containing a
    Transfer-Encoding header field MUST treat the message as if the framing is faulty,
    even if a Content-Length is present, and close the connection after processing the
    message. The message sender might have retained a portion of the message, in buffer,
    that could be misinterpreted by further use of the connection." The proxy decoded the
    chunks and put the connection back in its pool (Squid 5.7 too); the next request went
    on it. nginx 1.22 closes it. Severity: low (a desync guard the RFC makes a MUST)."""
    connections: list[list[bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads: list[bytes] = []
        connections.append(heads)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                if head.startswith(b"GET /old "):
                    writer.write(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                                 b"Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\n"
                                 b"\r\n5\r\nhello\r\n0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
                                 b"Content-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        c = await proxy(f"http://127.0.0.1:{port}")
        old = await c.get("/old")
        assert old.status == 200 and await old.read() == b"hello"
        after = await c.get("/next")
        assert await after.read() == b"ok"
        used = [[h.split(b" ")[1] for h in heads] for heads in connections]
        assert [b"/old"] in used and [b"/next"] in used, used
    finally:
        server.close()
