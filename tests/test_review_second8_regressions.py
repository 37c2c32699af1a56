"""A second reader of the day's merges (review-referer, -logs, -unsafe, -varyref, -bounds,
-abort, -cli and the lead's collapse-per-variant and pid-file lock), looking for what two
merged changes do together: a collapsed leader whose client leaves while it waits for an
upstream connection (review-abort) against the waiters' stale-if-error (RFC 5861 §4);
the per-variant collapse slot against hit-for-pass marks, Vary: Referer and Redis'
Selectable; the memo bounds against the stored-entry accounting; the signals held at
start; the pid file's lock.

Each test failed on the code it was written against (commit c92c24e), unless its docstring
says it guards what was found right. Real servers on 127.0.0.1 (aiohttp origins, the
real proxy through tests/conftest.py's fixtures)."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from aiohttp import web
from support import cache_status, read_json_log, until


async def _send(port: int, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


def _reset(writer: asyncio.StreamWriter) -> None:
    """The client goes with a reset (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def test_a_leader_whose_client_left_before_it_had_a_connection_is_no_error_for_its_waiters(
        origin: Any, proxy: Any) -> None:
    """A stored response, stale, with stale-if-error; every upstream connection in use
    (proxy.max_connections). A request for it (the collapse leader, validating) waits for
    a connection, a second waits behind it, and the leader's client leaves. Since
    review-abort (8541d3b) such a leader is given up before it is sent, and its waiters
    were told "the leader failed": the waiter was answered the stale copy under
    stale-if-error (Cache-Status fwd=stale, detail=stale-if-error) though the origin
    never failed nor was even asked; before, the leader went on and the waiter got the
    new response. RFC 5861 §4 allows the stale copy "when an error is encountered"; a
    client leaving is none (nginx's proxy_cache_lock waiters go on to the origin when the
    lock holder's client leaves). Now the waiter goes upstream itself (one waiter tries
    again, as behind a leader that got no answer) and is answered the origin's new
    response. Severity: medium (stale content served, counted as an origin error, under
    load: exactly when connections are all in use)."""
    hold, held = asyncio.Event(), asyncio.Event()
    version = {"n": 0}

    async def slow(request: web.Request) -> web.Response:
        held.set()
        await hold.wait()
        return web.Response(text="slow", headers={"Cache-Control": "no-store"})

    async def page(request: web.Request) -> web.Response:
        version["n"] += 1
        # Stale on arrival (Age past max-age), usable on error for 600 s more
        return web.Response(text=f"v{version['n']}", headers={
            "Cache-Control": "max-age=60, stale-if-error=600", "Age": "120"})

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/page", page)
    server = await origin(app)
    client = await proxy(server, proxy={"max_connections": 1})
    first = await client.get("/page")
    assert await first.text() == "v1"
    _, holder = await _send(client.port, "/slow")  # the one connection, held
    await asyncio.wait_for(held.wait(), 5)
    _, leader = await _send(client.port, "/page")  # validates: waits for a connection
    collapser = client.app_proxy.driver.collapser
    slot = (str(client.make_url("/page")), None)
    assert await until(lambda: slot in collapser._inflight)
    led = collapser._inflight[slot]
    waiter = asyncio.ensure_future(client.get("/page"))
    assert await until(lambda: bool(led._callbacks))
    _reset(leader)  # the leader's client leaves: nothing is sent for it
    assert await until(led.done)  # its waiter is told
    hold.set()  # (then the connection is free for whoever goes upstream)
    resp = await asyncio.wait_for(waiter, 5)
    body = await resp.text()
    holder.close()
    # The origin's new response (v2, or v3 before: the departed leader's request took v2)
    assert body != "v1", cache_status(resp)
    assert "fwd-status=200" in cache_status(resp)


async def test_waiters_of_a_leader_whose_client_left_after_sending_get_its_stored_answer(
        origin: Any, proxy: Any, tmp_path: Any) -> None:
    """Guards what was found right: the other half of the test above. A collapse leader
    that was sent upstream, then lost its client (a reset), is logged 499 at once since
    review-abort (2b0a291), and its fetch goes on for the next client (nginx with
    proxy_cache, Varnish): its waiter is answered the stored answer of that one upstream
    request, collapsed, not sent upstream again nor answered from storage on error."""
    answer, asked = asyncio.Event(), asyncio.Event()
    calls = {"n": 0}

    async def page(request: web.Request) -> web.Response:
        calls["n"] += 1
        asked.set()
        await answer.wait()
        return web.Response(text=f"v{calls['n']}", headers={
            "Cache-Control": "max-age=600, stale-if-error=600"})

    app = web.Application()
    app.router.add_get("/page", page)
    client = await proxy(await origin(app), log={"path": str(tmp_path / "r.log")})
    collapser = client.app_proxy.driver.collapser
    slot = (str(client.make_url("/page")), None)
    _, leader = await _send(client.port, "/page")
    await asyncio.wait_for(asked.wait(), 5)  # sent upstream
    led = collapser._inflight[slot]
    waiter = asyncio.ensure_future(client.get("/page"))
    assert await until(lambda: bool(led._callbacks))
    _reset(leader)
    for _ in range(300):  # its line (499) is written when its client leaves
        if [line["status"] for line in await read_json_log(client)] == [499]:
            break
        await asyncio.sleep(0.01)
    assert [line["status"] for line in await read_json_log(client)] == [499]
    answer.set()
    resp = await asyncio.wait_for(waiter, 5)
    assert (await resp.text(), calls["n"]) == ("v1", 1)
    assert "collapsed" in cache_status(resp) and "stale" not in cache_status(resp)
