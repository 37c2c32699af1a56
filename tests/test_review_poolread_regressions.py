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

from aiohttp import web
from support import https_site, until
from test_upstream_pool import raw_origin, url

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


async def test_the_one_retry_goes_on_a_new_connection_not_another_stale_idle_one(
        proxy: Any) -> None:
    """What was wrong: a GET that failed on a reused connection before any byte of the
    answer (the origin closed it as the request went out) is sent once more "on a fresh
    connection" (pool.py's promise), but Exchange.send took the retry's connection as
    any other: another idle one from the pool, when there was one. What a user saw:
    after an origin (or a NAT, a load balancer) dropped the pooled connections, the
    first request got a 502 "closed before answering" although the origin was up: its
    retry failed on the next dead connection. nginx counts no try against a failure on a
    cached connection; RFC 9110 §9.2.2 allows the retry. Severity: medium (a 502 per
    origin restart or idle drop, per pooled connection pair)."""
    both = asyncio.Event()

    async def script(head: bytes, index: int) -> bytes | None:
        if index:
            return None  # a reused connection: closed as it is used, unanswered
        if origin.connections >= 2:
            both.set()
        await both.wait()  # /warm twice at once: two connections, both pooled after
        return OK

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        warm = await asyncio.gather(c.get("/warm/1"), c.get("/warm/2"))
        assert [r.status for r in warm] == [200, 200] and origin.connections == 2
        resp = await c.get("/x")
        assert resp.status == 200, (resp.status, await resp.text())
        assert origin.connections == 3  # the retry's own


async def test_a_client_leaving_after_its_answer_does_not_fail_another_request_on_the_connection(
        proxy: Any, redis_server: Any) -> None:
    """What was wrong: Exchange.relay tells the upstream connection when its client
    leaves (watch_gone -> resp.interrupt: a ClientGone into whatever waits on that
    connection), and stopped telling it only when _relay returned; but _relay gives the
    connection back to the pool (resp.release) before storing the body (store.put, a
    Redis round trip). A client leaving during that put threw its ClientGone into the
    exchange of another request that had taken the pooled connection meanwhile. What a
    user saw: with the Redis store, one client closing its connection just after its
    cacheable answer made another client's request, on another connection, hang
    unanswered until its connection's idle timeout (75 s) and then lose its connection
    (or, reading a body, have it cut). nginx and Varnish tie a client's
    abort to its own upstream request only. Severity: high (one client's disconnect
    breaks another's request)."""
    b_arrived, b_go = asyncio.Event(), asyncio.Event()

    async def script(head: bytes, index: int) -> bytes | None:
        if b"/b" in head:
            b_arrived.set()
            await b_go.wait()
            return OK
        return b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nhi"

    redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", redis_server.port)

    async def unpause() -> None:
        redis_writer.write(b"CLIENT UNPAUSE\r\n")
        assert (await redis_reader.readline()).startswith(b"+OK")
    async with raw_origin(script) as origin:
        c = await proxy(url(origin), proxy={"max_connections": 1},
                        cache={"store": "redis", "redis_url": redis_server.url,
                               "redis_timeout": 10.0})
        listener = c.server.runner.server
        pool = c.app_proxy.exchange.pool
        # The store's write waits (Redis holds writes): A's relay sits in store.put.
        redis_writer.write(b"CLIENT PAUSE 10000 WRITE\r\n")
        assert (await redis_reader.readline()).startswith(b"+OK")
        try:
            a_reader, a_writer = await asyncio.open_connection("127.0.0.1", c.server.port)
            a_writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await a_reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and await a_reader.readexactly(2) == b"hi"
            assert await until(lambda: bool(pool._idle))  # released, its body being stored
            b = asyncio.create_task(c.post("/b", data=b"x"))  # takes that connection
            await b_arrived.wait()
            assert origin.connections == 1
            a_writer.close()  # A leaves while its answer is being stored
            assert await until(lambda: len(listener.connections) == 1)
            await unpause()  # (B's POST invalidates /b: a write)
            b_go.set()
            try:  # (before the fix: no answer until the connection's idle timeout, 75 s)
                async with asyncio.timeout(10):
                    resp = await b
            except TimeoutError:
                raise AssertionError("B's request was dropped for A's leaving") from None
            assert resp.status == 200 and await resp.read() == b"hi"
        finally:
            b_go.set()
            await unpause()
            redis_writer.close()


async def test_an_interim_answer_saying_connection_close_still_lets_the_final_one_through(
        proxy: Any) -> None:
    """What was wrong: an origin's 103 Early Hints carrying `Connection: close` (the
    connection ends after the final answer, RFC 9110 §7.6.1) made llhttp refuse the final
    answer that follows ("Data after `Connection: close`"). What a user saw: a 502 "bad
    framing" for an answer the origin sent whole. nginx reads a 1xx's fields and then the
    final answer. Severity: low (an unusual origin; the client gets a 502, no wrong
    content)."""
    answer = (b"HTTP/1.1 103 Early Hints\r\nConnection: close\r\n"
              b"Link: </s.css>; rel=preload\r\n\r\n" + OK)

    async def script(head: bytes, index: int) -> bytes:
        return answer

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        resp = await c.get("/hints")
        assert resp.status == 200 and await resp.read() == b"hi"


async def test_a_connect_after_a_wait_for_a_free_connection_gets_all_of_connect_timeout(
        proxy: Any, tmp_path: Path) -> None:
    """What was wrong: Pool.acquire ran the wait for a free connection (all
    proxy.max_connections in use) and the connect that follows it under one
    connect_timeout: a request that waited most of it for a slot had only what was left
    to connect (a TLS handshake, a lookup). What a user saw: under a full pool, 504
    "connect timeout" from an origin that connects well within proxy.connect_timeout
    ("seconds to connect to the origin before 504"), and a log blaming the origin for
    the pool's queue. nginx's proxy_connect_timeout bounds the connect alone. Now the
    wait has connect_timeout (then 503) and the connect its own. Severity: low-medium.
    (Timing: the wait takes 0.6 of connect_timeout, the connect 0.6 of it.)"""
    held, hello_held = asyncio.Event(), asyncio.Event()
    a_go, a_arrived = asyncio.Event(), asyncio.Event()

    async def a_origin(head: bytes, index: int) -> bytes:
        a_arrived.set()
        await a_go.wait()
        return OK

    async def site(request: web.Request) -> web.Response:
        return web.Response(text="tls", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/tls/x", site)
    secure, site_ca = await https_site(app, tmp_path)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """In front of the https site: the ClientHello waits for `held` (a slow connect)."""
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", secure.port)
        hello_held.set()
        await held.wait()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    front = await asyncio.start_server(relay, "127.0.0.1", 0)
    timeout = 1.0
    async with raw_origin(a_origin) as origin:
        path = tmp_path / "cacheproxy.toml"
        path.write_text(f"""
[proxy]
upstream = "{url(origin)}"
max_connections = 1
connect_timeout = {timeout}
upstream_ca_file = "{site_ca.cert_path}"

[[routes]]
path_prefix = "/tls/"
upstream = "https://localhost:{front.sockets[0].getsockname()[1]}"
""")
        c = await proxy(load_config(path, env={}))
        pool = c.app_proxy.exchange.pool
        a = asyncio.create_task(c.get("/a"))  # holds the only connection
        await a_arrived.wait()
        b = asyncio.create_task(c.get("/tls/x"))  # waits for it
        assert await until(lambda: len(pool._waiters) == 1)
        await asyncio.sleep(0.6 * timeout)  # most of connect_timeout spent waiting
        a_go.set()
        assert (await a).status == 200  # the slot is free: b connects, slowly
        await hello_held.wait()
        await asyncio.sleep(0.6 * timeout)  # a handshake well within connect_timeout
        held.set()
        resp = await b
        assert resp.status == 200, (resp.status, await resp.text())
    front.close()
    await secure.close()


async def test_a_request_waiting_for_a_connection_is_not_overtaken_by_newer_ones() -> None:
    """What was wrong: with every proxy.max_connections connection in use, a request
    waits in Pool.acquire's queue; a connection given back wakes the first waiter, but
    a request that arrives before that waiter runs (the quick path's Pool.idle, or
    acquire's own first look, in the same loop turn as the release) takes the idle
    connection, and the waiter, finding none, queued again at the back. What a user saw:
    under a full pool, a request could be overtaken again and again by newer ones until
    connect_timeout, then 503, while the requests that came after it were served. nginx
    Plus's upstream queue, and Squid's, serve waiters first come, first served.
    Severity: low-medium (tail latency and 503s under a saturated pool)."""
    from cacheproxy.proxy.pool import Origin, Pool
    from cacheproxy.proxy.upstream import UpstreamError

    async with raw_origin(lambda head, index: _ok()) as origin:
        pool = Pool(1, 0.5, 30.0)
        o = Origin("http", "127.0.0.1", origin.port)

        async def exchange(conn: Any) -> None:
            await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, False, 1.0)
            while await conn.read_chunk(1.0):
                pass

        conn = await pool.acquire(o)
        await exchange(conn)
        waiter = asyncio.create_task(pool.acquire(o))  # the pool is full: it waits
        await until(lambda: len(pool._waiters) == 1)
        for _ in range(3):  # a release, and a newer request in the same loop turn
            pool.release(conn)
            newer = pool.idle(o)  # (the quick path's look, as a request is parsed)
            if newer is None:  # it waits its turn, behind the older one
                break
            await exchange(newer)  # overtaken: the waiter, woken, finds nothing
            conn = newer
            await asyncio.sleep(0)
        try:
            got = await waiter
            outcome = "served"
            pool.release(got)
        except UpstreamError as exc:
            outcome = f"{exc.status} {exc.reason}"
        pool.close()
        assert outcome == "served", outcome


async def _ok() -> bytes:
    return OK
