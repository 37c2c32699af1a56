"""Defects found reviewing WebSocket pass-through (RFC 6455 §4, RFC 9110 §7.8): real
aiohttp origins, raw sockets and the real proxy on 127.0.0.1. Each test failed before its
fix (or is marked xfail, strict, with the reason it stays)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import aiohttp
from aiohttp import web
from support import raw_origin, read_json_log
from test_websocket import echo_app, handshake, read_head, switching

from cacheproxy.tls.ca import LocalCA


async def test_a_websocket_open_at_a_graceful_stop_is_logged_once(
        proxy: Any, origin: Any, tmp_path: Any) -> None:
    """README: one log line per request; a WebSocket's is written when it ends. A graceful
    stop that ran out of proxy.shutdown_timeout with a WebSocket open wrote two: stop()
    logged the handshake it found still being answered (bytes 0), then the cancelled
    tunnel wrote its own. The stats and /metrics counted two TUNNEL requests for one.
    (A CONNECT tunnel, the same code, clears the request it answers for that reason.)
    Medium: every WebSocket open at each deploy or restart is counted twice."""
    client = await proxy(await origin(echo_app()), log={"path": str(tmp_path / "r.log")})
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(handshake())
    status, _ = await read_head(reader)
    assert status == 101
    writer.write(b"\x81\x80\x00\x00\x00\x00")  # an empty masked text frame
    listener = client.server.runner.server
    listener.pre_shutdown()
    await listener.shutdown(0.2)  # the WebSocket is still open: out of time
    assert listener.observer.stats.by_cache["TUNNEL"] == 1
    lines = [line for line in await read_json_log(client) if line["path"] == "/ws"]
    assert len(lines) == 1, lines
    assert (lines[0]["status"], lines[0]["cache"]) == (101, "TUNNEL")
    assert lines[0]["bytes_in"] == 6  # the tunnel's own line, with its bytes
    writer.close()


async def test_a_handshake_whose_connection_field_has_two_lines_is_passed_on(
        proxy: Any, origin: Any) -> None:
    """RFC 9110 §5.3: field lines of one name are one comma-separated list, the same
    whether sent as one line or several, and §7.6.1 reads Connection's options from all
    of them. `Connection: keep-alive` then `Connection: Upgrade` (a client's or a front
    proxy's way of adding an option) was not taken for a handshake: only the first line
    was looked at, so the origin got the GET without its Upgrade and answered 400, while
    `Upgrade: websocket` then `Upgrade: h2c` was taken for one (the second line
    unseen). HAProxy reads every Connection line. Low: most clients send one line."""
    seen: list[str] = []
    client = await proxy(await origin(echo_app(seen)))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(handshake().replace(b"Connection: Upgrade",
                                     b"Connection: keep-alive\r\nConnection: Upgrade"))
    status, fields = await read_head(reader)
    writer.close()
    assert status == 101 and fields["upgrade"].lower() == "websocket"
    assert seen == ["GET /ws upgrade=websocket"]


async def test_a_handshake_pipelined_behind_a_request_is_answered_after_it(
        proxy: Any, origin: Any) -> None:
    """README: requests on a connection are answered in order (RFC 9112 §9.3.2). A GET
    and a WebSocket handshake sent together: the GET was answered with Connection: close
    and the connection closed, the handshake never answered nor sent on (the parser stops
    at an upgrade request, and every request queued before it was answered as if it were
    the last). nginx answers the GET, then switches. Low: browsers do not pipeline, but
    a client that does loses its WebSocket without an answer."""
    seen: list[str] = []
    client = await proxy(await origin(echo_app(seen)))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /page HTTP/1.1\r\nHost: example\r\n\r\n" + handshake())
    status, fields = await read_head(reader)
    assert status == 200 and fields.get("connection") != "close"
    assert await reader.readexactly(int(fields["content-length"])) == b"GET /page"
    status, fields = await read_head(reader)
    assert status == 101 and fields["upgrade"].lower() == "websocket"
    writer.write(b"\x81\x82\x00\x00\x00\x00hi")  # a masked text frame
    assert await asyncio.wait_for(reader.readexactly(9), 5) == b"\x81\x07echo:hi"
    writer.close()
    assert seen == ["GET /page upgrade=None", "GET /ws upgrade=websocket"]


async def test_a_big_first_message_with_the_101_leaves_the_client_heard(proxy: Any) -> None:
    """An origin that sends its first message with its 101 (a snapshot of the state, as
    dashboards and games do), to a client whose socket does not take it all at once (a
    slow network: a new connection's send buffer starts at 16 KiB): the bytes were
    written to the client before the tunnel was in place, so the client's socket filling
    up paused the client's own reading, as for a pipelined HTTP answer, and nothing
    resumed it (the tunnel's resume_writing resumes the origin only). The WebSocket went
    one-way for good: the client's messages, pongs and close frame never reached the
    origin. Medium: a silent hang on real networks, seen on loopback with a small send
    buffer."""
    first = b"\x82\x7f" + (200_000).to_bytes(8, "big") + b"b" * 200_000
    heard = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(switching(head) + first)
        data = await reader.read(100)
        writer.write(b"echo:" + data)
        await writer.drain()
        heard.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    client = await proxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port, limit=1 << 20)
    try:
        writer.transport.pause_reading()  # it reads nothing for a while
        for _ in range(100):
            if client.server.runner.server.connections:
                break
            await asyncio.sleep(0.01)
        for conn in client.server.runner.server.connections:  # a slow network's buffer
            conn.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        writer.write(handshake())
        await asyncio.sleep(0.5)
        writer.transport.resume_reading()
        status, _ = await read_head(reader)
        assert status == 101
        assert await asyncio.wait_for(reader.readexactly(len(first)), 5) == first
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(9), 5) == b"echo:ping"
    finally:
        writer.transport.abort()
        server.close()


async def test_a_refused_handshake_gets_its_whole_answer(proxy: Any) -> None:
    """An origin that does not switch (a 404, a 401 or 403 page, an app's index.html for
    an unknown path) answers as to any GET, and that answer is relayed (RFC 9110 §7.8).
    When its body came in a read after its head (a streamed or chunked answer, or one
    over a socket buffer), the bytes were kept as the new protocol's, as after a 101:
    the client got the head, then nothing until proxy.read_timeout (60 s), then a close
    with the body missing. nginx relays such an answer whole. Medium: every refused
    WebSocket whose refusal is streamed hangs for a minute and ends truncated."""
    async with raw_origin(lambda head: [
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n", b"not found"]) as port:
        client = await proxy(f"http://127.0.0.1:{port}", proxy={"read_timeout": 3})
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(handshake())
        status, fields = await read_head(reader)
        assert status == 404 and fields["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 2) == b"not found"
        writer.close()


async def test_a_wss_origin_that_closes_right_after_its_101_is_relayed(
        proxy: Any, tmp_path: Any) -> None:
    """An origin that accepts a WebSocket and at once sends a close frame (an app
    refusing a token or a full room with close code 4001 or 1008, as many do after the
    handshake) and closes: over http the client got the 101 and the close frame; over
    https (a wss upstream, proxy.upstream_ca_file) a 502 "connection closed after its
    101", since the TLS layer took the close_notify while the connection's reading was
    paused for the tunnel, and a connection closing was not handed over, its bytes with
    it. The client lost the close code and reason its app reads, and the log said ERROR
    for the origin's good answer. nginx relays them. Medium."""
    ca = LocalCA.load_or_create(tmp_path / "ca")
    close_frame = b"\x88\x0e\x0f\xa1unauthorized"  # 4001 "unauthorized"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(switching(head) + close_frame)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0,
                                        ssl=ca.server_context("127.0.0.1"))
    try:
        client = await proxy(f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                             proxy={"upstream_ca_file": str(ca.cert_path)},
                             log={"path": str(tmp_path / "r.log")})
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(handshake())
        status, _ = await read_head(reader)
        assert status == 101
        assert await asyncio.wait_for(reader.read(), 3) == close_frame
        writer.close()
        await asyncio.sleep(0.2)
        lines = await read_json_log(client)
        assert [(line["status"], line["cache"], line["bytes"]) for line in lines] \
            == [(101, "TUNNEL", len(close_frame))]
    finally:
        server.close()


async def test_a_wss_websocket_the_origin_closes_logs_no_warning(
        proxy: Any, tmp_path: Any, caplog: Any) -> None:
    """Over an https upstream, each WebSocket the origin closed (the usual end: it
    answers the client's close frame, then closes) wrote "WARNING returning true from
    eof_received() has no effect when using ssl" to the proxy's log: the tunnel kept the
    connection half-open after the origin's end, which a TLS transport cannot do (it
    closes anyway). A WARNING for every good WebSocket buries the real ones. Low."""
    ca = LocalCA.load_or_create(tmp_path / "ca")
    runner = web.AppRunner(echo_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ca.server_context("127.0.0.1"))
    await site.start()
    try:
        port = runner.addresses[0][1]
        client = await proxy(f"https://127.0.0.1:{port}",
                             proxy={"upstream_ca_file": str(ca.cert_path)})
        with caplog.at_level(logging.WARNING):
            async with aiohttp.ClientSession() as session, \
                    session.ws_connect(client.make_url("/ws")) as ws:
                await ws.send_str("x")
                assert await ws.receive_str(timeout=5) == "echo:x"
                await ws.close()
                assert ws.close_code == 1000
            await asyncio.sleep(0.3)
        assert "eof_received" not in caplog.text
    finally:
        await runner.cleanup()
