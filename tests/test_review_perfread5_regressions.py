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
