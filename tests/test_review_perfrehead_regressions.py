"""Review perfrehead: the client request's head, parsed once for a head sent again.

What was looked at: server_protocol._FallbackParser.feed_data and message_consumed, and
ClientConnection.data_received and _serve, for a request head whose bytes are those of the
last usual read (one whole request without a body ending the read), which a keep-alive
client, a poller, a health check or a CDN's revalidations send again and again. llhttp's
message of such a head (a RawRequestMessage with a CIMultiDictProxy of the fields, the raw
field tuples and a yarl URL: about 23,000 instructions) is kept per process with its bytes
(server_protocol.HeadMemo) and handed out again, llhttp not called, when a parser with the
same limits is where that read started (nothing fed yet, or the last feed was the usual
one, nothing in flight). These tests pin what the memo must not get wrong: any byte of the
head, and every state a feed may start from but that one, give llhttp's own parse; the
wrapper's count of messages in flight (its queue's bound) stays llhttp's; and a message
object handed out twice is asked of the quick path each time.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any
from unittest import mock

import pytest
from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError
from support import https_site, intercepted_tls, intercepting_proxy, proxy_config, until
from test_client_plane import Raw
from test_review_h2clients_regressions import _H2C

from cacheproxy.proxy.client_conn import MAX_PIPELINED, ClientConnection
from cacheproxy.proxy.quick import QuickHits
from cacheproxy.proxy.server import reconfigure
from cacheproxy.proxy.server_protocol import (
    HEAD_MEMO_MAX,
    HeadMemo,
    _FallbackParser,
    _StrictPythonParser,
    head_memo,
)


def _echo() -> web.Application:
    """An origin that says what it was asked (in a field, for HEAD too) and lets nothing be
    stored: every request goes to it."""
    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        said = (f"{request.method} {request.path_qs} {request.headers.get('X-N', '-')} "
                f"{len(body)}")
        return web.Response(text=said, headers={"X-Echo": said, "Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def _head(port: int, target: bytes = b"/a", *fields: bytes, method: bytes = b"GET",
          version: bytes = b"1.1") -> bytes:
    return b"%s %s HTTP/%s\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (
        method, target, version, port, b"".join(f + b"\r\n" for f in fields))


def _memo() -> HeadMemo:
    return head_memo(8190, 8190, 128, MAX_PIPELINED)  # (ClientConnection's limits)


class _Asked:
    """QuickHits.hit, counting the messages it is asked about."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, decline_first: int = 0) -> None:
        self.messages: list[Any] = []
        self.decline_first = decline_first
        real = QuickHits.hit

        def hit(quick: QuickHits, msg: Any, started: float) -> Any:
            self.messages.append(msg)
            if len(self.messages) <= self.decline_first:
                return None  # the full path's
            return real(quick, msg, started)

        monkeypatch.setattr(QuickHits, "hit", hit)


async def _ask(raw: Raw, data: bytes, head: bool = False) -> tuple[int, str | None]:
    await raw.send(data)
    reply = await raw.reply(head=head)
    return reply.status, reply.headers.get("x-echo")


async def test_the_same_head_again_on_one_connection_and_on_another_is_answered_alike(
        proxy: Any, origin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """What this pins: a head whose bytes are the last usual read's is handed llhttp's
    message of them again, on the same keep-alive connection and on another one (the
    memo is the process's: wrk's 64 connections, or a poller that connects for each
    request, send the same bytes), and is answered exactly as the first was. The message
    object is the same one (the proof that llhttp was not called). Severity if broken:
    performance only (about 10 % of a revalidation's instructions)."""
    asked = _Asked(monkeypatch)
    c = await proxy(await origin(_echo()))
    head = _head(c.port, b"/same", b"X-N: 7")
    first, second = await Raw.open(c), await Raw.open(c)
    try:
        answers = [await _ask(first, head) for _ in range(3)]
        answers += [await _ask(second, head) for _ in range(2)]
    finally:
        first.close()
        second.close()
    assert answers == [(200, "GET /same 7 0")] * 5
    assert _memo().last[0] == head
    assert len(asked.messages) == 5
    assert all(msg is asked.messages[1] for msg in asked.messages[1:])


@pytest.mark.parametrize("changed, expected, closes", [
    (lambda p: _head(p, b"/b", b"X-N: 1"), (200, "GET /b 1 0"), False),  # the target
    (lambda p: _head(p, b"/a", b"X-N: 2"), (200, "GET /a 2 0"), False),  # a field's value
    (lambda p: _head(p, b"/a", b"X-M: 1"), (200, "GET /a - 0"), False),  # a field's name
    (lambda p: _head(p, b"/a", b"X-N: 1", method=b"HEAD"), (200, "HEAD /a 1 0"), False),
    (lambda p: _head(p, b"/a", b"X-N: 1", b"Connection: close"), (200, "GET /a 1 0"), True),
    (lambda p: _head(p, b"/a", b"X-N: 1", version=b"1.0"), (200, "GET /a 1 0"), True),
])
async def test_a_head_that_differs_by_a_byte_is_parsed_afresh(
        proxy: Any, origin: Any, changed: Any, expected: tuple[int, str], closes: bool
        ) -> None:
    """What this pins: the memo compares the whole head: a head that differs from the kept
    one in its method, target, version, a field's name or value, or by a Connection: close,
    is llhttp's own parse and answered as such (an HTTP/1.0 head without keep-alive, and
    one with close, end the connection after their answer, RFC 9112 §9.6). A memo keyed
    on less would answer one client's request as another's. Severity if broken: high."""
    c = await proxy(await origin(_echo()))
    raw = await Raw.open(c)
    try:
        for _ in range(2):  # (the second from the memo)
            assert await _ask(raw, _head(c.port, b"/a", b"X-N: 1")) == (200, "GET /a 1 0")
        other = changed(c.port)
        assert await _ask(raw, other, head=other.startswith(b"HEAD")) == expected
        if closes:
            assert await raw.closed_within(5)
        else:
            assert await _ask(raw, _head(c.port, b"/a", b"X-N: 1")) == (200, "GET /a 1 0")
    finally:
        raw.close()


async def test_the_same_head_after_other_reads_is_answered_as_llhttp_reads_it(
        proxy: Any, origin: Any) -> None:
    """What this pins: the kept message is handed out only where the read that made it
    started (nothing fed yet, or the last read the usual one, nothing in flight). The same
    head fed in two pieces, after a request with a body, after a pipelined pair in one
    read, after an h2c upgrade request (answered in HTTP/1.1, RFC 9110 §7.8) and after a
    request whose method llhttp lacks (the Python parser then reads the connection) is
    answered as llhttp (or that parser) reads it, and the connection goes on. Severity if
    broken: high (a message for bytes the parser did not read, or a stream out of step)."""
    c = await proxy(await origin(_echo()))
    raw = await Raw.open(c)
    same = _head(c.port, b"/a", b"X-N: 1")
    want = (200, "GET /a 1 0")
    try:
        for _ in range(2):
            assert await _ask(raw, same) == want
        await raw.send(same[:10])  # (two reads, or one: the answer is the same)
        await asyncio.sleep(0.05)
        assert await _ask(raw, same[10:]) == want
        assert await _ask(raw, same) == want
        post = _head(c.port, b"/p", b"X-N: 3", b"Content-Length: 5", method=b"POST")
        assert await _ask(raw, post + b"hello") == (200, "POST /p 3 5")
        assert await _ask(raw, same) == want
        await raw.send(_head(c.port, b"/q", b"X-N: 4") + same)
        assert [(r.status, r.headers["x-echo"]) for r in
                [await raw.reply(), await raw.reply()]] == [(200, "GET /q 4 0"), want]
        assert await _ask(raw, same) == want
        h2c = b"GET /u HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (c.port, _H2C)
        assert await _ask(raw, h2c) == (200, "GET /u - 0")
        assert await _ask(raw, same) == want
        assert await _ask(raw, same) == want
        assert await _ask(raw, _head(c.port, b"/f", method=b"FOO")) == (200, "FOO /f - 0")
        assert await _ask(raw, same) == want
    finally:
        raw.close()


async def test_the_same_head_after_a_refused_one_and_after_a_reload(
        proxy: Any, origin: Any) -> None:
    """What this pins: a request refused (400, the connection closes) leaves the kept head
    as it was, and the same head on another connection is answered as before; after a
    reload (SIGHUP) the same head on an open connection gets the new configuration's
    answer (here its Via name, RFC 9110 §7.6.3): the memo holds the parse only, and every
    decision on it is made again. Severity if broken: high (a reload not applied)."""
    server = await origin(_echo())
    c = await proxy(server)
    same = _head(c.port, b"/a", b"X-N: 1")
    raw = await Raw.open(c)
    try:
        for _ in range(2):
            assert await _ask(raw, same) == (200, "GET /a 1 0")
        bad = await Raw.open(c)
        try:
            await bad.send(b"GET /a HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n")
            assert (await bad.reply()).status == 400
            assert await bad.closed_within(5)
        finally:
            bad.close()
        assert _memo().last[0] == same
        assert await _ask(raw, same) == (200, "GET /a 1 0")
        await raw.send(same)
        assert "renamed" not in (await raw.reply()).headers.get("via", "")
        reconfigure(c.server.app, proxy_config(str(server.make_url("")).rstrip("/"),
                                               proxy={"via": "renamed"}))
        await raw.send(same)
        reply = await raw.reply()
        assert (reply.status, reply.headers["x-echo"]) == (200, "GET /a 1 0")
        assert "renamed" in reply.headers["via"]
    finally:
        raw.close()


async def test_a_declined_message_handed_out_again_is_asked_of_the_quick_path(
        proxy: Any, origin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """What was wrong: the connection remembers the message the quick path declined
    (`_declined`) so that its task does not ask again, and never let go of it. Each message
    was a new object, so no later one could be it; with the memo, the same head is the
    same message object: read while the task still served the first (pipelining, or a
    client that does not wait), it was taken for the declined one and sent down the full
    path without asking the quick path (a hit served by the driver, a forward by a task).
    What a user saw: nothing but slower answers; the answers were right. Now the declined
    message is let go when the task takes it. Severity: low (performance)."""
    asked = _Asked(monkeypatch, decline_first=1)
    release = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="slow", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", answer)
    c = await proxy(await origin(app))
    listener = c.server.runner.server
    before = set(listener.connections)
    raw = await Raw.open(c)
    same = _head(c.port, b"/slow")
    try:
        assert await until(lambda: len(listener.connections) > len(before))
        (conn,) = set(listener.connections) - before
        assert type(conn) is ClientConnection
        await raw.send(same)  # declined: the task serves it, waiting on the origin
        assert await until(lambda: conn._task is not None and not conn._queue)
        await raw.send(same)  # the same message, queued behind it
        assert await until(lambda: len(conn._queue) == 1)
        release.set()
        assert [(await raw.reply()).status for _ in range(2)] == [200, 200]
    finally:
        raw.close()
    assert len(asked.messages) == 2
    assert asked.messages[1] is asked.messages[0]  # (the memo's: else nothing was shown)


def _tls_asks(port: int, site: int, ca_file: str, head: bytes, times: int) -> list[bytes]:
    """head sent `times` times inside one intercepted TLS connection: each answer's head."""
    t = intercepted_tls(port, site, ca_file)
    t.settimeout(10)
    heads = []
    try:
        buf = b""
        for _ in range(times):
            t.sendall(head)
            while b"\r\n\r\n" not in buf:
                buf += t.recv(65536)
            answer, buf = buf.split(b"\r\n\r\n", 1)
            length = int(answer.lower().split(b"content-length: ", 1)[1].split(b"\r\n")[0])
            while len(buf) < length:
                buf += t.recv(65536)
            buf = buf[length:]
            heads.append(answer)
    finally:
        t.close()
    return heads


async def test_the_same_head_inside_intercepted_tls_and_on_a_plain_connection(
        proxy: Any, origin: Any, tmp_path: Any) -> None:
    """What this pins: the memo is the process's and is not keyed on the kind of
    connection, as the message holds nothing of it: the very same head bytes, sent on a
    plain connection to the proxy and inside an intercepted TLS connection
    (forward.intercept_tls), in turns, are each answered as their own connection makes
    them: inside TLS, the https site's answer; on the plain connection, the proxy's own
    upstream's (here a 404). Severity if broken: high (one connection's scheme and origin
    given to another's request)."""
    site, site_ca = await https_site(_echo(), tmp_path)
    try:
        c, ca_file = await intercepting_proxy(origin, proxy, tmp_path, site, site_ca)
        head = b"GET /a HTTP/1.1\r\nHost: localhost:%d\r\nX-N: 1\r\n\r\n" % site.port
        plain = await Raw.open(c)
        try:
            for _ in range(2):
                assert (await _ask(plain, head))[0] == 404
                tls = await asyncio.to_thread(_tls_asks, c.server.port, site.port, ca_file,
                                              head, 2)
                assert all(b" 200 " in h.split(b"\r\n")[0] for h in tls)
                assert all(b"X-Echo: GET /a 1 0" in h for h in tls)
            assert (await _ask(plain, head))[0] == 404
        finally:
            plain.close()
    finally:
        await site.close()


# -- the wrapper against llhttp alone ---------------------------------------------------

def _parsers(loop: asyncio.AbstractEventLoop, memo: HeadMemo | None = None
             ) -> tuple[_FallbackParser, _FallbackParser]:
    """Two wrappers as ClientConnection makes them, one with a memo (its own, or the one
    given, which others may share), one without: what the first hands out must be what
    the second reads."""
    protocol = mock.Mock()

    def make_c() -> Any:
        return web_protocol.HttpRequestParser(protocol, loop, 2**16, max_msg_queue_size=8,
                                              auto_decompress=False)

    def make_python() -> _StrictPythonParser:
        parser = _StrictPythonParser(protocol, loop, 2**16, max_msg_queue_size=8,
                                     auto_decompress=False)
        parser.answers_first = True
        return parser

    return (_FallbackParser(make_c(), make_python, 8, make_c, memo=memo or HeadMemo()),
            _FallbackParser(make_c(), make_python, 8, make_c))


def _fields(msg: Any) -> tuple[Any, ...]:
    if isinstance(msg, Exception):
        return (type(msg), str(msg))
    return (type(msg), msg.method, msg.path, msg.version, tuple(msg.headers.items()),
            msg.raw_headers, msg.should_close, msg.compression, msg.upgrade, msg.chunked,
            str(msg.url))


def _seen(parser: _FallbackParser, data: bytes) -> tuple[Any, ...]:
    try:
        messages, upgraded, tail = parser.feed_data(data)
    except HttpProcessingError as exc:
        return ("error", type(exc))
    return (tuple((_fields(m), p.is_eof()) for m, p in messages), upgraded, tail,
            parser.settled, parser.holding, parser.queue_full, parser.in_body,
            parser.head_begun)


async def test_the_memo_keeps_llhttps_queue_bound() -> None:
    """What this pins: llhttp's wrapper counts the messages it handed out and pauses at
    its queue's bound (MAX_PIPELINED: reading stops, flow control); a message from the
    memo it never counted. One still waiting when more is fed is fed to llhttp first
    (_count_unseen), so that pipelined requests behind it fill the queue at the same
    request, and hold the same bytes back, as without the memo. Severity if broken:
    medium (one request more read ahead than the bound, and the wrapper's idea of where
    llhttp stopped out of step with llhttp's)."""
    memo, plain = _parsers(asyncio.get_running_loop())
    head = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
    for parser in (memo, plain):
        parser.feed_data(head)
        parser.message_consumed()
    assert _seen(memo, head) == _seen(plain, head)
    assert memo._unseen is not None  # (handed out from the memo)
    burst = head * 10
    assert _seen(memo, burst) == _seen(plain, burst)
    assert memo.holding and memo._in_flight == plain._in_flight == 8
    for _ in range(9):
        memo.message_consumed()
        plain.message_consumed()
    assert _seen(memo, b"") == _seen(plain, b"")


_CHUNKS = [
    b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /b HTTP/1.1\r\nHost: h\r\nX-N: 1\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET /a HTTP/1.0\r\nHost: h\r\n\r\n",
    b"GET /a HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHo",
    b"st: h\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nab",
    b"c",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    b"GET /u HTTP/1.1\r\nHost: h\r\n" + _H2C + b"\r\n",
    b"GET /u HTTP/1.1\r\nHost: h\r\n" + _H2C + b"\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n",
    b"FOO /f HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nbad\r\n\r\n",
    b"GET /a HTTP/1.2\r\nHost: h\r\n\r\n",
    b"",
]


async def test_the_memo_hands_out_what_llhttp_reads_in_any_order_of_reads() -> None:
    """What this pins: over random sequences of reads (the same head whole, in two
    pieces, after a body, a chunked body with a trailer field (llhttp's wrapper adds it
    to the next message), a pipelined pair, an h2c upgrade, a close, HTTP/1.0, a method
    llhttp lacks, a malformed head, a higher minor version, an empty feed) and of
    messages consumed, the wrapper with the memo gives every feed the result the wrapper
    without it gives: the same messages field by field, the same errors, and the same
    word on its state (settled, holding, queue_full, in_body, head_begun). Severity if
    broken: high."""
    loop = asyncio.get_running_loop()
    rng = random.Random(9111)
    hits = 0
    for _ in range(500):
        memo, plain = _parsers(loop)
        for _ in range(rng.randrange(1, 12)):
            if rng.random() < 0.7:
                for _ in range(rng.randrange(1, 4)):
                    memo.message_consumed()
                    plain.message_consumed()
            data = rng.choice(_CHUNKS[:3] * 4 + _CHUNKS)
            waiting = memo._unseen is not None
            seen = _seen(memo, data)
            hits += not waiting and memo._unseen is not None  # (handed out from the memo)
            assert seen == _seen(plain, data), data
            if seen[0] == "error":
                break
    assert hits > 50  # (the memo was used: 117 times)


def test_only_short_heads_are_kept() -> None:
    """What this pins: the memo's bound (one head of at most HEAD_MEMO_MAX bytes and its
    message, per process and set of limits): a longer head is parsed and answered, never
    kept. Severity if broken: low (memory: one large head per process)."""
    loop = asyncio.new_event_loop()
    try:
        memo, _ = _parsers(loop)
        long = b"GET /a HTTP/1.1\r\nHost: h\r\nX-Pad: %s\r\n\r\n" % (b"x" * HEAD_MEMO_MAX)
        assert len(memo.feed_data(long)[0]) == 1
        assert memo._memo.last[0] is None
        memo.message_consumed()
        short = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
        memo.feed_data(short)
        assert memo._memo.last[0] == short
    finally:
        loop.close()


def test_llhttps_message_is_immutable_we_rely_on() -> None:
    """What this pins: the memo hands one message object to many requests (and
    connections), which is right only while nothing can change it: aiohttp's C
    RawRequestMessage has read-only fields, its headers are a CIMultiDictProxy and its
    raw fields a tuple. Should an aiohttp upgrade make any of them writable, this fails
    and the memo must copy or go. Severity if broken: high (one request's change seen by
    the next)."""
    loop = asyncio.new_event_loop()
    try:
        memo, _ = _parsers(loop)
        (msg, _payload), = memo.feed_data(b"GET /a HTTP/1.1\r\nHost: h\r\nX-N: 1\r\n\r\n")[0]
    finally:
        loop.close()
    for name in ("method", "path", "version", "headers", "raw_headers", "should_close",
                 "compression", "upgrade", "chunked", "url"):
        with pytest.raises(AttributeError):
            setattr(msg, name, None)
    with pytest.raises(TypeError):
        msg.headers["X-N"] = "2"  # type: ignore[index]
    assert type(msg.raw_headers) is tuple
    assert all(type(pair) is tuple for pair in msg.raw_headers)
