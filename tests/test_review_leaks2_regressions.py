"""Review (leaks2): the socket-holding code of WebSocket pass-through, the intercepted
CONNECT's peek and Happy Eyeballs, run for minutes under mixed traffic through a real
`cacheproxy serve` (1 process, then --workers 2) and watched (descriptors by type,
threads, RSS, asyncio tasks, live objects by type, the pool's counters, the log): what it
showed, as tests against a real proxy in front of servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import struct
import weakref
from pathlib import Path
from typing import Any

from support import until
from test_forward_mode import origin_app, raw
from test_review_peek_regressions import connected, intercepting
from test_websocket import handshake, switching

from cacheproxy.proxy.client_conn import ClientConnection
from cacheproxy.proxy.destinations import _close_late
from cacheproxy.proxy.tunnel import TunnelEnd
from cacheproxy.tls.ca import LocalCA


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (RST), as a client that crashed or was killed."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def live_connections() -> int:
    """The client connections this process still holds (ClientConnection objects)."""
    gc.collect()
    return sum(isinstance(o, ClientConnection) for o in gc.get_objects())


async def test_an_intercepted_tls_handshake_that_fails_frees_its_connection(
        proxy: Any, origin: Any, tmp_path: Path) -> None:
    """An intercepted CONNECT whose client reset its connection during the TLS handshake
    (a client that crashed or was killed, a browser dropping a preconnect, a scanner, a
    mobile network) stayed among the listener's open connections for good:
    loop.start_tls had put its TLS protocol in front of the connection, so when the
    handshake failed on the reset and the socket closed, ClientConnection.connection_lost
    never ran, and nothing else took it out of Listener.connections. Seen in a soak of
    `cacheproxy serve` (uvloop): a ClientConnection, its parser, payload and transport
    object left per such CONNECT (32 after some 50 CONNECTs reset in or just after the
    handshake), their descriptors closed; here (asyncio) one per reset mid-ClientHello.
    A handshake ended by the client's alert (a TLS 1.2 client that does not trust the
    local CA, the other half of the loop) or by its FIN was freed: the control. Each
    leaked one counts against proxy.max_client_connections (10,000 per process): after
    that many such resets the process closes every new connection as it arrives, for
    good, and its memory grows meanwhile. nginx and Squid free a connection whose
    handshake failed. Severity: high (an intercepting proxy, in long ordinary use, ends
    up serving no one until restarted)."""
    server = await origin(origin_app("secure"))
    client = await proxy(f"http://127.0.0.1:{server.port}",
                         proxy={"max_client_connections": 8},
                         forward=intercepting(server.port, tmp_path))
    LocalCA.load_or_create(tmp_path / "proxy-ca")
    untrusting = ssl.create_default_context()  # the system CAs only: not the local CA
    untrusting.maximum_version = ssl.TLSVersion.TLSv1_2  # (its alert ends the handshake)
    before = live_connections()
    refused = 0
    for i in range(20):  # more than max_client_connections
        try:
            reader, writer = await connected(client.port, server.port)
        except (asyncio.IncompleteReadError, ConnectionError):
            refused += 1  # closed as it arrived: max_client_connections are open
            continue
        if i % 2:
            writer.write(b"\x16\x03\x01\x00")  # a ClientHello begun, then a reset
            await asyncio.sleep(0.02)
            reset(writer)
        else:
            # It refuses the certificate with an alert (the control: freed before too).
            with contextlib.suppress(ssl.SSLError):
                await writer.start_tls(untrusting, server_hostname="localhost")
            writer.close()
    await asyncio.sleep(0.3)
    left = live_connections() - before
    # A client now is still served (not closed at max_client_connections).
    reader, writer = await raw(client.port, f"GET http://localhost:{server.port}/x HTTP/1.1"
                               f"\r\nHost: localhost:{server.port}\r\n"
                               "Connection: close\r\n\r\n".encode())
    answer = b""
    with contextlib.suppress(ConnectionError):
        answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert (refused, answer[:12], answer[-9:]) == (0, b"HTTP/1.1 200", b"secure /x")
    assert left <= 1, f"{left} connections held after their handshakes failed"


async def test_a_happy_eyeballs_loser_that_connected_holds_nothing_until_the_idle_timeout(
        ) -> None:
    """A Happy Eyeballs attempt that connected but lost (connect_first's _drop: two that
    connected in one turn of the loop, or one whose cancel came too late, _close_late) is
    closed without its protocol hearing (c99f649), but a CONNECT's TunnelEnd had armed its
    idle timer at connection_made, and nothing cancelled it: the loop kept the TunnelEnd,
    and through it the client's transport and ClientConnection (its parser, buffers, the
    request), for forward.tunnel_idle_timeout (600 s) after the tunnel ended, when the
    timer at last found the connection was not its own. One per such loser: a client
    fetching from a dual-stack site whose IPv6 is slow piles them up for ten minutes at a
    time. Severity: low (bounded by the timeout; the race is rare)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client_w = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    ends: list[weakref.ref[TunnelEnd]] = []
    try:
        for _ in range(5):
            task = loop.create_task(loop.create_connection(
                lambda: TunnelEnd(client_w.transport, 600.0, 60.0), "127.0.0.1", port))
            transport, end = await task
            ends.append(weakref.ref(end))
            del end
            _close_late(task)  # the loser, closed
            del task, transport
        await asyncio.sleep(0.1)
        gc.collect()
        assert not client_w.transport.is_closing()  # (the winner's client goes on)
        assert [e for e in ends if e() is not None] == [], "losers kept by their timers"
    finally:
        client_w.close()
        server.close()


async def test_a_tunnel_whose_client_left_does_not_wait_the_idle_timeout_for_its_origin(
        proxy: Any) -> None:
    """A WebSocket (or CONNECT) whose origin reads nothing of what the client sent: the
    origin's socket full, the tunnel paused the client's reading (its flow control), and
    nothing else watched that side: the client's leaving, even by a reset, is not seen
    while its reading is paused, so the origin's socket, the client's, the tunnel's
    objects and up to a high-water mark of unsent bytes stayed until
    websocket_idle_timeout (or forward.tunnel_idle_timeout), 600 s by default, and the
    WebSocket's log line was written only then; a client that left while bytes still
    waited for such an origin likewise (its graceful close never completes). Seen by hand
    after the soak (an origin stuck on its own upstream). nginx gives an upgraded
    connection's upstream proxy_send_timeout (60 s) to take some of what waits; the
    client's side here has send_timeout (e67dab1), the origin's now too. Severity: low
    (bounded by the idle timeout; needs an origin that stops reading)."""
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(switching(head))
        await done.wait()  # and reads nothing more
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await proxy(f"http://127.0.0.1:{port}",
                         proxy={"websocket_idle_timeout": 30.0, "send_timeout": 1.0})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(handshake())
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 101")
        frame = b"\x82\x7f" + (65536).to_bytes(8, "big") + b"\0\0\0\0" + b"x" * 65536
        for _ in range(100):  # more than the origin's socket and the proxy's buffer take
            writer.write(frame)
        await asyncio.sleep(0.5)
        reset(writer)

        def open_ends() -> list[TunnelEnd]:
            return [o for o in gc.get_objects()
                    if isinstance(o, TunnelEnd) and not o.closed.done()]
        assert open_ends()
        assert await until(lambda: not open_ends(), timeout=4.0), \
            "the origin's side still open after the client left"
    finally:
        done.set()
        server.close()
