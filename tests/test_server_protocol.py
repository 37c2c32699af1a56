"""ProxyAppRunner and the proxy's lean data plane: any method token is served, and
llhttp's rejections still hold.

Raw sockets against a catch-all app that echoes "METHOD /path\\n" + body. Chunks sent
with a pause in between arrive as separate data_received calls on loopback; the
assertions hold even if they don't.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
from aiohttp import web, web_protocol
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, BadStatusLine
from aiohttp.http_parser import HeadersParser, HttpPayloadParser, HttpRequestParserPy
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from hypothesis import given, settings
from hypothesis import strategies as st
from support import proxy_config

from cacheproxy.proxy.listener import LeanRunner
from cacheproxy.proxy.server import make_app
from cacheproxy.proxy.server_protocol import ProxyAppRunner, _FallbackParser

HAS_C = web_protocol.HttpRequestParser is not HttpRequestParserPy
needs_c = pytest.mark.skipif(not HAS_C, reason="aiohttp's C extension is not in use")

HOST = b"Host: example\r\n"


def request(line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    """b"FOO /x" -> a complete HTTP/1.1 request with a Host field."""
    return line + b" HTTP/1.1\r\n" + HOST + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


# --- A served app and a raw client ----------------------------------------------------


@dataclass
class Served:
    port: int
    origin_port: int = 0
    seen: list[str] = field(default_factory=list)  # "METHOD /path" of every request handled


@pytest.fixture(params=["app", "proxied"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """The echo app on ProxyAppRunner ("app"), or the same app behind the proxy's lean
    data plane ("proxied": the proxy's own parser faces the raw client; X-Parser then
    tells the origin's, which sees what the proxy forwarded)."""
    state = Served(port=0)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        line = f"{request.method} {request.path_qs}"
        state.seen.append(line)
        parser = request.protocol._parser
        python = isinstance(parser, HttpRequestParserPy) or getattr(parser, "_python", None)
        return web.Response(
            body=line.encode() + b"\n" + body,
            headers={"X-Parser": "python" if python else "c"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = ProxyAppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = state.origin_port = runner.addresses[0][1]
    front = None
    if request.param == "proxied":
        front = LeanRunner(make_app(proxy_config(f"http://127.0.0.1:{state.port}",
                                                 log={"format": "off"})))
        await front.setup()
        await web.TCPSite(front, "127.0.0.1", 0).start()
        state.port = front.addresses[0][1]
    try:
        yield state
    finally:
        if front is not None:
            await front.cleanup()
        await runner.cleanup()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("latin-1")


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, served: Served) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", served.port))

    async def send(self, *chunks: bytes) -> None:
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(0.05)
            self.writer.write(chunk)
            await self.writer.drain()

    async def response(self) -> Response:
        return await asyncio.wait_for(self._response(), 5)

    async def _response(self) -> Response:
        status_line = await self.reader.readline()
        assert status_line, "connection closed before a response"
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, value = line.decode("latin-1").split(":", 1)
            headers[name.strip().lower()] = value.strip()
        assert "transfer-encoding" not in headers
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Response(int(status_line.split()[1]), headers, body)

    async def is_closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 5) == b""

    def close(self) -> None:
        self.writer.close()


async def exchange(served: Served, *chunks: bytes) -> Response:
    conn = await Conn.open(served)
    try:
        await conn.send(*chunks)
        return await conn.response()
    finally:
        conn.close()


def last_after_chunked(served: Served) -> bool:
    """On the proxy's plane a chunked request is the last one read on its connection
    (client_conn._read_last: llhttp's wrapper would add its last trailer field to the
    next request): answered with a close, and nothing after it is read."""
    return served.port != served.origin_port


async def assert_still_serving(served: Served) -> None:
    resp = await exchange(served, request(b"GET /alive"))
    assert (resp.status, resp.body) == (200, b"GET /alive\n")


# --- Unknown methods are served --------------------------------------------------------

BODIES = {
    "no body": ((), b""),
    "content-length": ((b"Content-Length: 5",), b"hello"),
    "chunked": ((b"Transfer-Encoding: chunked",), chunked(b"hel", b"lo")),
}


@pytest.mark.parametrize("framing", BODIES)
async def test_unknown_method_then_get_on_the_same_connection(
    served: Served, framing: str
) -> None:
    fields, body = BODIES[framing]
    echoed = b"" if framing == "no body" else b"hello"
    conn = await Conn.open(served)
    await conn.send(request(b"FOO /x?q=1", *fields, body=body))
    resp = await conn.response()
    assert (resp.status, resp.body) == (200, b"FOO /x?q=1\n" + echoed)
    if framing == "chunked" and last_after_chunked(served):
        assert resp.headers["connection"] == "close" and await conn.is_closed()
        assert_python = False
        conn = await Conn.open(served)
    else:
        assert_python = HAS_C
    await conn.send(request(b"GET /next"))
    resp = await conn.response()
    assert (resp.status, resp.body) == (200, b"GET /next\n")
    if assert_python:
        assert resp.headers["x-parser"] == "python"  # the connection stays on it
    conn.close()


@pytest.mark.parametrize("method", [b"GET", b"PURGE", b"PROPFIND", b"M-SEARCH", b"DELETE"])
async def test_known_methods(served: Served, method: bytes) -> None:
    resp = await exchange(served, request(method + b" /k"))
    if method == b"PURGE" and served.port != served.origin_port:
        assert resp.status == 403  # the proxy's own PURGE (admin token needed)
        return
    assert (resp.status, resp.body) == (200, method + b" /k\n")
    assert resp.headers["x-parser"] == ("c" if HAS_C else "python")


@pytest.mark.parametrize(
    "method",
    [b"FOO", b"BAN", b"GETX", b"PROPFINDX", b"X.Y_Z~1!#$%&'*+^`|", b"PLAY", b"DESCRIBE"],
)
async def test_any_token_is_served(served: Served, method: bytes) -> None:
    # PLAY and DESCRIBE are RTSP-only methods to llhttp, rejected with HTTP/1.x.
    resp = await exchange(served, request(method + b" /t"))
    assert (resp.status, resp.body) == (200, method + b" /t\n")


@pytest.mark.parametrize("method", [b"foo", b"get", b"Purge"])
async def test_method_case_is_kept(served: Served, method: bytes) -> None:
    # RFC 9110 §9.1: case-sensitive. aiohttp's Python parser would upper-case it.
    resp = await exchange(served, request(method + b" /c"))
    assert (resp.status, resp.body) == (200, method + b" /c\n")


@pytest.mark.parametrize("where", ["fresh", "after fallback"])
@pytest.mark.parametrize(
    "data",
    [
        request(b"G(T /x"),
        request(b"G@T /x"),
        request(b"G\x00T /x"),
        request("GÉT /x".encode()),
        request(b"FOO:BAR /x"),
        b"G(T /x",  # no line end yet
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello
    ],
)
async def test_method_that_is_not_a_token_is_400(served: Served, data: bytes, where: str) -> None:
    conn = await Conn.open(served)
    if where == "after fallback":
        await conn.send(request(b"FOO /first"))
        assert (await conn.response()).body == b"FOO /first\n"
    await conn.send(data)
    assert (await conn.response()).status == 400
    assert await conn.is_closed()
    conn.close()
    await assert_still_serving(served)


# --- Wherever the unknown method comes on a keep-alive connection ----------------------

FOO = request(b"FOO /foo", b"Content-Length: 2", body=b"hi")
POST = request(b"POST /post", b"Content-Length: 5", body=b"hello")
CHUNKED_POST = request(b"POST /post", b"Transfer-Encoding: chunked", body=chunked(b"hello"))

POSITIONS: dict[str, tuple[list[bytes], list[bytes]]] = {
    # name: (chunks to send, expected bodies in order)
    "after GET": ([request(b"GET /get"), FOO], [b"GET /get\n", b"FOO /foo\nhi"]),
    "after POST": ([POST, FOO], [b"POST /post\nhello", b"FOO /foo\nhi"]),
    "after chunked POST": ([CHUNKED_POST, FOO], [b"POST /post\nhello", b"FOO /foo\nhi"]),
    "after body in a later chunk": (
        [POST[:-3], POST[-3:], FOO],
        [b"POST /post\nhello", b"FOO /foo\nhi"],
    ),
    "right after the body, same chunk": (
        [POST[:-3], POST[-3:] + FOO],
        [b"POST /post\nhello", b"FOO /foo\nhi"],
    ),
    "pipelined": (
        [request(b"GET /get") + POST + FOO + request(b"GET /last")],
        [b"GET /get\n", b"POST /post\nhello", b"FOO /foo\nhi", b"GET /last\n"],
    ),
    "method split across chunks": (
        [request(b"GET /get") + b"PROP", b"FINDX /pfx HTTP/1.1\r\n" + HOST + b"\r\n"],
        [b"GET /get\n", b"PROPFINDX /pfx\n"],
    ),
    "request line split across chunks": (
        [b"FO", b"O /f", b"oo HTTP/1.1\r\n" + HOST + b"\r\n"],
        [b"FOO /foo\n"],
    ),
    # llhttp stops after 32 queued messages and keeps the rest; FOO is in that rest.
    "after a full queue": (
        [request(b"GET /q") * 40 + POST + FOO],
        [b"GET /q\n"] * 40 + [b"POST /post\nhello", b"FOO /foo\nhi"],
    ),
}


@pytest.mark.parametrize("position", POSITIONS)
async def test_unknown_method_anywhere(served: Served, position: str) -> None:
    chunks, expected = POSITIONS[position]
    cut = chunks[0] is CHUNKED_POST and last_after_chunked(served)
    conn = await Conn.open(served)
    await conn.send(*chunks)
    for body in expected[:1] if cut else expected:
        resp = await conn.response()
        assert (resp.status, resp.body) == (200, body)
    if cut:
        assert await conn.is_closed() and "FOO /foo" not in served.seen
    conn.close()


# --- Request smuggling shapes stay 400 --------------------------------------------------

SMUGGLING: dict[str, tuple[list[bytes], bytes]] = {
    # name: (fields, body) of the request
    "duplicate Content-Length, different": ([b"Content-Length: 3", b"Content-Length: 4"], b"abcd"),
    "duplicate Content-Length, same": ([b"Content-Length: 3", b"Content-Length: 3"], b"abc"),
    "Content-Length list": ([b"Content-Length: 3, 3"], b"abc"),
    "Content-Length sign": ([b"Content-Length: +3"], b"abc"),
    "Content-Length overflow": ([b"Content-Length: 18446744073709551616"], b"abc"),
    "Content-Length 5000 digits": ([b"Content-Length: " + b"9" * 5000], b"abc"),
    "Content-Length + Transfer-Encoding": (
        [b"Content-Length: 5", b"Transfer-Encoding: chunked"], chunked()),
    "Transfer-Encoding: chunked, identity": ([b"Transfer-Encoding: chunked, identity"], chunked()),
    "Transfer-Encoding: chunked, chunked": ([b"Transfer-Encoding: chunked, chunked"], chunked()),
    "Transfer-Encoding twice": (
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], chunked()),
    "Transfer-Encoding: identity": ([b"Transfer-Encoding: identity"], b""),
    "Transfer-Encoding with vertical tab": ([b"Transfer-Encoding: \x0bchunked"], chunked()),
    "chunk size overflow": (
        [b"Transfer-Encoding: chunked"], b"1" + b"0" * 16 + b"\r\nabc\r\n0\r\n\r\n"),
    "chunk size 0x": ([b"Transfer-Encoding: chunked"], b"0x3\r\nabc\r\n0\r\n\r\n"),
    "chunk size with space": ([b"Transfer-Encoding: chunked"], b"3 \r\nabc\r\n0\r\n\r\n"),
    "chunk without CRLF": ([b"Transfer-Encoding: chunked"], b"3\r\nabcX0\r\n\r\n"),
    "chunk size bare LF": ([b"Transfer-Encoding: chunked"], b"3\nabc\r\n0\r\n\r\n"),
    "obs-fold, space": ([b"X-A: b", b" c"], b""),
    "obs-fold, tab": ([b"X-A: b", b"\tc"], b""),
    "space before colon": ([b"Content-Length : 3"], b"abc"),
    "tab before colon": ([b"Content-Length\t: 3"], b"abc"),
    "space before field name": ([b" X-A: b"], b""),
    "bad field name": ([b"X(A: b"], b""),
    "empty field name": ([b": b"], b""),
    "bare LF in the header section": ([b"X-A: b\nX-B: c"], b""),
    "bare CR in a field value": ([b"X-A: b\rX-B: c"], b""),
    "NUL in a field value": ([b"X-A: b\x00c"], b""),
    "duplicate Host": ([b"Host: other"], b""),
}
RAW_SMUGGLING: dict[str, bytes] = {
    # name: a whole request, METHOD standing for the method
    "bare LF line endings": b"METHOD /s HTTP/1.1\nHost: example\n\n",
    "bare LF ending the header section": b"METHOD /s HTTP/1.1\r\nHost: example\r\n\n",
    "missing Host": b"METHOD /s HTTP/1.1\r\n\r\n",
    "HTTP/3.0": b"METHOD /s HTTP/3.0\r\nHost: example\r\n\r\n",
    "control character in the target": b"METHOD /s\x01 HTTP/1.1\r\nHost: example\r\n\r\n",
}


@pytest.mark.parametrize(
    ("method", "where"), [(b"POST", "fresh"), (b"FOO", "fresh"), (b"POST", "after fallback")])
async def test_a_higher_minor_version_is_served_as_1_1(
    served: Served, method: bytes, where: str
) -> None:
    """Not a smuggling shape: RFC 9110 §2.5, a recipient SHOULD process a message of a
    higher minor version as the highest minor of that major it conforms to (nginx and
    Squid answer HTTP/1.2 as 1.1). llhttp refuses it; _FallbackParser rewrites the digit
    and the Python parser reads it as 1.1 (both parsers, each plane). It keeps 1.1's
    keep-alive: a second request on the connection is answered."""
    conn = await Conn.open(served)
    if where == "after fallback":
        await conn.send(request(b"FOO /first"))
        assert (await conn.response()).body == b"FOO /first\n"
    await conn.send(method + b" /s HTTP/1.2\r\nHost: example\r\n\r\n")
    assert (await conn.response()).body == method + b" /s\n"
    await conn.send(request(b"GET /after"))
    assert (await conn.response()).body == b"GET /after\n"
    conn.close()


def smuggling_request(name: str, method: bytes) -> bytes:
    if name in RAW_SMUGGLING:
        return RAW_SMUGGLING[name].replace(b"METHOD", method)
    fields, body = SMUGGLING[name]
    return request(method + b" /s", *fields, body=body)


@pytest.mark.parametrize(
    ("method", "where"),
    [
        (b"POST", "fresh"),  # llhttp judges it
        (b"FOO", "fresh"),  # falls back on the method, then the Python parser judges it
        (b"POST", "after fallback"),  # the Python parser judges it
    ],
)
@pytest.mark.parametrize("shape", [*SMUGGLING, *RAW_SMUGGLING])
async def test_smuggling_shape_is_400(
    served: Served, shape: str, method: bytes, where: str
) -> None:
    conn = await Conn.open(served)
    if where == "after fallback":
        await conn.send(request(b"FOO /first"))
        assert (await conn.response()).body == b"FOO /first\n"
    await conn.send(smuggling_request(shape, method))
    # (RFC 9110 §15.6.6: the proxy answers a major version it does not implement with a
    # 505; aiohttp.web, which serves the admin address and the demo origin, with a 400.)
    proxied = served.port != served.origin_port
    assert (await conn.response()).status == (505 if shape == "HTTP/3.0" and proxied else 400)
    assert await conn.is_closed()
    conn.close()
    assert "/s" not in " ".join(served.seen)
    await assert_still_serving(served)


# --- No request is read out of a body ----------------------------------------------------

SMUGGLED = request(b"GET /smuggled")


async def test_request_in_a_body_before_an_unknown_method(served: Served) -> None:
    # The chunk with FOO starts inside the body; replaying it from its first byte
    # would serve GET /smuggled.
    body = b"x\r\n\r\n" + SMUGGLED
    post = request(b"POST /post", b"Content-Length: %d" % len(body), body=body)
    split = post.index(SMUGGLED)
    conn = await Conn.open(served)
    await conn.send(post[:split], post[split:] + FOO)
    assert (await conn.response()).body == b"POST /post\n" + body
    assert (await conn.response()).body == b"FOO /foo\nhi"
    assert served.seen == ["POST /post", "FOO /foo"]
    conn.close()


async def test_request_in_a_chunked_body_before_an_unknown_method(served: Served) -> None:
    # The end of a chunked body is not tracked: a method llhttp rejects right after one
    # in the same chunk is a 400 (when the chunks arrive apart), never a replay.
    post = request(b"POST /post", b"Transfer-Encoding: chunked", body=chunked(SMUGGLED))
    split = post.index(SMUGGLED)
    conn = await Conn.open(served)
    await conn.send(post[:split], post[split:] + FOO)
    assert (await conn.response()).body == b"POST /post\n" + SMUGGLED
    if last_after_chunked(served):
        assert await conn.is_closed()
    else:
        assert (await conn.response()).status in (200, 400)
    assert "GET /smuggled" not in served.seen
    conn.close()


async def test_request_in_a_body_after_lost_track(served: Served) -> None:
    # After a chunked request the position is unknown. Chunks that end with an empty
    # line while a body is still open must not make it known again.
    body = b"x\r\n\r\n" + b"y\r\n\r\n" + SMUGGLED
    post = request(b"POST /post", b"Content-Length: %d" % len(body), body=body)
    first = post.index(b"x\r\n\r\n") + 5
    second = post.index(SMUGGLED)
    conn = await Conn.open(served)
    if last_after_chunked(served):  # (the rest would be sent to a closed connection)
        await conn.send(CHUNKED_POST + post[:first])
        assert (await conn.response()).body == b"POST /post\nhello"
        assert await conn.is_closed()
    else:
        await conn.send(CHUNKED_POST + post[:first], post[first:second], post[second:] + FOO)
        assert (await conn.response()).body == b"POST /post\nhello"
        assert (await conn.response()).body == b"POST /post\n" + body
        assert (await conn.response()).status in (200, 400)
    assert "GET /smuggled" not in served.seen
    conn.close()


async def test_request_in_a_body_behind_a_full_queue(served: Served) -> None:
    body = SMUGGLED
    post = request(b"POST /post", b"Content-Length: %d" % len(body), body=body)
    conn = await Conn.open(served)
    await conn.send(request(b"GET /q") * 32 + post + FOO)
    for _ in range(32):
        assert (await conn.response()).body == b"GET /q\n"
    assert (await conn.response()).body == b"POST /post\n" + body
    assert (await conn.response()).body == b"FOO /foo\nhi"
    assert "GET /smuggled" not in served.seen
    conn.close()


# --- Where llhttp is in the stream, chunk by chunk ---------------------------------------

POST_HEAD = POST[:-5]  # Content-Length: 5
WEBSOCKET = request(
    b"GET /ws", b"Connection: Upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Version: 13",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
)
STATES: dict[str, tuple[list[bytes], bytes | int | None]] = {
    # name: (chunks fed, _FallbackParser._state after them)
    "after a request": ([request(b"GET /")], b""),
    "empty lines first": ([b"\r\n" * 5 + request(b"GET /")], b""),
    "part of the next request": ([request(b"GET /") + b"PR"], b"PR"),
    "parts of a request": ([b"PR", b"OPF"], b"PROPF"),
    "in a body": ([POST_HEAD + b"he"], 3),
    "further in a body": ([POST_HEAD + b"he", b"l"], 2),
    "body ends with the chunk": ([POST_HEAD + b"he", b"llo"], b""),
    "body and more": ([POST_HEAD + b"he", b"lloGE"], b"GE"),
    "two requests and a body": ([POST + POST_HEAD + b"h"], 4),
    "after a chunked request": ([CHUNKED_POST], b""),
    "after a chunked request and more": ([CHUNKED_POST + b"GE"], None),
    "body open, chunk ends with an empty line": ([CHUNKED_POST + POST_HEAD + b"\r\n\r\n"], None),
    "upgraded": ([WEBSOCKET], None),
    "queue full": ([request(b"GET /") * 40], request(b"GET /") * 8),
    "many empty lines": ([b"\r\n" * 40_000], b""),
    "too long a start of a request": (
        [b"GET / HTTP/1.1\r\n" + (b"X-A: " + b"a" * 8000 + b"\r\n") * 9], None),
    # Not known, then llhttp pauses on a full queue and keeps the rest (a POST whose
    # body is to come) although the data ends with an empty line.
    "queue full, the rest kept": (
        [CHUNKED_POST + b"GE", b"T /" + request(b"") + request(b"GET /") * 31 + POST_HEAD],
        None,
    ),
}


def fallback_parser(loop: asyncio.AbstractEventLoop) -> _FallbackParser:
    """The wrapper as the listener makes it: llhttp first, the strict Python parser after
    an unknown method, both over a mock protocol (messages' payloads on loop)."""
    from cacheproxy.proxy.server_protocol import _StrictPythonParser

    protocol = mock.Mock()

    def make_c() -> web_protocol.HttpRequestParser:
        return web_protocol.HttpRequestParser(protocol, loop, 2**16, max_msg_queue_size=32)

    return _FallbackParser(make_c(), lambda: _StrictPythonParser(protocol, loop, 2**16),
                           max_queue=32, make_c=make_c)


@needs_c
@pytest.mark.parametrize("case", STATES)
async def test_fallback_parser_state(case: str) -> None:
    from cacheproxy.proxy.server_protocol import _StrictPythonParser

    loop = asyncio.get_running_loop()
    protocol = mock.Mock()
    c_parser = web_protocol.HttpRequestParser(protocol, loop, 2**16, max_msg_queue_size=32)
    parser = _FallbackParser(
        c_parser, lambda: _StrictPythonParser(protocol, loop, 2**16), max_queue=32
    )
    chunks, state = STATES[case]
    for chunk in chunks:
        parser.feed_data(chunk)
    assert parser._state == state
    assert parser._python is None
    for _ in range(40):
        parser.message_consumed()  # as the protocol does, freeing llhttp's queue
    parser.feed_data(b"")
    if state is None:  # whatever llhttp rejects next is its 400 then
        with pytest.raises(BadHttpMessage):
            parser.feed_data(b"x" * 5 + b"FOO / HTTP/1.1\r\n")
        assert parser._python is None
    else:  # and a fallback otherwise
        parser.feed_data(b"x" * state if isinstance(state, int) else b"")
        parser.feed_data(b"FOO / HTTP/1.1\r\n")
        assert parser._python is not None


@needs_c
async def test_fallback_parser_hands_back_requests_before_a_malformed_one_then_reads_none(
        ) -> None:
    """The requests before a malformed one in a feed come back, then its error; whatever
    is fed after that gives nothing (the connection closes after the 400), not a second
    error."""
    parser = fallback_parser(asyncio.get_running_loop())
    messages, _, _ = parser.feed_data(
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /bad HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [m.path for m, _ in messages[:1]] == ["/one"]
    assert isinstance(messages[1][0], BadHttpMessage) and len(messages) == 2
    assert parser.feed_data(b"GET /later HTTP/1.1\r\nHost: a\r\n\r\n") == ([], False, b"")


# --- Assumptions about aiohttp internals -------------------------------------------------


async def test_aiohttp_internals() -> None:
    """What server_protocol.py relies on. If this fails, read it again against aiohttp."""
    # RequestHandler keeps its parser in _parser and gives it these settings.
    assert "_parser" in BaseProtocol.__slots__
    assert "_loop" in BaseProtocol.__slots__
    for name in ("_read_bufsize", "_max_msg_queue_size", "max_line_size", "max_field_size",
                 "max_headers"):
        assert name in web_protocol.RequestHandler.__slots__, name
    handler_args = inspect.signature(web_protocol.RequestHandler.__init__).parameters
    for name in ("read_bufsize", "max_line_size", "max_field_size", "max_headers",
                 "auto_decompress"):
        assert name in handler_args, name
    parser_args = inspect.signature(HttpRequestParserPy.__init__).parameters
    for name in ("protocol", "loop", "limit", "max_line_size", "max_field_size", "max_headers",
                 "payload_exception", "auto_decompress", "max_msg_queue_size"):
        assert name in parser_args, name
    source = inspect.getsource(web_protocol.RequestHandler.__init__)
    assert "max_msg_queue_size=MAX_MSG_QUEUE_SIZE" in source
    assert "self._max_msg_queue_size = MAX_MSG_QUEUE_SIZE" in source
    # The protocol calls exactly these on its parser.
    protocol_source = inspect.getsource(web_protocol) + inspect.getsource(BaseProtocol)
    calls = {word.split("(")[0] for word in protocol_source.split("self._parser.")[1:]}
    assert calls == {"feed_data", "message_consumed", "set_upgraded", "pause_reading"}
    for name in (*calls, "feed_eof"):  # (and ClientConnection's feed_eof): passed on
        assert callable(getattr(_FallbackParser, name, None)), name

    # Server keeps its handler kwargs; AppRunner builds it in _make_server.
    server = web.Server(mock.Mock())
    assert server._kwargs == {}
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)

    # The Python parser's body parser and its count of chunk bytes still to come.
    loop = asyncio.get_running_loop()
    payload = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=loop)
    body_parser = HttpPayloadParser(payload, chunked=True, headers_parser=HeadersParser())
    body_parser.feed_data(b"ff\r\nabc")
    assert body_parser._chunk_size == 0xFF - 3
    python_parser = HttpRequestParserPy(mock.Mock(), loop, 2**16)
    python_parser.feed_data(b"GET / HTTP/1.1\r\nHo")
    assert (python_parser._lines, python_parser._tail) == ([b"GET / HTTP/1.1"], b"Ho")
    python_parser.feed_data(b"st: example\r\nTransfer-Encoding: chunked\r\n\r\nPO")
    assert isinstance(python_parser._payload_parser, HttpPayloadParser)
    assert python_parser._upgraded is False
    # What _StrictPythonParser._until_close puts back, and the refusal it undoes (the
    # whole feed refused, the requests parsed before the close in it lost).
    for name in ("_payload_has_more_data", "_pending_upgrade", "_msg_in_flight"):
        assert hasattr(python_parser, name), name
    with pytest.raises(BadHttpMessage, match="Data after `Connection: close`"):
        HttpRequestParserPy(mock.Mock(), loop, 2**16).feed_data(
            request(b"GET /a") + request(b"GET /b", b"Connection: close") + request(b"GET /"))


@needs_c
async def test_llhttp_rejections_we_rely_on() -> None:
    loop = asyncio.get_running_loop()
    c_parser = web_protocol.HttpRequestParser(mock.Mock(), loop, 2**16)
    with pytest.raises(BadHttpMethod):
        c_parser.feed_data(request(b"FOO /"))
    c_parser = web_protocol.HttpRequestParser(mock.Mock(), loop, 2**16)
    with pytest.raises(BadStatusLine, match="Invalid method for"):
        c_parser.feed_data(request(b"PLAY /"))
    c_parser = web_protocol.HttpRequestParser(mock.Mock(), loop, 2**16)
    messages, _, _ = c_parser.feed_data(request(b"PURGE /p", b"Content-Length: 3", body=b"ab"))
    (msg, payload), = messages
    assert (msg.method, msg.version, msg.chunked) == ("PURGE", (1, 1), False)
    assert msg.headers["Content-Length"] == "3"
    assert not payload.is_eof()
    c_parser.feed_data(b"c")
    assert payload.is_eof()
    c_parser.message_consumed()


# --- Without the C extension ----------------------------------------------------------------


@needs_c
def test_without_c_extension() -> None:
    """The whole file again with AIOHTTP_NO_EXTENSIONS=1: the Python parser everywhere."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
         "-k", "not without_c_extension"],
        env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " skipped" in result.stdout  # the C-only tests did skip: the variable took effect


@needs_c
@settings(max_examples=150, deadline=None)
@given(st.data())
def test_higher_minor_versions_read_as_1_1_however_the_stream_is_split(data: Any) -> None:
    """_until_close's rewrite of `HTTP/1.x` (x above 1) request lines, against any split
    of a pipelined stream: every request comes back once, in order, as 1.1, with its
    body's bytes as sent, even a body that holds such a request line itself (only heads
    are rewritten); and after an unknown method, by the Python parser."""
    loop = asyncio.new_event_loop()  # (for the payloads; nothing runs on it)
    parser = fallback_parser(loop)
    sent: list[tuple[str, bytes]] = []
    stream = b""
    for i in range(data.draw(st.integers(1, 6), label="requests")):
        minor = data.draw(st.sampled_from(b"1239"), label="minor")
        body = data.draw(st.sampled_from([b"", b"GET /in HTTP/1.2\r\nHost: a\r\n\r\n"]))
        # (FOO: llhttp refuses the method, and the Python parser reads the rest)
        method = b"POST" if body else data.draw(st.sampled_from([b"GET", b"FOO"]))
        stream += (b"%s /r%d HTTP/1.%c\r\nHost: a\r\n" % (method, i, minor)
                   + (b"Content-Length: %d\r\n" % len(body) if body else b"") + b"\r\n" + body)
        sent.append((f"/r{i}", body))
    # Last, maybe, a malformed head (llhttp's path only): the requests before it come back,
    # then its error, and nothing after it.
    malformed = b"FOO " not in stream and data.draw(st.booleans(), label="malformed")
    if malformed:
        stream += (b"GET /bad HTTP/1.%c\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
                   b"GET /after HTTP/1.1\r\n\r\n" % data.draw(st.sampled_from(b"12")))
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=4)))
    got: list[tuple[str, Any, Any]] = []
    refused = False
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        try:
            messages, _, _ = parser.feed_data(stream[start:end])
        except BadHttpMessage:
            refused = True
            break
        for msg, payload in messages:
            if isinstance(msg, BadHttpMessage):
                refused = True
                break
            got.append((msg.path, msg.version, payload))
            parser.message_consumed()
        if refused:
            break
    assert refused == malformed
    assert [(path, version) for path, version, _ in got] == [
        (path, HttpVersion11) for path, _ in sent]
    for (_, _, payload), (_, body) in zip(got, sent, strict=True):
        assert (b"".join(payload._buffer) if body else payload) == (body or EMPTY_PAYLOAD)
    loop.close()
