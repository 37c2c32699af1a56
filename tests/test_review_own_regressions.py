"""Findings of a review of the responses cacheproxy makes itself (errors, refusals, OPTIONS *,
TRACE, CONNECT) and of what a browser in front of it sees (review-own). Each test fails on
the code it was written against (9ba2860) and says what is expected, why (RFC section, or
what a peer does) and how severe it is. The origins and the proxy run on 127.0.0.1; the
client is a raw socket, to see the bytes the proxy writes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from aiohttp import web
from support import read_json_log
from test_hostile_http_regressions import exchange, status_of


def _head(answer: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """The status line, the fields (lower-cased names) and what followed the head."""
    head, _, rest = answer.partition(b"\r\n\r\n")
    line, *lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for field_line in lines:
        name, _, value = field_line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return line.encode(), fields, rest


async def _proxy_port(origin: Any, proxy: Any) -> int:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    client = await proxy(await origin(app))
    return int(client.server.port)


async def test_refusals_of_a_request_head_are_never_stored_downstream(
        origin: Any, proxy: Any) -> None:
    """The answers the proxy makes when it refuses a request as it parses it (client_conn
    _refuse: 400, 414, 417, 431, 501, 505) carry no Cache-Control, unlike every other error
    of its own (respond.error_response says no-store: the 502, 504, 408, 503, the 400 of a
    bad Host). Whether such an answer is stored then depends on the cache in front: 414
    and 501 are heuristically cacheable (RFC 9110 §15.1, RFC 9111 §4.2.2), Varnish's
    builtin TTL covers 414, CDNs cache 4xx/5xx error pages for seconds by default, and
    nginx's common `proxy_cache_valid any 1m` stores anything that does not say otherwise.
    Seen with nginx 1.22 (proxy_cache, `proxy_cache_valid any 1m`, large_client_header_buffers
    4 32k) in front of the proxy: one request to /victim2?q=1 with a 9000-byte header field
    got 431, and the next plain request to that URL, anyone's, got the stored 431 for a
    minute: a cache-poisoned denial of service (CPDoS "HTTP Header Oversize", Nguyen et al.,
    CCS 2019, whose advice is no-store on error pages; nginx honours an upstream no-store
    over proxy_cache_valid). Severity: medium (one request takes a URL down for everyone
    behind a shared cache in front)."""
    port = await _proxy_port(origin, proxy)
    refused = {
        b"431": b"GET /a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"414": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"417": b"GET /a HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n\r\n",
        b"501": b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                b"0\r\n\r\n",
        b"505": b"GET /a\r\n\r\n",
    }
    for status, request in refused.items():
        line, fields, _ = _head(await exchange(port, request))
        assert line.split(b" ")[1] == status, line
        assert fields.get("cache-control") == "no-store", (status, fields)


async def test_a_refused_head_request_gets_no_content(origin: Any, proxy: Any) -> None:
    """A HEAD the proxy refuses once it read the head (an Expect it does not support: 417)
    gets its 417 with the text body after the head. RFC 9110 §9.3.2: the server "MUST NOT
    send content in the response" to HEAD, and RFC 9112 §6.3 says a HEAD response ends at
    the head: the client reads the body's bytes as the start of the next response (here
    the connection closes after them, so the harm is limited to a client that reads them as
    garbage). The answers of error_response already drop it for HEAD (the 502 of a HEAD
    has no content). Severity: low."""
    port = await _proxy_port(origin, proxy)
    answer = await exchange(port, b"HEAD /a HTTP/1.1\r\nHost: x\r\nExpect: x-unknown\r\n\r\n")
    assert status_of(answer) == b"HTTP/1.1 417 Expectation Failed"
    _, fields, rest = _head(answer)
    assert fields["connection"] == "close"
    assert rest == b"", rest


def paused_media(path: str, half: int, headers: dict[str, str]
                 ) -> tuple[web.Application, asyncio.Event, asyncio.Event]:
    """An origin of a 2 * half byte body at path that sends its first half, sets the
    first event, and sends the rest once the test sets the second (or after 5 s)."""
    first_half = asyncio.Event()  # the origin sent half of the body
    go_on = asyncio.Event()  # the test lets it send the rest

    async def media(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers=headers)
        resp.content_length = 2 * half
        await resp.prepare(request)
        await resp.write(b"a" * half)
        first_half.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(go_on.wait(), 5)
        await resp.write(b"b" * half)
        return resp

    app = web.Application()
    app.router.add_get(path, media)
    return app, first_half, go_on


async def test_a_media_elements_first_range_request_streams_on_a_miss(
        origin: Any, proxy: Any) -> None:
    """A <video>/<audio> element's first request is always `Range: bytes=0-` (seen from
    headless Chromium through the proxy: `bytes=0-`, then `bytes=N-` with If-Range to
    seek). On a miss the proxy asks for the whole representation to store it (README, How
    caching decisions are made) and, when it will store it, reads all of it before the
    client gets a byte (driver._perform, whole_first): through a 4 MiB response that the
    origin sends over 3.2 s, curl measured the first byte of the 206 at 3.2 s, where the
    same miss without Range starts at 3 ms. A user presses play and waits for the whole
    file (up to cache.max_object_bytes, 8 MiB) to arrive at the proxy, on every first play
    of every video; DESIGN's "the first byte reaches the client before the last byte
    leaves the origin" does not hold. nginx's proxy_cache streams the range of the whole
    response it fetches as the bytes come (its range filter works on the stream); Squid
    (range_offset_limit 0) passes the Range on. One range of a known-length 200 can be
    cut as the body streams, while the whole is stored. Severity: medium (latency a user
    sees on every cold media play; nothing wrong is served)."""
    half = 256 * 1024
    app, first_half, go_on = paused_media("/v.mp4", half, {
        "Cache-Control": "max-age=600", "ETag": '"v1"', "Content-Type": "video/mp4",
        "Accept-Ranges": "bytes"})
    client = await proxy(await origin(app))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(b"GET /v.mp4 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nRange: bytes=0-\r\n\r\n"
                     % client.server.port)
        await asyncio.wait_for(first_half.wait(), 5)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        except TimeoutError:
            head = b""
        streamed = bool(head)  # the 206 began while the origin held its second half
        go_on.set()
        if not head:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        body = await asyncio.wait_for(reader.readexactly(2 * half), 10)
    finally:
        go_on.set()
        writer.close()
    line, fields, _ = _head(head)
    assert line == b"HTTP/1.1 206 Partial Content", line
    assert fields["content-range"] == f"bytes 0-{2 * half - 1}/{2 * half}"
    assert body == b"a" * half + b"b" * half
    assert streamed, "the 206 head came only once the origin had sent the whole body"
    again = await client.get("/v.mp4", headers={"Range": "bytes=10-19"})  # stored whole
    assert again.status == 206 and await again.read() == b"a" * 10
    assert again.headers["X-Cache"] == "HIT"


async def test_the_log_line_of_a_refused_head_does_not_invent_its_protocol(
        origin: Any, proxy: Any, tmp_path: Any) -> None:
    """A request the parser refuses (here a 431: one field over 8190 bytes, sent as
    `GET /a HTTP/1.1`) is logged with aiohttp's placeholder message: method "UNKNOWN",
    path "/" and protocol "HTTP/1.0", whatever the client sent. The status (431) and cache
    field (ERROR) are right, but the line names a protocol the client never used and a
    path it never asked for: an operator counting HTTP/1.0 clients, or looking for the
    requests to /a that failed (`cacheproxy logs --path /a`), is misled. nginx logs the
    request line it read for a 400/414/431 ("GET /a HTTP/1.1"), or "-" when it read
    none. Expected: the method, path and protocol sent when the request line was read
    whole, else "-" rather than an invented value. Severity: low (the log only)."""
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/a", ok)
    client = await proxy(await origin(app), log={"path": str(tmp_path / "log")})
    answer = await exchange(client.server.port, b"GET /a HTTP/1.1\r\nHost: x\r\nX-Big: "
                            + b"a" * 9000 + b"\r\n\r\n")
    assert status_of(answer) == b"HTTP/1.1 431 Request Header Fields Too Large"
    [line] = await read_json_log(client)
    assert (line["status"], line["cache"]) == (431, "ERROR")
    assert line["protocol"] in ("HTTP/1.1", "-"), line
    assert line["path"] in ("/a", "-") and line["method"] in ("GET", "-"), line


@pytest.mark.parametrize(("sent", "status", "logged"), [
    # A field line llhttp refuses, after a whole request line: that line, without its
    # query (the secret parameters the log redacts are the route's, not chosen yet).
    (b"HEAD /a?token=s3cret HTTP/1.1\r\nHost: x\r\nBad Field: 1\r\n\r\n", 400,
     ("HEAD", "/a", "HTTP/1.1")),
    # A target over 8190 bytes: the line as read; refused before its end came: nothing
    # invented.
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414,
     ("GET", "/" + "a" * 9000, "HTTP/1.1")),
    (b"GET /" + b"a" * 9000, 414, ("-", "-", "-")),
    # Behind a whole request in the same read: the refused one's own line.
    (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 1"
     b"\r\nContent-Length: 2\r\n\r\n", 400, ("PUT", "/b", "HTTP/1.1")),
])
async def test_a_refused_heads_log_line_names_what_was_sent_or_nothing(
        origin: Any, proxy: Any, tmp_path: Any, sent: bytes, status: int,
        logged: tuple[str, str, str]) -> None:
    """The log line of a head the parser refused names the request line that was read
    whole (nginx does), and "-" where it was not; a refused HEAD gets no body (RFC 9110
    §9.3.2), and a secret in its query stays out of the log."""
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    client = await proxy(await origin(app), log={"path": str(tmp_path / "log")})
    answer = await exchange(client.server.port, sent)
    _, fields, rest = _head(answer.split(b"HTTP/1.1 " + str(status).encode())[-1])
    assert fields["content-length"] != "0" and (rest == b"") is (logged[0] == "HEAD")
    *_, refused = await read_json_log(client)
    assert refused["status"] == status, refused
    assert (refused["method"], refused["path"], refused["protocol"]) == logged
    assert "s3cret" not in (tmp_path / "log").read_text()


@pytest.mark.parametrize(("second", "status", "logged"), [
    (b"GET /b HTTP/3.0\r\nHost: x\r\n\r\n", 505, ("GET", "/b", "HTTP/3.0")),
    (b"GET /b HTTP/9.9\r\nHost: x\r\n\r\n", 505, ("GET", "/b", "HTTP/9.9")),
    (b"GET /b HTTP/1.1\r\nHost: x\r\nBad Field: 1\r\n\r\n", 400, ("GET", "/b", "HTTP/1.1")),
])
async def test_a_request_before_a_refused_request_line_is_answered(
        origin: Any, proxy: Any, tmp_path: Any, second: bytes, status: int,
        logged: tuple[str, str, str]) -> None:
    """A request pipelined before one whose request line llhttp refuses (a version it does
    not implement) in the same read was dropped: llhttp raises for the whole read, and only
    a 400 came back (README: "requests pipelined before it are answered first", as they
    were for a malformed field). Now the first is answered, then the refusal, which the log
    names by its own request line, not by the first one's. Severity: low."""
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    client = await proxy(await origin(app), log={"path": str(tmp_path / "log")})
    answer = await exchange(client.server.port,
                            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" + second)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:40]
    assert b"\r\n\r\nokHTTP/1.1 " + str(status).encode() in answer, answer
    first, refused = await read_json_log(client)
    assert first["path"] == "/a" and first["status"] == 200
    assert (refused["method"], refused["path"], refused["protocol"]) == logged
    assert refused["status"] == status
