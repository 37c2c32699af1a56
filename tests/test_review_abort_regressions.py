"""A reviewer's findings on clients that leave (a FIN, or a reset with SO_LINGER 0) at each
stage of a request: before its head is whole, while the proxy waits for an upstream
connection or the origin's answer head, mid-upload, mid-way through a miss, a
pass-through, a hit, a collapsed wait; and a client that only half-closes. Looked at:
when the proxy notices, what it logs (status, bytes, durations, the WARNING's wording),
what becomes of the upstream connection and the store, the descriptors afterwards.

Each test failed on the code it was written against (commit fc949f1), unless its
docstring says it guards what was found right. Real servers on 127.0.0.1: raw asyncio
origins this module controls, the real proxy (tests/conftest.py's fixtures)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import read_json_log, until

LONG = b"x" * 4096


class HeldOrigin:
    """An origin on 127.0.0.1 whose answers the test releases: each request's head is
    kept (heads), its answer is sent when the test sets `go` (answer(head) gives the
    bytes; None: none, ever), and the time its connection closed is noted (closed). The
    connection is then held open, read until the proxy closes it."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.closed: list[float] = []
        self.go = asyncio.Event()
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                data = self.answer(head)
                if data is None:
                    break
                if b"/late" in head and b"X-Warm" not in head:
                    await self.go.wait()
                writer.write(data)
                await writer.drain()
            while await reader.read(65536):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.append(time.monotonic())
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HeldOrigin]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for writer in self._writers:  # (its handlers end: none is left to cancel)
                writer.close()
            self.go.set()
            await asyncio.sleep(0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _answers(head: bytes) -> bytes | None:
    """/hold: no answer ever; /late-store: a storable answer, once released; /late-pass:
    a no-store answer's head and the first part of its body, the rest never; with
    X-Warm: a small no-store answer at once (an idle pooled connection
    for a quick forward, and the URL marked pass: not collapsed, proxy/quick.py)."""
    if b"X-Warm" in head:
        return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"
    if b"/hold" in head:
        return None
    if b"/late-pass" in head:
        return (b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (2 * len(LONG), LONG))
    if b"/late-store" in head:
        return (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(LONG), LONG))
    raise AssertionError(head)


async def _request(port: int, target: str, *fields: str
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = "".join(f"{field}\r\n" for field in fields)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
    await writer.drain()
    return reader, writer


def _leave(writer: asyncio.StreamWriter, how: str) -> None:
    """The client goes: a close (FIN), or a reset (SO_LINGER 0: RST)."""
    if how == "rst":
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def _lines_when_written(client: Any, count: int, timeout: float) -> list[dict[str, Any]]:
    """The request log once it has count lines (or what it has after timeout s)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = await read_json_log(client)
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.02)


async def _one_held_one_waiting(proxy: Any, origin: Any, tmp_path: Any, **settings: float
                                ) -> tuple[Any, asyncio.StreamWriter, asyncio.StreamWriter]:
    """A proxy with one upstream connection (settings: more of [proxy]), held by a long
    poll nothing may store (/hold-first, given up when its client goes), and a request
    (/hold-left) waiting for it, nothing logged yet: (client, first's writer, left's)."""
    client = await proxy(origin.url, proxy={"max_connections": 1, **settings},
                         log={"path": str(tmp_path / "r.log")})
    _, first = await _request(client.port, "/hold-first", "Cache-Control: no-store")
    assert await until(lambda: len(origin.heads) == 1)
    _, left = await _request(client.port, "/hold-left")  # waits for the connection
    assert await _lines_when_written(client, 0, 0) == []
    return client, first, left


async def _warm(client: Any, forward_switch: Any, quick: bool, *targets: str) -> int:
    """For a quick forward (quick): each target marked pass, and an idle pooled
    connection to send on; else the full path's task. How many requests that took."""
    forward_switch(quick)
    if not quick:
        return 0
    for target in targets:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nX-Warm: 1\r\n"
                     "Connection: close\r\n\r\n".encode())
        assert (await asyncio.wait_for(reader.read(), 5)).endswith(b"ok")
        writer.close()
    return len(targets)


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("quick", [False, True], ids=["full-path", "quick-path"])
async def test_a_client_that_leaves_while_a_storable_miss_waits_for_its_head_is_logged_at_once(
        proxy: Any, forward_switch: Any, caplog: Any, tmp_path: Any, how: str, quick: bool
        ) -> None:
    """A GET that may be stored, sent upstream, its client closing (or resetting) its
    connection while the origin has not answered yet. The proxy goes on waiting for the
    answer, to store it for the next client (nginx with proxy_cache, Varnish), but it
    wrote nothing about the client until that wait ended: with an origin that never
    answers, proxy.read_timeout later (30 s by default), the request was logged 499 with
    total_ms running to the timeout, and a WARNING said "...; answered 504", although
    nobody was answered: the client had gone half a minute before. nginx logs its 499
    when it sees the close. Now the line is written when the client leaves (499, no
    bytes, the time it waited), the fetch goes on, and the WARNING of its failure says
    that its client had left. Severity: medium (request logs and warnings that mislead
    an operator looking into a slow origin: every departed client reads as a 504
    answered at the timeout)."""
    timeout = 3.0
    origin = HeldOrigin(_answers)
    async with origin.running():
        client = await proxy(origin.url, proxy={"read_timeout": timeout},
                             log={"path": str(tmp_path / "r.log")})
        before = await _warm(client, forward_switch, quick, "/hold")
        forward_switch.state["sent"] = 0
        _, writer = await _request(client.port, "/hold")
        assert await until(lambda: len(origin.heads) == 1 + before)
        assert forward_switch.state["sent"] == int(quick)  # (the path the test meant)
        closed = len(origin.closed)
        with caplog.at_level(logging.WARNING, logger="cacheproxy"):
            _leave(writer, how)
            lines = await _lines_when_written(client, before + 1, timeout - 1)
            # Written while the origin is still waited for (the fetch goes on for others)
            assert len(lines) == before + 1, "no line for the client that left"
            assert len(origin.closed) == closed
            line = lines[-1]
            assert (line["path"], line["status"], line["bytes"], line["cache"]) == \
                ("/hold", 499, 0, "MISS")
            assert line["total_ms"] < timeout * 1000
            # ...until the origin's read_timeout: its failure is told truthfully.
            assert await until(lambda: len(origin.closed) == closed + 1, timeout + 3)
            assert await until(lambda: "timeout" in caplog.text)
        warnings = [r.getMessage() for r in caplog.records if "failed for GET /hold" in
                    r.getMessage()]
        assert len(warnings) == 1
        assert "answered 504" not in warnings[0] and "client had left" in warnings[0]
        assert len(await read_json_log(client)) == before + 1  # (one line, not two)
        assert client.app_proxy.exchange.pool.in_use == 0


@pytest.mark.parametrize("quick", [False, True], ids=["full-path", "quick-path"])
async def test_a_head_that_comes_after_its_client_left_is_stored_or_let_go(
        proxy: Any, forward_switch: Any, tmp_path: Any, quick: bool) -> None:
    """What the fetch whose client left (above) does once the head comes: a storable
    answer is read whole and stored (the next request is a hit, nothing sent upstream),
    one that may not be stored has its upstream connection closed at once (its body is
    for nobody: nginx's "client prematurely closed connection, so upstream connection
    is closed too"), never pooled with unread bytes. It failed before only on when the
    lines were written (when the heads came); the rest guards what was right, which the
    early lines must not change."""
    origin = HeldOrigin(_answers)
    async with origin.running():
        client = await proxy(origin.url, log={"path": str(tmp_path / "r.log")})
        before = await _warm(client, forward_switch, quick, "/late-pass")
        forward_switch.state["sent"] = 0
        _, two = await _request(client.port, "/late-pass")  # (first: the idle connection)
        assert await until(lambda: len(origin.heads) == 1 + before)
        _, one = await _request(client.port, "/late-store")
        assert await until(lambda: len(origin.heads) == 2 + before)
        assert forward_switch.state["sent"] == int(quick)  # (the path the test meant)
        one.close()
        two.close()
        lines = await _lines_when_written(client, before + 2, 2)
        assert sorted((line["path"], line["status"]) for line in lines[before:]) == \
            [("/late-pass", 499), ("/late-store", 499)]
        closed = len(origin.closed)
        origin.go.set()  # the heads come now
        assert await until(lambda: len(origin.closed) == closed + 1, 2), \
            "the pass-through's upstream connection was not closed"
        reader, writer = await _request(client.port, "/late-store")
        data = await asyncio.wait_for(reader.readuntil(LONG), 5)
        writer.close()
        assert b"X-Cache: HIT" in data
        assert len(origin.heads) == 2 + before


def _hold_or_ok(head: bytes) -> bytes | None:
    """/hold...: no answer ever; anything else: a small no-store answer at once."""
    if head.split(b" ", 2)[1].startswith(b"/hold"):
        return None
    return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_a_request_whose_client_left_while_it_waited_for_a_connection_is_not_sent(
        proxy: Any, tmp_path: Any, how: str) -> None:
    """Every upstream connection in use (proxy.max_connections), a GET that may be
    stored waits for one, and its client leaves. The proxy sent it anyway once a
    connection was free, for nobody: it took the origin's time and the freed connection
    (held, for an origin as slow as this one, until proxy.read_timeout), ahead of the
    requests still waiting, whose clients were there. Only a request nothing could store
    (a POST, a no-store GET) was given up. nginx finalizes a request whose client leaves
    before it has an upstream connection, cacheable or not (499; its proxy_cache_lock
    waiters then go on their own, as collapsed waiters go here behind a leader that got
    no answer). Now it is given up as well, and the next waiting request gets the
    connection. Severity: medium (under load, departed clients' requests hold the
    connections that live ones wait for)."""
    origin = HeldOrigin(_hold_or_ok)
    async with origin.running():
        client, first, left = await _one_held_one_waiting(proxy, origin, tmp_path,
                                                          read_timeout=5)
        _leave(left, how)
        assert await until(lambda: client.app_proxy.exchange.pool.in_use == 1)
        reader, stays = await _request(client.port, "/next")  # waits too, its client stays
        _leave(first, how)  # the connection is freed now
        data = await asyncio.wait_for(reader.readuntil(b"ok"), 4)
        stays.close()
        assert data.startswith(b"HTTP/1.1 200")
        assert [head.split(b" ")[1] for head in origin.heads] == \
            [b"/hold-first", b"/next"]
        logged = [(line["path"], line["status"]) for line in await read_json_log(client)]
        assert sorted(logged) == [("/hold-first", 499), ("/hold-left", 499),
                                  ("/next", 200)]


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_a_websocket_handshake_whose_client_left_frees_the_origin_at_once(
        proxy: Any, tmp_path: Any, caplog: Any, how: str) -> None:
    """A WebSocket opening handshake sent upstream, its client gone (a reset) before the
    origin's 101: nothing will store that answer nor serve it to anyone, yet the proxy
    held the upstream connection until the origin answered or proxy.read_timeout, then
    wrote a WARNING about the origin's timeout. nginx closes the upstream connection at
    once ("client prematurely closed connection, so upstream connection is closed too":
    an upgrade is never cacheable). Now it is given up as a long poll nothing can store
    is: the origin's connection closed at once, the request logged 499, no WARNING.
    A close (FIN) was worse: taken for a half-close, as a CONNECT's FIN is (a tunnel's
    client may have said all it had to say), it kept the connection until the origin's
    answer; at read_timeout a 504 was written to the departed client and logged as
    answered ("answered 504"). A WebSocket client has frames to send after the 101: a FIN
    before it is a client gone, as for any request here (and in nginx). Severity: low (an
    origin's WebSocket slot held for up to read_timeout per departed client; a false
    WARNING)."""
    origin = HeldOrigin(_hold_or_ok)
    async with origin.running():
        client = await proxy(origin.url, proxy={"read_timeout": 5},
                             log={"path": str(tmp_path / "r.log")})
        _, writer = await _request(client.port, "/hold-ws", "Upgrade: websocket",
                                   "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
        assert await until(lambda: len(origin.heads) == 1)
        with caplog.at_level(logging.WARNING, logger="cacheproxy"):
            _leave(writer, how)
            assert await until(lambda: len(origin.closed) == 1, 3), \
                "the origin's connection was still open 3 s after its client left"
            lines = await _lines_when_written(client, 1, 2)
        assert [(line["path"], line["status"]) for line in lines] == [("/hold-ws", 499)]
        assert "failed" not in caplog.text
        assert client.app_proxy.exchange.pool.in_use == 0


async def test_a_fill_that_breaks_after_its_client_left_does_not_say_it_answered(
        proxy: Any, tmp_path: Any, caplog: Any) -> None:
    """A Range of two parts (a PDF reader's, a download manager's) of a storable miss:
    the whole representation is read and stored first, then the parts are cut from it
    (RFC 9110 §14.2). Its client left while the body came, and then the origin's body
    broke off: the WARNING said "upstream ... failed for GET /doc: ...; answered 502",
    though nobody was answered (the request's line says 499). Now it says that its
    client had left, as the driver's line for a failure before the head does.
    Severity: low (a false statement in a WARNING an operator reads)."""
    go = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\n"
                     b"Content-Length: 10000\r\n\r\n" + LONG)
        await go.wait()
        writer.close()  # the body breaks off, 4096 bytes of 10000 in

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        client = await proxy(f"http://127.0.0.1:{port}", log={"path": str(tmp_path / "r.log")})
        _, writer = await _request(client.port, "/doc", "Range: bytes=0-1,5-6")
        lines = await _lines_when_written(client, 1, 0.3)  # (the body is being read)
        assert lines == []
        with caplog.at_level(logging.WARNING, logger="cacheproxy"):
            _leave(writer, "rst")
            lines = await _lines_when_written(client, 1, 2)
            assert [(line["path"], line["status"]) for line in lines] == [("/doc", 499)]
            go.set()
            assert await until(lambda: "failed for GET /doc" in caplog.text)
        warning = next(r.getMessage() for r in caplog.records
                       if "failed for GET /doc" in r.getMessage())
        assert "answered 502" not in warning and "client had left" in warning
    finally:
        server.close()


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_a_client_that_leaves_while_its_request_waits_for_a_connection_is_let_go_at_once(
        proxy: Any, tmp_path: Any, caplog: Any, how: str) -> None:
    """Every upstream connection in use, a request waits for one and its client leaves:
    it was not sent (above), but the wait itself went on, until a connection came free
    or proxy.connect_timeout passed (then a WARNING "upstream ... failed: no upstream
    connection free within 5.0s", for a client gone for seconds); only then was the 499
    logged, its total_ms running to the timeout. nginx finalizes such a request when
    the client's close is seen. Now the wait ends then: logged 499 at once, no WARNING,
    and the connections' holder is not disturbed. Severity: low (a request-log line
    late and long; a false WARNING under load)."""
    origin = HeldOrigin(_hold_or_ok)
    async with origin.running():
        client, first, left = await _one_held_one_waiting(proxy, origin, tmp_path,
                                                          connect_timeout=3)
        with caplog.at_level(logging.WARNING, logger="cacheproxy"):
            _leave(left, how)
            lines = await _lines_when_written(client, 1, 2)
            assert [(line["path"], line["status"]) for line in lines] == [("/hold-left", 499)]
            assert lines[0]["total_ms"] < 3000
            assert origin.closed == []  # (the first request's connection is left alone)
            first.close()
            assert await until(lambda: len(origin.closed) == 1)
        assert "failed" not in caplog.text
        assert [head.split(b" ")[1] for head in origin.heads] == [b"/hold-first"]
