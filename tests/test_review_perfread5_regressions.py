"""Review perfread5: the client request's read, common to every request (a client
connection's data_received, the request parser's wrapper feed_data and message_consumed,
the quick path's call, and the timer set after each answer). What was looked at: where the
instructions of one usual keep-alive GET go from its bytes to quick.hit, and what the read
does after each answer when nothing is queued. These tests pin what the changes rely on."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from support import until
from test_client_plane import Raw
from test_review_h2clients_regressions import _H2C

from cacheproxy.proxy.client_conn import ClientConnection


def _origin() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b"x", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_route("GET", "/{name}", answer)
    return app


async def test_a_client_connection_keeps_its_attributes_in_slots(
        proxy: Any, origin: Any) -> None:
    """What this pins: a ClientConnection has about 60 attributes; past 30, CPython 3.11
    gives an instance a dict of its own instead of its class's shared keys, and every
    `self._x` on the read and write paths of every request was a dict lookup (a 1 KiB hit
    112,609 -> 107,136 instructions with slots, a pass-through 240,026 -> 231,989). An
    attribute added without its slot fails at once (AttributeError, in every test that
    opens a connection); a base class without `__slots__` (ConnectMethod's mixin) would
    bring the dict back silently: this test says so. Severity: performance only."""
    c = await proxy(await origin(_origin()))
    listener = c.server.runner.server
    before = set(listener.connections)
    raw = await Raw.open(c)
    try:
        assert await until(lambda: len(listener.connections) > len(before))
        (conn,) = set(listener.connections) - before
        assert type(conn) is ClientConnection
        assert not hasattr(conn, "__dict__")
        await raw.send(b"GET /a HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % c.port)
        assert (await raw.reply()).status == 200
    finally:
        raw.close()


async def test_a_bodiless_request_with_an_empty_transfer_encoding_is_refused_after_usual_ones(
        proxy: Any, origin: Any) -> None:
    """What this pins: the usual read (one whole HTTP/1.1 request without a body ending the
    read, nothing queued before it) now skips the general bookkeeping in one branch; a
    request llhttp hands over without a body but with an empty Transfer-Encoding (beside
    Content-Length: 0) must still leave it, for _read_last's 400 (RFC 9112 §6.3: chunked
    is not its final coding, the length is unknown), and the connection closes after it,
    on a connection whose earlier requests took the usual branch. Severity: would be
    high (a framing the proxy cannot vouch for passed on), none found."""
    c = await proxy(await origin(_origin()))
    raw = await Raw.open(c)
    try:
        head = b"GET /%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        for name in (b"a", b"b"):
            await raw.send(head % (name, c.port) + b"\r\n")
            assert (await raw.reply()).status == 200
        await raw.send(head % (b"c", c.port)
                       + b"Transfer-Encoding: \r\nContent-Length: 0\r\n\r\n")
        assert (await raw.reply()).status == 400
        assert await raw.closed_within(5)
    finally:
        raw.close()


async def test_an_empty_transfer_encoding_fed_again_after_an_h2c_request_is_refused(
        proxy: Any, origin: Any) -> None:
    """What was wrong: the parser's wrapper feeds again the bytes llhttp dropped after an
    h2c upgrade request (_feed_again), and when those were one usual request it said
    `settled` for the whole read, which then held three requests; the connection read
    `settled` as "one usual request" and checked the first alone, skipping _read_last for
    the others: a bodiless request with an empty Transfer-Encoding beside Content-Length: 0
    (RFC 9112 §6.3: chunked not its final coding, its length unknown) was answered and
    passed on instead of refused with a 400, and the connection went on. With the usual
    read's own branch, the requests after the first went unanswered (the client waited).
    Now a read that gives more than one request is never `settled`. Severity: medium (a
    framing the proxy cannot vouch for, behind an h2c request in one read)."""
    c = await proxy(await origin(_origin()))
    raw = await Raw.open(c)
    host = b"Host: 127.0.0.1:%d\r\n" % c.port
    try:
        await raw.send(b"GET /a HTTP/1.1\r\n" + host + b"\r\n"
                       + b"GET /b HTTP/1.1\r\n" + host + _H2C + b"\r\n"
                       + b"GET /c HTTP/1.1\r\n" + host
                       + b"Transfer-Encoding: \r\nContent-Length: 0\r\n\r\n")
        assert [(await raw.reply()).status for _ in range(3)] == [200, 200, 400]
        assert await raw.closed_within(5)
    finally:
        raw.close()
