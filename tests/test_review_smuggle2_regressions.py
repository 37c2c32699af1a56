"""Findings of the smuggle2 review: request smuggling and response desync in the code that
re-parses bytes by hand around llhttp. It looked at the recovery of requests pipelined
behind an `Upgrade: h2c` request (server_protocol._FallbackParser._after_upgrade, _track,
_after_messages), the Python parser's one-request-at-a-time walk after aiohttp refuses a
feed (_StrictPythonParser._one_at_a_time), and the upstream trailer recovery
(http/trailer_section.py, proxy/trailer_skip.py, UpstreamConnection.data_received), as a
hostile client and as a hostile origin: Content-Length spellings, obs-fold, bare LF and CR,
NUL, odd header names, Upgrade spellings, HTTP/1.0, absolute-form targets, Expect, bodies
that read as requests, CONNECT and WebSocket handshakes among pipelined requests, and cuts
at every offset, against llhttp alone as the oracle. Real proxy in front of origins on
127.0.0.1 (aiohttp, raw asyncio servers). Tests of a defect failed on 451a1be."""

from __future__ import annotations

import asyncio
from typing import Any

from test_client_plane import Raw
from test_server_protocol import needs_c
from test_websocket import echo_app, handshake

from cacheproxy.proxy.client_conn import MAX_PIPELINED


def _get(path: str, host: str = "site.test") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


# A request as an attacker sends it after a protocol switch: tunnel bytes, never a request.
_SMUGGLED = _get("/smuggled")


async def _replies(conn: Raw, count: int) -> list[int]:
    return [(await conn.reply()).status for _ in range(count)]


def _frame(text: bytes) -> bytes:
    """A masked text frame, as a client sends it (RFC 6455 §5.2)."""
    mask = b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(text)]) + mask \
        + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


@needs_c
async def test_bytes_after_a_websocket_handshake_that_fills_the_pipeline_are_not_requests(
        origin: Any, proxy: Any) -> None:
    """A WebSocket handshake that is the 32nd request of one read (MAX_PIPELINED: llhttp's
    message queue fills at it), then more bytes: the parser wrapper took it for an upgrade
    aiohttp does not switch for (h2c) and fed the bytes after it to llhttp again as
    requests, where at any other place in the read they are the upgrade's (RFC 9110 §7.8,
    RFC 6455 §4.1): kept for the tunnel after a 101, dropped with a close after a refusal
    (client_conn). What a user saw: where the origin took it, the first frame was parsed
    as a request head and never reached the WebSocket (the connection closed after 16
    answers, without the 101); where the origin refused it, the bytes behind it, `GET
    /smuggled`, went to the origin as a request of their own. Where the proxy draws a
    request boundary depended on the handshake's place in the read. Since 3307f67. (nginx
    reads the bytes after a refused upgrade as the next request; the proxy's rule, here
    kept for every place, is to close.) Severity: low (a client that pipelines 32
    requests and sends before the 101)."""
    before = b"".join(_get(f"/p{i}", "example") for i in range(MAX_PIPELINED - 1))
    seen: list[str] = []
    client = await proxy(await origin(echo_app(seen)))
    conn = await Raw.open(client)
    try:  # an upgrade the origin refuses (it answers 200): the connection closes after it
        await conn.send(before + handshake("/page") + _SMUGGLED)
        assert await _replies(conn, MAX_PIPELINED) == [200] * MAX_PIPELINED
        closed = await conn.closed_within(5)
    finally:
        conn.close()
    assert seen[-1] == "GET /page upgrade=websocket", seen[-3:]
    assert closed
    conn = await Raw.open(client)
    try:  # one it takes: the frame behind the handshake reaches the WebSocket
        await conn.send(before + handshake() + _frame(b"hello"))
        assert await _replies(conn, MAX_PIPELINED - 1) == [200] * (MAX_PIPELINED - 1)
        status = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
        assert status.startswith(b"HTTP/1.1 101 ")
        assert await asyncio.wait_for(conn.reader.readexactly(12), 5) == b"\x81\x0aecho:hello"
    finally:
        conn.close()


@needs_c
async def test_a_connect_that_fills_the_pipeline_gets_its_tunnel(
        origin: Any, proxy: Any) -> None:
    """A CONNECT that is the 32nd request of one read (llhttp's message queue fills at it),
    its tunnel's first bytes behind it: the 31 requests were answered, then nothing, and
    the connection sat until a timeout: the parser wrapper took the CONNECT for an h2c
    upgrade, lost the bytes after it and said it held more, forever (the tunnel never
    opened, the origin never got the bytes). Since 3307f67. Now the tunnel opens and the
    bytes go through it (RFC 9110 §9.3.6). Severity: low (a client that pipelines a
    CONNECT behind 31 requests)."""
    got = bytearray()
    arrived = asyncio.Event()

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            got.extend(chunk)
            if got.endswith(_SMUGGLED):
                arrived.set()
                writer.write(b"pong")
        writer.close()

    tcp = await asyncio.start_server(target, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        client = await proxy(await origin(echo_app()),
                             forward={"enabled": True, "connect_ports": [port]})
        conn = await Raw.open(client)
        try:
            before = b"".join(_get(f"/p{i}", "example") for i in range(MAX_PIPELINED - 1))
            connect = f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
            await conn.send(before + connect.encode() + _SMUGGLED)
            assert await _replies(conn, MAX_PIPELINED - 1) == [200] * (MAX_PIPELINED - 1)
            head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            await asyncio.wait_for(arrived.wait(), 5)
            assert await asyncio.wait_for(conn.reader.readexactly(4), 5) == b"pong"
        finally:
            conn.close()
    finally:
        tcp.close()
    assert bytes(got) == _SMUGGLED


# Bytes that cannot start a request (a TLS ClientHello's, a WebSocket frame's), and a
# request line and a field line llhttp and aiohttp's Python parser both refuse.
_MALFORMED = {
    "binary": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "request line": b"G(T /x HTTP/1.1\r\nHost: a\r\n\r\n",
    "field line": b"GET /x HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n",
}


async def _answers_then_400(client: Any, method: str, count: int, bad: bytes) -> list[int]:
    """count requests and bad in one write; the statuses read up to the close."""
    conn = await Raw.open(client)
    try:
        await conn.send(b"".join(f"{method} /p{i} HTTP/1.1\r\nHost: example\r\n\r\n".encode()
                                 for i in range(count)) + bad)
        statuses = []
        while len(statuses) <= count:
            reply = await conn.reply()
            statuses.append(reply.status)
            if reply.headers.get("connection") == "close":
                break
        assert await conn.closed_within(5)
    finally:
        conn.close()
    return statuses


@needs_c
async def test_requests_at_a_full_pipeline_are_answered_before_a_malformed_one(
        origin: Any, proxy: Any) -> None:
    """32 requests (MAX_PIPELINED: llhttp's message queue fills at the last) then a
    malformed one in one read: the first 16 were answered, the 16th with
    `Connection: close`, and the other 16 never, nor the 400. The bytes llhttp held at the
    full queue are fed once half the queue is answered; their refusal was raised, which
    ends the connection after the request under way, where a refusal among the requests
    of a read is handed back after them (_until_close, _one_at_a_time) and answered in
    its turn. Now a refusal with requests still waiting is handed back too, on llhttp
    and on aiohttp's Python parser (a method llhttp lacks), so all 32 are answered, then
    the 400 (RFC 9112 §9.3.2: answered in order; as with 31 or 37 requests before it).
    Severity: low (a client's pipelined requests dropped, sent again on a new
    connection)."""
    client = await proxy(await origin(echo_app()))
    got = {(method, name): await _answers_then_400(client, method, MAX_PIPELINED, bad)
           for method in ("GET", "PURGEX") for name, bad in _MALFORMED.items()}
    assert got == {key: [200] * MAX_PIPELINED + [400] for key in got}


async def test_requests_before_bytes_that_start_no_request_on_the_python_parser(
        origin: Any, proxy: Any) -> None:
    """Requests with a method llhttp lacks (the connection goes on with aiohttp's Python
    parser, server_protocol), then bytes that cannot start a request (a TLS ClientHello's
    first bytes, binary) in the same read: the whole read got one 400, the requests before
    unanswered; on llhttp, or with a request line that ends, they are answered, then the
    400 (4b46194). _StrictPythonParser refuses such a line before its end, as llhttp
    does, and raised, dropping the requests parsed in the same feed. Now they are handed
    back first. RFC 9112 §9.3.2. Severity: low."""
    client = await proxy(await origin(echo_app()))
    got = [await _answers_then_400(client, method, count, _MALFORMED["binary"])
           for method in ("PURGEX", "GET") for count in (1, 10)]
    assert got == [[200, 400], [200] * 10 + [400]] * 2


@needs_c
async def test_aiohttp_switches_for_websocket_and_connect_we_rely_on() -> None:
    """What server_protocol._switched_for mirrors: aiohttp's llhttp wrapper switches
    protocols (`upgraded`, the rest of the feed its tail) at a CONNECT and at an upgrade
    to `websocket` in any case, and at no other upgrade (h2c, or a list naming websocket
    with another). If this fails, read _switched_for again against aiohttp's
    ALLOWED_UPGRADES. Severity: guard."""
    from unittest import mock

    from aiohttp import web_protocol

    from cacheproxy.proxy.server_protocol import _switched_for

    loop = asyncio.get_running_loop()
    heads = {
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n": True,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n": True,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n": False,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket, h2c\r\n\r\n": False,
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n": False,  # (no Connection)
    }
    for head, switched in heads.items():
        parser = web_protocol.HttpRequestParser(mock.Mock(_reading_paused=False), loop, 2**16)
        messages, upgraded, tail = parser.feed_data(head + (b"after" if switched else b""))
        assert (upgraded, tail) == ((True, b"after") if switched else (False, b"")), head
        assert _switched_for(messages[0][0]) is switched, head
