"""Findings of a review of the responses cacheproxy makes itself (errors, refusals, OPTIONS *,
TRACE, CONNECT) and of what a browser in front of it sees (review-own). Each test fails on
the code it was written against (9ba2860) and says what is expected, why (RFC section, or
what a peer does) and how severe it is. The origins and the proxy run on 127.0.0.1; the
client is a raw socket, to see the bytes the proxy writes."""

from __future__ import annotations

from typing import Any

from aiohttp import web
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
