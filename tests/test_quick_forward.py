"""Misses sent by callback (proxy/quick_forward.py) say exactly what the full path says,
and hand on to it where they should: answers that are not passed on as they are, bodies
that do not arrive whole, failures before the head (with the one retry), timeouts, a
client that leaves, pipelined requests behind one under way."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import web
from support import read_json_log
from test_client_plane import Raw
from test_quick_hits import exchange, request
from test_upstream_pool import OK, raw_origin, url, warnings_of

from cacheproxy.proxy.client_conn import ClientConnection

BIG = b"x" * (3 * 1024 * 1024)  # more than one read: handed to the driver's relay


def origin_app() -> web.Application:
    async def answer(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        cc = {"pass": "no-store", "private": "private, max-age=60", "nocache": "no-cache",
              "fresh": "max-age=600", "big": "no-store"}.get(name, "no-store")
        headers = {"Cache-Control": cc, "ETag": '"v1"', "X-Seen-Via": request.headers.get(
            "Via", "-"), "Connection": "X-Hop", "X-Hop": "dropped"}
        if request.headers.get("If-None-Match") == '"v1"' and name == "nocache":
            return web.Response(status=304, headers=headers)
        if name == "chunked":  # no Content-Length: chunked to HTTP/1.1, to the close to 1.0
            resp = web.StreamResponse(headers=headers)
            await resp.prepare(request)
            await resp.write(b"part one, ")
            await resp.write(b"part two")
            await resp.write_eof()
            return resp
        if name == "gone":
            return web.Response(status=404, text="no such thing", headers=headers)
        body = BIG if name == "big" else f"{name} {request.headers.get('Cookie', '')}".encode()
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{name}", answer)
    return app


SHAPES = ((), ("Cookie: a=1",), ("Connection: close",), ("Referer: http://e/?token=s",),
          ("Origin: http://elsewhere.example",))


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_every_miss_gets_the_full_paths_answer(proxy: Any, origin: Any,
                                                     forward_switch: Any, version: str) -> None:
    client = await proxy(await origin(origin_app()))
    await exchange(client, request("/warm", ()))  # an idle connection to send on
    for name in ("pass", "private", "nocache", "chunked", "gone"):
        for fields in SHAPES:
            for method in ("GET", "HEAD"):
                sent = request(f"/{name}", fields, method, version)
                await exchange(client, sent)  # what it stores, first
                # An idle connection to send on, whatever the last exchange left.
                await exchange(client, request("/warm", ()))
                forward_switch(True)
                before = forward_switch.state["sent"]
                quick = await exchange(client, sent)
                assert forward_switch.state["sent"] == before + 1, (name, fields, method)
                forward_switch(False)
                full = await exchange(client, sent)
                assert quick == full, (name, fields, method, version)
    # The hop-by-hop field the origin named is gone either way; Via says who relayed.
    assert b"X-Hop" not in quick and b"Via: 1.1 cacheproxy" in quick


async def test_a_chunked_answer_is_chunked_to_a_1_1_client_and_closes_a_1_0_one(
        proxy: Any, origin: Any, forward_switch: Any) -> None:
    client = await proxy(await origin(origin_app()))
    for path in ("/chunked", "/pass"):  # known not to be stored: no request waits for one
        await exchange(client, request(path, ()))
    conn = await Raw.open(client)
    await conn.send(request("/chunked", ()) + request("/pass", ()))
    first, second = await conn.reply(), await conn.reply()
    assert first.headers["transfer-encoding"] == "chunked"
    assert first.body == b"part one, part two" and second.body == b"pass "
    conn.close()
    conn = await Raw.open(client)
    await conn.send(request("/chunked", (), version="1.0"))
    reply = await conn.reply()
    assert reply.headers["connection"] == "close" and reply.body == b"part one, part two"
    assert await conn.closed_within(2)
    assert forward_switch.state["sent"] >= 2  # each /chunked (the /pass may find none idle)


async def test_log_lines_are_the_full_paths(proxy: Any, origin: Any, forward_switch: Any,
                                            tmp_path: Any) -> None:
    client = await proxy(await origin(origin_app()), log={"path": str(tmp_path / "log")})
    await exchange(client, request("/pass", ()))  # known not to be stored
    for fields in SHAPES[:4]:
        for on in (True, False):
            forward_switch(on)
            await exchange(client, request("/pass", fields))
    lines = [{k: v for k, v in line.items() if k not in ("time", "total_ms", "upstream_ms")}
             for line in await read_json_log(client)][1:]
    assert len(lines) == 8
    for i in range(0, 8, 2):
        assert lines[i] == lines[i + 1]
        assert lines[i]["cache"] == "MISS" and lines[i]["upstream_status"] == 200
    assert lines[3]["path"] == "/pass"  # the Referer's secret is not the path's
    assert forward_switch.state["sent"] == 4


async def test_a_big_body_is_handed_to_the_driver(proxy: Any, origin: Any,
                                                   forward_switch: Any) -> None:
    client = await proxy(await origin(origin_app()))
    await exchange(client, request("/big", ()))  # (the same key as below: Host "example")
    conn = await Raw.open(client)
    await conn.send(request("/big", ()) + request("/pass", ()))
    assert (await conn.reply()).body == BIG  # streamed by Exchange.relay, in a task
    assert (await conn.reply()).body == b"pass "
    conn.close()
    assert forward_switch.state["sent"] >= 1


async def test_a_revalidation_is_answered_where_its_304_is_read(
        proxy: Any, origin: Any, forward_switch: Any, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    client = await proxy(await origin(origin_app()))
    store = client.app_proxy.store
    await exchange(client, request("/nocache", ()))  # stored
    [before] = store.peek("http://example/nocache")
    handed: list[Any] = []
    real = ClientConnection.hand_off
    monkeypatch.setattr(ClientConnection, "hand_off",
                        lambda self, step: (handed.append(step), real(self, step)))
    for _ in range(3):  # each a 304 upstream: the stored body, revalidated
        reply = await exchange(client, request("/nocache", ()))
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"nocache ")
        assert b"fwd=stale; fwd-status=304; stored" in reply  # Update: put again
    [after] = store.peek("http://example/nocache")
    # (the stored response itself when each 304 repeated its Date: stored.refreshed)
    assert after.born >= before.born and after.body == before.body
    assert forward_switch.state["sent"] == 3 and handed == []


async def test_pipelined_misses_and_hits_keep_their_order(proxy: Any, origin: Any,
                                                          forward_switch: Any) -> None:
    client = await proxy(await origin(origin_app()))
    await exchange(client, request("/fresh", ()))
    conn = await Raw.open(client)
    order = ["/pass", "/fresh", "/pass", "/gone", "/fresh", "/big", "/pass", "/chunked"] * 3
    await conn.send(b"".join(request(path, ()) for path in order))
    for path in order:
        reply = await conn.reply()
        expected = BIG if path == "/big" else b"part one, part two" if path == "/chunked" \
            else b"no such thing" if path == "/gone" else f"{path[1:]} ".encode()
        assert reply.body == expected, path
    conn.close()
    assert forward_switch.state["sent"] >= 1


def slow_after_first(seconds: float) -> Any:
    """An origin script: /slow answers at once the first time (the proxy learns that it
    is not stored, so no request waits behind another: hit-for-pass), then after
    seconds."""
    seen: list[bytes] = []

    async def script(head: bytes, index: int) -> bytes | None:
        if b"/slow" in head:
            seen.append(head)
            if len(seen) > 1:
                await asyncio.sleep(seconds)
        return OK

    return script


async def test_a_timeout_before_the_head_is_a_504_with_its_warning(
        proxy: Any, caplog: Any, forward_switch: Any) -> None:
    async with raw_origin(slow_after_first(1.0)) as origin:
        c = await proxy(url(origin), proxy={"read_timeout": 0.2})
        assert (await c.get("/slow?x=1")).status == 200  # and an idle connection
        forward_switch.state["sent"] = 0
        caplog.clear()
        resp = await c.get("/slow?x=1")
        assert resp.status == 504
        assert warnings_of(caplog) == [
            f"upstream {url(origin)} failed for GET /slow?x=1: timeout waiting for the "
            "answer; answered 504"]
        assert forward_switch.state["sent"] == 1
        resp = await c.get("/fast")  # the timed-out connection is not reused
        assert resp.status == 200 and await resp.read() == b"hi"


async def _slow_request_under_way(c: Any, forward_switch: Any, quick: bool) -> Raw:
    """/slow (its first answer primed) asked again on a new client connection, sent by
    callback (quick) or by the full path, and under way: its answer not in yet."""
    assert (await c.get("/slow")).status == 200
    forward_switch.state["sent"] = 0
    forward_switch(quick)
    conn = await Raw.open(c)
    await conn.send(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % c.port)
    await asyncio.sleep(0.1)
    assert forward_switch.state["sent"] == int(quick)
    return conn


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
async def test_a_client_that_leaves_before_its_answer_is_logged_as_on_the_full_path(
        proxy: Any, forward_switch: Any, caplog: Any, tmp_path: Any, quick: bool) -> None:
    """The request is carried out as the full path's task carries it out (its answer
    dropped, not pooled), and logged the same: 499, as nginx logs a client that closed
    before its answer (not the 200 it never got), when it left (so without the origin's
    status, which came later: test_review_abort_regressions); nothing is logged as an
    error."""
    async with raw_origin(slow_after_first(0.3)) as origin:
        c = await proxy(url(origin), log={"path": str(tmp_path / "log")})
        conn = await _slow_request_under_way(c, forward_switch, quick)
        conn.close()
        await asyncio.sleep(0.5)  # its answer came meanwhile
        forward_switch(True)
        for _ in range(3):  # the proxy serves on
            resp = await c.get("/fast")
            assert resp.status == 200 and await resp.read() == b"hi"
        lines = [(line["path"], line["status"], line["cache"], line["upstream_status"])
                 for line in await read_json_log(c)]
        assert lines[:2] == [("/slow", 200, "MISS", 200), ("/slow", 499, "MISS", None)]
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
        # The abandoned answer's connection was closed, not pooled: a new one was opened.
        assert origin.connections == 2


async def test_a_whole_answer_over_the_read_high_water_leaves_its_connection_reading(
        proxy: Any, forward_switch: Any, caplog: Any) -> None:
    """100 KiB in one read pauses reading the origin (pool._HIGH_WATER, 64 KiB); taking
    the body whole resumes it, or the next exchange on the pooled connection would wait
    for an answer it never reads (a 504 at read_timeout)."""
    body = b"y" * (100 * 1024)

    async def script(head: bytes, index: int) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: %d\r\n\r\n%b" \
            % (len(body), body)

    async with raw_origin(script) as origin:
        c = await proxy(url(origin), proxy={"read_timeout": 1.0})
        for _ in range(5):
            resp = await c.get("/big")
            assert resp.status == 200 and await resp.read() == body
        assert forward_switch.state["sent"] >= 3 and origin.connections == 1
        assert warnings_of(caplog) == []


async def test_a_graceful_stop_waits_for_a_quick_forward(proxy: Any, forward_switch: Any
                                                         ) -> None:
    async with raw_origin(slow_after_first(0.3)) as origin:
        c = await proxy(url(origin))
        assert (await c.get("/slow")).status == 200
        forward_switch.state["sent"] = 0
        conn = await Raw.open(c)
        await conn.send(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % c.port)
        await asyncio.sleep(0.05)
        assert forward_switch.state["sent"] == 1
        listener = c.server.runner.server
        stop = asyncio.ensure_future(listener.shutdown(5))
        reply = await conn.reply()
        assert reply.status == 200 and reply.body == b"hi"
        await stop
        conn.close()



async def test_a_graceful_stop_waits_for_a_quick_forward_handed_to_a_task(
        proxy: Any, forward_switch: Any) -> None:
    """The head comes, the body only later: the task that relays it is waited for."""
    seen: list[bytes] = []

    async def script(head: bytes, index: int) -> bytes | None:
        seen.append(head)
        if len(seen) == 1:
            return OK
        await asyncio.sleep(0.2)
        return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 4\r\n\r\nhi"

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        assert (await c.get("/p")).status == 200
        conn = await Raw.open(c)
        await conn.send(b"GET /p HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % c.port)
        await asyncio.sleep(0.1)  # sent by callback; nothing of the answer yet
        assert forward_switch.state["sent"] == 1
        listener = c.server.runner.server
        stop = asyncio.ensure_future(listener.shutdown(0.6))
        await asyncio.sleep(0.35)  # the head and "hi" came: handed off, waiting for the rest
        assert not stop.done()  # still waiting, now for the task relaying the body
        await stop  # at its timeout: the answer never ended, the connection is closed
        data = await asyncio.wait_for(conn.reader.read(), 2)  # all of it, to the close
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\nhi")


async def _stop_behind_a_quick_forward(c: Any, forward_switch: Any, first_body: bytes
                                       ) -> None:
    """GET /slow (sent by callback) with GET /fast pipelined behind it, then a graceful
    stop: both are answered, the second with Connection: close."""
    assert (await c.get("/slow")).status == 200  # (known not to be stored)
    forward_switch.state["sent"] = 0
    conn = await Raw.open(c)
    head = b"GET /%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
    await conn.send(head % (b"slow", c.port) + head % (b"fast", c.port))
    await asyncio.sleep(0.1)
    assert forward_switch.state["sent"] == 1
    listener = c.server.runner.server
    listener.pre_shutdown()
    stop = asyncio.ensure_future(listener.shutdown(5))
    first, second = await conn.reply(), await conn.reply()
    assert first.body == first_body and second.body == b"hi"
    assert second.headers.get("connection") == "close"
    await stop
    conn.close()


async def test_a_graceful_stop_answers_what_was_pipelined_behind_a_quick_forward(
        proxy: Any, forward_switch: Any) -> None:
    """As the full path's task would: the next request too, with Connection: close."""
    async with raw_origin(slow_after_first(0.3)) as origin:
        await _stop_behind_a_quick_forward(await proxy(url(origin)), forward_switch, b"hi")


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
async def test_a_request_still_under_way_when_a_stop_runs_out_of_time_is_not_sent_again(
        proxy: Any, forward_switch: Any, quick: bool) -> None:
    """Past shutdown_timeout the request is dropped, as the full path's task is
    cancelled: closing the pool then does not make it retry on a new connection."""
    async with raw_origin(slow_after_first(3.0)) as origin:
        c = await proxy(url(origin))
        conn = await _slow_request_under_way(c, forward_switch, quick)
        listener = c.server.runner.server
        listener.pre_shutdown()
        await listener.shutdown(0.2)  # runs out: the answer is 3 s away
        pool = c.app_proxy.exchange.pool
        pool.close()  # what the application's cleanup does next
        await asyncio.sleep(0.3)
        assert (origin.connections, origin.requests) == (1, 2)
        assert not pool._open
        conn.close()


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
async def test_a_request_a_stop_ran_out_of_time_for_gets_a_503_and_its_log_line(
        proxy: Any, forward_switch: Any, tmp_path: Any, quick: bool) -> None:
    """README: one line per request. Past shutdown_timeout the cancelled task (or the
    dropped quick forward) wrote none, and its client saw a bare close: nothing in the
    log said a request was cut off by the stop."""
    async with raw_origin(slow_after_first(3.0)) as origin:
        c = await proxy(url(origin), log={"path": str(tmp_path / "log")})
        conn = await _slow_request_under_way(c, forward_switch, quick)
        listener = c.server.runner.server
        listener.pre_shutdown()
        await listener.shutdown(0.2)  # runs out: the answer is 3 s away
        reply = await conn.reply()
        assert reply.status == 503 and reply.headers.get("connection") == "close"
        lines = [(line["path"], line["status"], line["cache"])
                 for line in await read_json_log(c)]
        assert lines == [("/slow", 200, "MISS"), ("/slow", 503, "ERROR")]
        conn.close()


async def test_a_graceful_stop_answers_what_was_pipelined_behind_a_handed_off_forward(
        proxy: Any, forward_switch: Any) -> None:
    """The same when the quick forward was handed to a task (its body came later)."""
    slow_seen = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal slow_seen
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if b"/slow" in head:
                    slow_seen += 1
                    if slow_seen > 1:  # the head now, the body 0.3 s later
                        writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
                                     b"Content-Length: 4\r\n\r\n")
                        await writer.drain()
                        await asyncio.sleep(0.3)
                        writer.write(b"slow")
                        continue
                writer.write(OK)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # (By the time the stop begins the head came, the body not: handed to a task.)
        await _stop_behind_a_quick_forward(await proxy(f"http://127.0.0.1:{port}"),
                                           forward_switch, b"slow")
    finally:
        server.close()
