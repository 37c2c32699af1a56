"""Review perfread4: a reading of the first round of this session's performance merges
(46932af..73bfa91: perfquick2, perfobs2, perfpool3, perfreval4, perfflow2, perfclient2 and
the lead's two), each of which keeps something across requests instead of making it again.
What was looked for: the input a memo's key or an identity check leaves out, the state that
outlives its request, the path that uses a kept object after it was renewed. These tests
pin what was found wrong."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from aiohttp import web
from support import until
from test_client_plane import Raw

from cacheproxy.proxy.client_conn import ClientConnection


def _origin() -> web.Application:
    """Answers no one may store; /close closes its connection after the answer."""
    async def answer(request: web.Request) -> web.Response:
        resp = web.Response(body=b"x", headers={"Cache-Control": "no-store"})
        if request.match_info["name"] == "close":
            resp.force_close()
        return resp

    app = web.Application()
    app.router.add_route("GET", "/{name}", answer)
    return app


async def _freed_without_collector(c: Any, paths: list[bytes]) -> bool:
    """Whether a client connection that sent paths (each answered) is freed by reference
    counting once its client closes it."""
    listener = c.server.runner.server
    before = set(listener.connections)
    raw = await Raw.open(c)
    assert await until(lambda: len(listener.connections) > len(before))
    (conn,) = set(listener.connections) - before
    assert type(conn) is ClientConnection
    ref = weakref.ref(conn)
    del conn
    head = b"GET /%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
    for path in paths:
        await raw.send(head % (path, c.port))
        assert (await raw.reply()).status == 200
    gc.collect()
    gc.disable()  # (no collection in between: only reference counting frees it)
    try:
        raw.close()
        # (polled: the loop lets the closed transport's protocol go in its own time; with
        # the collector off, only reference counting can free it meanwhile)
        return await until(lambda: ref() is None, timeout=2.0)
    finally:
        gc.enable()


async def test_a_client_connection_that_forwarded_by_callback_needs_no_collector(
        proxy: Any, origin: Any, forward_switch: Any) -> None:
    """What was wrong (811c93d): a client connection keeps the QuickForward it renews for
    its next request (_forwarder), and the QuickForward holds the connection (its client,
    and its Ctx's out): a reference cycle that nothing broke when the connection closed.
    Every client connection that sent a miss by callback was then freed only by the
    cyclic collector, with its parser, buffers, kept heads and last request: garbage for
    each full collection to walk, where the project keeps what the collector walks to a
    few thousand objects (README, "Garbage collection pauses"; tests/test_collector.py
    holds a reload to the same). Here the origin closes its connection after the answer,
    so nothing of the pool holds the client connection: only the cycle could.
    Severity: low (memory and collector work per closed connection, no wrong answer)."""
    c = await proxy(await origin(_origin()))
    for path in ("/close", "/warm"):  # (known not to be stored: sent without collapsing;
        assert (await c.get(path)).status == 200  # and an idle connection to send on)
    forward_switch.state["sent"] = 0
    freed = await _freed_without_collector(c, [b"close"])
    assert forward_switch.state["sent"] == 1  # it was sent by callback
    assert freed


async def test_an_idle_upstream_connection_lets_its_last_client_connection_go(
        proxy: Any, origin: Any, forward_switch: Any) -> None:
    """What was wrong (since interim answers were forwarded, 66f94ce; found reading
    811c93d): send_quick and send keep the client's `interim` callback (where 1xx answers
    go) on the upstream connection, and nothing dropped it when the exchange ended: an
    idle pooled connection held the last client connection it answered for (a bound
    method), with all that one holds, until it carried another request or its keep-alive
    ran out. The callback is the exchange's; an idle connection keeps none.
    Severity: low (memory held per idle upstream connection, no wrong answer)."""
    c = await proxy(await origin(_origin()))
    assert (await c.get("/warm")).status == 200  # (an idle connection to send on)
    forward_switch(False)  # the full path's send(), which keeps the callback too
    freed = await _freed_without_collector(c, [b"one"])
    assert forward_switch.state["sent"] == 0
    idle = [conn for conns in c.app_proxy.exchange.pool._idle.values() for conn in conns]
    assert idle  # the upstream connection it used is pooled again
    assert freed
