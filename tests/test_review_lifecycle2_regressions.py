"""Review (lifecycle2): reloads and stops of a real `cacheproxy serve` with long-lived
traffic open (event streams, long polls, WebSockets, CONNECT tunnels, big answers to slow
clients). Each test runs the real process in front of origins on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from processes import clean_env, start_serve, stop
from test_review_streaming_regressions import served

PIECE = 65536
PIECES = 300  # ~20 MB each: far more than the client takes before the stop's end


def _flood_app() -> web.Application:
    """/miss: a body too big to store, sent as fast as the proxy takes it; /events: an
    event stream as fast; /ws: a WebSocket whose origin sends as fast."""

    async def miss(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Cache-Control": "no-store"})
        resp.content_length = PIECE * PIECES
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(PIECES):
                await resp.write(b"m" * PIECE)
        return resp

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(PIECES):
                await resp.write(b"data: " + b"e" * (PIECE - 8) + b"\n\n")
        return resp

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(PIECES):
                await sock.send_bytes(b"w" * PIECE)
        return sock

    app = web.Application()
    app.router.add_get("/miss", miss)
    app.router.add_get("/events", events)
    app.router.add_get("/ws", ws)
    return app


@contextlib.asynccontextmanager
async def _tcp_flood() -> AsyncIterator[int]:
    """A TCP server (what a CONNECT reaches) that sends ~20 MB as fast as it is taken."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(PIECES):
                writer.write(b"t" * PIECE)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _slow_client(port: int, head: str
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A client with a small receive buffer that sends head and reads the answer's head
    only (then nothing until the proxy has exited)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    writer.write(head.encode())
    answer_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, answer_head


def _dechunked_size(data: bytes) -> int:
    """Body bytes in a chunked body that may be cut anywhere (in a size line, in data)."""
    size, pos = 0, 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return size
        length = int(data[pos:eol].split(b";")[0], 16)
        if length == 0:
            return size
        got = min(length, len(data) - eol - 2)
        size += got
        if got < length:
            return size
        pos = eol + 2 + length + 2


async def test_answers_cut_at_the_end_of_a_graceful_stop_log_the_bytes_that_went(
        tmp_path: Path) -> None:
    """SIGTERM with long-lived answers open to clients that read slowly (a streamed miss too
    big to store, an event stream, a WebSocket, a CONNECT tunnel): at the end of
    proxy.shutdown_timeout each is cut and gets its one log line, whose `bytes` counted
    what the proxy had written to its own buffers, not what went to the client: what those
    buffers still held (some 100-300 KB each, seen: a miss logged 4,226,781 bytes of which
    the client got 4,003,497) is dropped as the process exits, yet was logged as sent. The
    README's WebSocket section says `bytes` is what "went out to the client (not what a
    timeout's close dropped)", and an answer a client leaves is logged so
    (client_conn._log_gone); nginx's $body_bytes_sent counts what the socket took. A stop
    is when operators compare logs with what users got (a download cut by a deploy).
    Severity: low (the log overstates the bytes of answers cut at a stop)."""
    async with served(_flood_app(), shutdown_timeout=1.0) as origin_port, \
            _tcp_flood() as tunnel_port:
        config = tmp_path / "cacheproxy.toml"
        log_path = tmp_path / "requests.log"
        config.write_text(
            f'[proxy]\nupstream = "http://127.0.0.1:{origin_port}"\nshutdown_timeout = 1.0\n'
            f'[log]\npath = "{log_path}"\n'
            f"[forward]\nenabled = true\nconnect_ports = [{tunnel_port}]\n")
        proc, port = await start_serve("--config", str(config), cwd=tmp_path)
        host = f"Host: 127.0.0.1:{port}\r\n"
        clients = {
            "/miss": await _slow_client(port, f"GET /miss HTTP/1.1\r\n{host}\r\n"),
            "/events": await _slow_client(port, f"GET /events HTTP/1.1\r\n{host}\r\n"),
            "/ws": await _slow_client(
                port, f"GET /ws HTTP/1.1\r\n{host}Upgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"),
            f"127.0.0.1:{tunnel_port}": await _slow_client(
                port, f"CONNECT 127.0.0.1:{tunnel_port} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{tunnel_port}\r\n\r\n"),
        }
        await asyncio.sleep(0.5)  # every buffer on the way fills
        proc.send_signal(signal.SIGTERM)
        code, err = await stop(proc)
        assert code == 0, err
        received = {}
        for path, (reader, _, head) in clients.items():  # what the kernel still held comes
            body = await asyncio.wait_for(reader.read(), 30)  # (then the close)
            received[path] = _dechunked_size(body) if b"chunked" in head else len(body)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    logged = {line["path"]: line["bytes"] for line in lines}
    assert sorted(logged) == sorted(received), lines  # one line each
    over = {path: logged[path] - received[path] for path in received
            if logged[path] > received[path]}
    assert not over, f"logged bytes beyond what the client got: {over} " \
                     f"(logged {logged}, received {received})"


def _quiet_stream_app() -> web.Application:
    """/events: one event, then nothing for a minute (a stream a stop must wait for)."""
    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: hello\n\n")
        with contextlib.suppress(ConnectionError):
            await asyncio.sleep(60)
        return resp

    app = web.Application()
    app.router.add_get("/events", events)
    return app


async def test_cacheproxy_stop_waits_for_the_running_shutdown_timeout(tmp_path: Path) -> None:
    """`cacheproxy stop` waits proxy.shutdown_timeout + 5 s for the server to exit, reading
    shutdown_timeout from the config file now; but the server drains with the value it
    started with (a restart-only setting: README, SIGHUP). An operator who lowered it in
    the file for the next start (8 s -> 1 s) and then stops a server with an event stream
    open gets `stop: pid N is still running 6 s after SIGTERM` and exit 1 while the server
    is draining as it should (it exits 0 two seconds later); a deploy script's
    `cacheproxy stop && cacheproxy serve` fails there. README: `stop` returns once the
    process has exited (exit 0). Severity: low. Now the server writes the shutdown_timeout
    it runs with beside its pid file (`<pid_file>.json`), and `stop` waits for that one."""
    async with served(_quiet_stream_app(), shutdown_timeout=1.0) as origin_port:
        config = tmp_path / "cacheproxy.toml"
        settings = (f'[proxy]\nupstream = "http://127.0.0.1:{origin_port}"\n'
                    f'pid_file = "{tmp_path / "cacheproxy.pid"}"\nshutdown_timeout = {{}}\n')
        config.write_text(settings.format(8.0))
        proc, port = await start_serve("--config", str(config), cwd=tmp_path)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await asyncio.wait_for(reader.readuntil(b"data: hello"), 5)
        config.write_text(settings.format(1.0))  # for the next start
        control = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cacheproxy", "stop", "--config", str(config),
            cwd=tmp_path, env=clean_env(), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        said, _ = await asyncio.wait_for(control.communicate(), 30)
        code, _ = await stop(proc)
        writer.close()
    assert code == 0
    assert control.returncode == 0, said.decode()
