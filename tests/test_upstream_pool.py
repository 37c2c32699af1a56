"""The upstream connection pool against origins that misbehave the way real ones do
(issue 10): idle keep-alive connections closed by the origin, bytes past a message, field
names with whitespace before the colon, all connections busy; and the WARNING line each
failure leaves. Origins are raw sockets on 127.0.0.1 scripted per connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from support import cache_status

# A connection's script: (request head, index of the request on its connection) -> bytes
# to send, or None to close the connection without answering.
Script = Callable[[bytes, int], Awaitable[bytes | list[bytes] | None]]

OK = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nhi"


class RawOrigin:
    """Counts connections and requests; each connection follows the script."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests = 0
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            index = 0
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                length = _content_length(head)
                if length:
                    await reader.readexactly(length)
                answer = await self.script(head, index)
                index += 1
                if answer is None:
                    break
                # A list: pieces written 0.05 s apart (reads the proxy gets apart).
                for i, piece in enumerate([answer] if isinstance(answer, bytes) else answer):
                    if i:
                        await asyncio.sleep(0.05)
                    writer.write(piece)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@contextlib.asynccontextmanager
async def raw_origin(script: Script) -> AsyncIterator[RawOrigin]:
    origin = RawOrigin(script)
    server = await asyncio.start_server(origin.serve, "127.0.0.1", 0)
    origin.port = server.sockets[0].getsockname()[1]
    try:
        yield origin
    finally:
        server.close()


def url(origin: RawOrigin) -> str:
    return f"http://127.0.0.1:{origin.port}"


def warnings_of(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "cacheproxy"]


# -- an origin that closes idle keep-alive connections ---------------------------------------

async def test_an_origin_closing_idle_connections_at_its_timeout_gives_no_error(proxy):
    """Node closes an idle keep-alive connection after 5 s. Here the origin closes after
    0.3 s while the pool keeps connections for 10 s: requests at gaps around the origin's
    timeout find a connection closed or being closed, and none may end in an error."""
    async def script(head: bytes, index: int) -> bytes | None:
        return OK

    async def idle_closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           origin: RawOrigin) -> None:
        origin.connections += 1
        try:
            while True:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.3)
                origin.requests += 1
                writer.write(OK)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    origin = RawOrigin(script)
    server = await asyncio.start_server(lambda r, w: idle_closing(r, w, origin), "127.0.0.1", 0)
    origin.port = server.sockets[0].getsockname()[1]
    try:
        c = await proxy(url(origin), proxy={"upstream_keepalive_timeout": 10.0})
        statuses = []
        for gap in (0.29, 0.3, 0.31, 0.28, 0.3, 0.32, 0.3, 0.295, 0.305, 0.3):
            statuses.append((await c.get("/p")).status)
            await asyncio.sleep(gap)
        statuses.append((await c.get("/p")).status)
        assert statuses == [200] * 11
        assert origin.connections > 1  # idle connections were really closed under it
    finally:
        server.close()


async def test_a_get_sent_as_the_origin_closes_is_sent_again_on_a_new_connection(
        proxy, caplog, forward_switch):
    """The race the idle timeout cannot rule out: the origin closes a pooled connection
    just as a request goes out on it (nothing of an answer comes). A GET is idempotent:
    the pool sends it once more, on a fresh connection (nginx's proxy_next_upstream)."""
    async def script(head: bytes, index: int) -> bytes | None:
        return OK if index == 0 else None  # a second request on a connection: closed

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        for _ in range(4):
            resp = await c.get("/p")
            assert resp.status == 200 and await resp.read() == b"hi"
        assert origin.connections == 4 and origin.requests == 7
        assert warnings_of(caplog) == []
        # The three on a reused connection were sent by callback (proxy/quick_forward.py),
        # and handed to the driver for their one retry.
        assert forward_switch.state["sent"] == 3


async def test_a_small_put_is_sent_again_but_a_post_is_not(proxy, caplog):
    """PUT is idempotent and its body small enough to keep, so it is sent again; a POST
    may have reached the origin and is not repeated: 502, one WARNING naming it."""
    async def script(head: bytes, index: int) -> bytes | None:
        return OK if index == 0 else None

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        assert (await c.put("/p", data=b"x" * 1000)).status == 200
        put = await c.put("/p", data=b"x" * 1000)
        assert put.status == 200 and await put.read() == b"hi"
        post = await c.post("/p", data=b"form=1")
        assert post.status == 502
        assert "closed before answering" in await post.text()
        [line] = warnings_of(caplog)
        assert f"upstream {url(origin)} failed for POST /p: closed before answering" in line


# -- framing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("late", [False, True], ids=["same-packet", "while-idle"])
async def test_bytes_past_the_message_close_the_connection(proxy, late):
    """An answer that sends more than its Content-Length: the extra bytes must never be
    read as the next answer's status line ("Bad status line" 502s, or worse, a smuggled
    answer): the connection is closed, the next request gets a new one."""
    async def script(head: bytes, index: int) -> bytes | None:  # same-packet: one write
        return OK + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"

    async def late_extra(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         origin: RawOrigin) -> None:
        origin.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                origin.requests += 1
                writer.write(OK)
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    origin = RawOrigin(script)
    handler = (lambda r, w: late_extra(r, w, origin)) if late else origin.serve
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    origin.port = server.sockets[0].getsockname()[1]
    try:
        c = await proxy(url(origin))
        for _ in range(3):
            resp = await c.get("/p")
            assert resp.status == 200 and await resp.read() == b"hi"
            await asyncio.sleep(0.1)
        assert origin.connections == 3  # none was reused after its extra bytes
    finally:
        server.close()


@pytest.mark.parametrize("field", [b"Transfer-Encoding : chunked", b"Content-Length :5",
                                   b"X-Other\t: 1"])
async def test_whitespace_before_the_colon_is_refused_never_replayed(proxy, caplog, field):
    """RFC 9112 §5.1: "No whitespace is allowed between the field name and colon"; a proxy
    MUST remove it or reject the message. Refused (502), not stored, not replayed."""
    async def script(head: bytes, index: int) -> bytes | None:
        body = b"5\r\nhello\r\n0\r\n\r\n" if b"chunked" in field else b"hello"
        extra = b"" if b"Length" in field else b"Content-Length: 5\r\n" \
            if b"chunked" not in field else b""
        return (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n" + field + b"\r\n"
                + extra + b"\r\n" + body)

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        for _ in range(2):
            resp = await c.get("/ws")
            assert resp.status == 502, await resp.text()
            assert "hello" not in await resp.text()
        assert origin.requests == 2  # nothing was stored
        assert all("bad framing" in line for line in warnings_of(caplog))
        assert len(warnings_of(caplog)) == 2


# -- every connection busy ---------------------------------------------------------------------

async def test_a_new_miss_is_answered_within_connect_timeout_when_every_connection_is_held(
        proxy, origin, caplog):
    """Clients that never read a large answer hold their upstream connections (reading
    from the origin pauses while the client does not take what was read). A new miss must
    not wait for ever: 503 within proxy.connect_timeout, and the pool recovers once the
    slow clients go."""
    from aiohttp import web

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Cache-Control": "no-store"})
        await resp.prepare(request)
        chunk = b"x" * 65536
        for _ in range(512):  # 32 MiB: more than loopback socket buffers hold
            await resp.write(chunk)
        return resp

    async def small(request: web.Request) -> web.Response:
        return web.Response(text="small", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/small", small)
    up = await origin(app)
    c = await proxy(up, proxy={"max_connections": 2, "connect_timeout": 0.5})
    port = c.server.port
    stalled = []
    for _ in range(2):  # they ask and never read
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        stalled.append((reader, writer))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    resp = await c.get("/small")
    waited = time.monotonic() - started
    assert resp.status == 503 and waited < 2.0, (resp.status, waited)
    assert "no upstream connection free" in await resp.text()
    assert any("no upstream connection free" in line for line in warnings_of(caplog))
    for _, writer in stalled:
        writer.transport.abort()
    await asyncio.sleep(0.3)
    assert await (await c.get("/small")).text() == "small"


# -- one WARNING line per cause ----------------------------------------------------------------

async def test_each_failure_cause_is_one_warning_line(proxy, caplog):
    """Every 502/504 the proxy makes logs one WARNING naming the upstream, method, path and
    cause: refused, reset, timeout."""
    async def reset(head: bytes, index: int) -> bytes | None:
        return None  # closes at once

    async def slow(head: bytes, index: int) -> bytes | None:
        await asyncio.sleep(1.0)
        return OK

    async with raw_origin(reset) as resetting, raw_origin(slow) as slow_origin:
        # A port nothing listens on: bind one, then free it.
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        dead = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        cases = [
            (f"http://127.0.0.1:{dead}", {}, 502, "connection refused"),
            (url(resetting), {}, 502, "closed before answering"),
            (url(slow_origin), {"read_timeout": 0.2}, 504, "timeout waiting for the answer"),
        ]
        for upstream, settings, status, cause in cases:
            caplog.clear()
            c = await proxy(upstream, proxy=settings)
            resp = await c.get("/why?x=1")
            assert resp.status == status and "fwd=uri-miss" in cache_status(resp)
            [line] = warnings_of(caplog)
            assert line == (f"upstream {upstream} failed for GET /why?x=1: {cause}; "
                            f"answered {status}")


async def test_bytes_past_a_cacheable_message_are_not_stored(proxy):
    """What is stored is the message as framed: two bytes, not the smuggled rest."""
    async def script(head: bytes, index: int) -> bytes | None:
        return (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\n"
                b"hiHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        first = await c.get("/c")
        assert await first.read() == b"hi"
        again = await c.get("/c")
        assert again.headers["X-Cache"] == "HIT" and await again.read() == b"hi"


# -- RFC 9112 §6.3: a Transfer-Encoding that does not end in chunked runs to the close --------

@pytest.mark.parametrize("coding", ["gzip", "chunked, gzip", "gzip, chunked", "x-gzip",
                                    "deflate, chunked", "chunked, chunked"])
async def test_a_coding_the_proxy_cannot_take_off_is_a_502_and_not_stored(proxy, coding):
    """RFC 9112 §7: a recipient that takes a transfer coding off decodes it. The proxy
    decodes chunked alone: a gzip (or deflate, br...) transfer coding would reach the
    client, and the store, as content with its coding lost; chunked twice is invalid
    (§7.1). 502, as nginx answers "unknown Transfer-Encoding"; the next request asks
    again."""
    import gzip as gz

    served = 0
    coded = gz.compress(b"the whole body")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        served += 1
        body = coded if "chunked" not in coding.rsplit(",", 1)[-1] \
            else b"%x\r\n%s\r\n0\r\n\r\n" % (len(coded), coded)
        writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\n"
                     b"Transfer-Encoding: " + coding.encode() + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        c = await proxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        for _ in range(2):
            resp = await c.get("/r")
            assert resp.status == 502 and coded not in await resp.read()
        assert served == 2  # nothing stored
    finally:
        server.close()


@pytest.mark.parametrize("coding", ["TRANSFER-ENCODING-STORE-VALUE", "x-unknown, y-unknown"])
async def test_a_body_whose_coding_is_not_chunked_runs_to_the_close__headers_store_transfer_encoding(  # noqa: E501
    proxy, coding
):
    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\n"
                     b"Transfer-Encoding: " + coding.encode() + b"\r\n\r\nthe whole body")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        c = await proxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        first = await c.get("/r")
        assert first.status == 200 and await first.read() == b"the whole body"
        hit = await c.get("/r")  # stored whole, without the hop-by-hop field (RFC 9111 §3.1)
        assert hit.headers["X-Cache"] == "HIT" and await hit.read() == b"the whole body"
        assert coding not in hit.headers.getall("Transfer-Encoding", [])
        assert served == 1
    finally:
        server.close()


async def test_an_idle_connection_closes_at_upstream_keepalive_timeout_and_not_while_used(
        proxy):
    """proxy.upstream_keepalive_timeout counts from a connection's last use: one used every
    0.15 s stays open past the timeout (0.4 s), and closes once idle for that long."""
    async def script(head: bytes, index: int) -> bytes | None:
        return OK

    origin = RawOrigin(script)
    closed: list[float] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await origin.serve(reader, writer)  # until the proxy closes the connection
        closed.append(time.monotonic())

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    origin.port = server.sockets[0].getsockname()[1]
    try:
        c = await proxy(url(origin), proxy={"upstream_keepalive_timeout": 0.4})
        began = time.monotonic()
        while time.monotonic() - began < 1.0:  # past two timeouts, never idle that long
            resp = await c.get("/p")
            assert resp.status == 200 and await resp.read() == b"hi"
            last = time.monotonic()
            await asyncio.sleep(0.15)
        assert origin.connections == 1 and closed == []
        await asyncio.sleep(0.8)
        assert len(closed) == 1 and 0.3 < closed[0] - last < 0.7
    finally:
        server.close()
