"""A deep read of the upstream side of the data plane (proxy/pool.py, upstream.py,
destinations.py, connect.py): which state a pooled connection is given back in, which
requests are sent again, the deadlines, the callbacks' exceptions, the waiters for a
connection, and the descriptors of connects that fail. Each test failed before its fix
(an xfail says why it is not fixed yet), against the real proxy and raw origins on
127.0.0.1 that send bytes of the test's choosing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from support import until

from cacheproxy.config import load_config

OK = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nhi"


@contextlib.asynccontextmanager
async def held_tls_origin(let_go: asyncio.Event) -> AsyncIterator[int]:
    """An "https" origin that takes the TCP connection and the ClientHello, then closes
    without a word once let_go is set: a TLS handshake that fails when the test says."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read(1)
            await let_go.wait()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _answering_origin() -> tuple[asyncio.AbstractServer, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(OK)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_failed_connect_wakes_a_request_waiting_for_a_connection(
        proxy: Any, tmp_path: Path) -> None:
    """What was wrong: Pool._connect counts a connect under way against
    proxy.max_connections, and gives its slot back when the connect fails (refused, a TLS
    handshake or DNS failure, a vetted address refused) without waking a request waiting
    for one. What a user saw: with the pool full, one upstream failing (a 502 for its
    own request) left the requests queued behind it asleep beside a free slot until
    proxy.connect_timeout, then a 503 "no upstream connection free" although no
    connection was in use. nginx's upstream keepalive and Squid's peer connection
    limits give a failed connect's slot to the next request at once. Severity: medium
    (a failing route turns another route's requests into 503s)."""
    let_go = asyncio.Event()
    good, good_port = await _answering_origin()
    async with held_tls_origin(let_go) as bad_port:
        path = tmp_path / "cacheproxy.toml"
        path.write_text(f"""
[proxy]
upstream = "http://127.0.0.1:{good_port}"
max_connections = 1
connect_timeout = 5.0

[[routes]]
path_prefix = "/tls/"
upstream = "https://127.0.0.1:{bad_port}"
""")
        c = await proxy(load_config(path, env={}))
        pool = c.app_proxy.exchange.pool
        failing = asyncio.create_task(c.get("/tls/x"))  # takes the only slot, connecting
        assert await until(lambda: pool.in_use == 1)
        waiting = asyncio.create_task(c.get("/plain"))  # waits for the slot
        assert await until(lambda: len(pool._waiters) == 1)
        let_go.set()  # the handshake fails: the slot is free
        assert (await failing).status == 502
        resp = await waiting
        assert resp.status == 200, (resp.status, await resp.text())
    good.close()


async def test_a_tls_handshake_the_origin_cuts_says_so_in_the_warning(
        proxy: Any, caplog: Any) -> None:
    """What was wrong: an https origin that closes the connection during the TLS
    handshake (a port that is not TLS, an origin refusing the client's TLS versions by
    closing) raises a ConnectionResetError with no message, and Pool._connect wrote
    its cause as `exc.strerror or exc`: empty. What a user saw: the 502's WARNING line
    (and the error body) said "connect failed ()", nothing to go on. nginx says "peer
    closed connection in SSL handshake". Severity: low (diagnostics)."""
    let_go = asyncio.Event()
    let_go.set()  # closed at once, after the ClientHello
    async with held_tls_origin(let_go) as port:
        c = await proxy(f"https://127.0.0.1:{port}")
        resp = await c.get("/x")
        assert resp.status == 502
        lines = [r.getMessage() for r in caplog.records if r.name == "cacheproxy"
                 and "failed for GET /x" in r.getMessage()]
        assert lines and "()" not in lines[0], lines
        assert "TLS failure (peer closed connection in SSL handshake)" in lines[0], lines


async def test_a_reload_that_removes_a_route_closes_its_idle_upstream_connections(
        proxy: Any, tmp_path: Path) -> None:
    """What was wrong: a reload (SIGHUP) that removes a route left the pool's idle
    keep-alive connections to that route's upstream open until
    proxy.upstream_keepalive_timeout, which an operator may set to minutes (nginx's
    keepalive_timeout is 60 s). What a user saw: an origin taken out of the config
    (to be drained and stopped) still held connections from the proxy after the
    reload said "configuration reloaded", and its drain waited for them. nginx's
    reload ends the old workers' idle upstream connections at once. Severity: low."""
    from cacheproxy.proxy.server import reconfigure

    closed: list[int] = []
    held, holding = asyncio.Event(), asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if b"/old/held" in head:  # answered after the reload
                    holding.set()
                    await held.wait()
                writer.write(OK)
                await writer.drain()
        closed.append(1)  # the proxy closed its connection
        writer.close()

    leaving = await asyncio.start_server(serve, "127.0.0.1", 0)
    good, good_port = await _answering_origin()
    leaving_port = leaving.sockets[0].getsockname()[1]
    path = tmp_path / "cacheproxy.toml"
    base = f"""
[proxy]
upstream = "http://127.0.0.1:{good_port}"
upstream_keepalive_timeout = 300.0
"""
    path.write_text(base + f"""
[[routes]]
path_prefix = "/old/"
upstream = "http://127.0.0.1:{leaving_port}"
""")
    c = await proxy(load_config(path, env={}))
    in_flight = asyncio.create_task(c.get("/old/held"))  # a connection in use
    await holding.wait()
    assert (await c.get("/old/x")).status == 200  # leaves an idle connection to it
    assert (await c.get("/kept")).status == 200  # and one to the default upstream
    path.write_text(base)
    reconfigure(c.server.app, load_config(path, env={}))
    try:
        assert await until(lambda: len(closed) == 1), "the removed upstream's idle " \
            "connection stays open"
    finally:
        held.set()
    assert (await in_flight).status == 200  # a request in flight finishes as it began
    assert await until(lambda: len(closed) == 2), "the connection in use went idle"
    pool = c.app_proxy.exchange.pool
    assert any(o.port == good_port for o in pool._idle), "the kept upstream's went too"
    leaving.close()
    good.close()
