"""Defects a second reader found in the new flow, the upstream pool and the fill budget
(issue 9, issue 10); each test failed before its fix."""

from __future__ import annotations

import asyncio
import socket
import struct

from aiohttp import web
from support import cache_status, until
from test_upstream_pool import raw_origin, url


class Scripted:
    """An origin that answers each request with answer(head, n) (bytes, or a list of
    bytes/float pauses) and then closes the connection (close=True) or resets it
    (reset=True)."""

    def __init__(self, answer, *, reset: bool = False, keep: bool = False) -> None:
        self.answer, self.reset, self.keep = answer, reset, keep
        self.requests: list[bytes] = []
        self.port = 0

    async def serve(self, reader, writer) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                parts = self.answer(head, len(self.requests) - 1)
                for part in parts if isinstance(parts, list) else [parts]:
                    if isinstance(part, float):
                        await writer.drain()
                        await asyncio.sleep(part)
                    else:
                        writer.write(part)
                await writer.drain()
                if not self.keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if self.reset:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def test_a_fill_that_breaks_off_in_consume_gives_back_its_budget(proxy):
    """exchange.consume (the 304-to-client path and the background refresh) keeps the
    budget of a fill whose body broke off: held never comes back to 0, and after
    fill_buffer_bytes of such breaks the cache stores nothing any more."""
    def script(head: bytes, index: int) -> bytes:
        # Announces 1000 bytes, sends 400, then closes: the body broke off.
        return (b'HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nETag: "v1"\r\n'
                b"Content-Length: 1000\r\n\r\n" + b"x" * 400)

    async with Scripted(script) as origin:
        c = await proxy(origin.url)
        budget = c.app_proxy.exchange.budget
        # The client's own validator matches: 304 once the body is stored (consume).
        resp = await c.get("/r", headers={"If-None-Match": '"v1"'})
        await resp.read()
        assert await until(lambda: len(origin.requests) >= 1)
        await asyncio.sleep(0.2)
        assert budget.held == 0, f"{budget.held} bytes of the budget never given back"


async def test_a_close_delimited_body_cut_by_a_reset_is_not_stored(proxy):
    """RFC 9112 §6.3 (8): a body without Content-Length or chunked runs to the close;
    a connection *reset* is no close: the body is incomplete, and RFC 9111 §3.3 a cache
    MUST NOT store an incomplete response. pool.Connection.connection_lost marks the
    message complete whatever exc says."""
    def script(head: bytes, index: int) -> list:
        if index == 0 and not head.startswith(b"GET /again"):
            return [b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n\r\n" + b"a" * 100,
                    0.2]
        return [b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 4\r\n\r\n"
                b"full"]

    async with Scripted(script, reset=True) as origin:
        c = await proxy(origin.url)
        first = await c.get("/cut")
        try:
            body = await first.read()
        except Exception as exc:  # the proxy ending the message abnormally is right
            body = repr(exc).encode()
        second = await c.get("/cut")
        got = await second.read()
        assert second.headers["X-Cache"] != "HIT", (
            f"truncated body stored and replayed: {got[:20]!r}... ({len(got)} bytes); "
            f"first client got {len(body)} bytes as a complete message")


async def test_a_client_with_credentials_cannot_evict_the_shared_entry(proxy, origin):
    """Issue 9 defect 1 / RFC 9111 §5.2.1.5, §3.5: a request's own circumstances never
    remove what is stored for others. An origin answers an authenticated user with a
    personal page (private): that says nothing about the anonymous page stored for
    everyone, yet answered() evicts the key (verdict "private" is not by_request)."""
    hits = {"n": 0}

    async def page(request: web.Request) -> web.Response:
        hits["n"] += 1
        if "Authorization" in request.headers:
            return web.Response(text="hello alice",
                                headers={"Cache-Control": "private", "ETag": '"alice"'})
        return web.Response(text="hello anonymous",
                            headers={"Cache-Control": "max-age=600", "ETag": '"anon"'})

    app = web.Application()
    app.router.add_get("/page", page)
    c = await proxy(await origin(app))
    assert await (await c.get("/page")).text() == "hello anonymous"
    hit = await c.get("/page")
    assert hit.headers["X-Cache"] == "HIT"
    # Any client can send this (a browser reload with credentials).
    mine = await c.get("/page", headers={"Authorization": "Basic YWxpY2U6cA==",
                                         "Cache-Control": "max-age=0"})
    assert await mine.text() == "hello alice"
    after = await c.get("/page")
    assert after.headers["X-Cache"] == "HIT", (
        f"the shared entry was evicted by one user's request: {cache_status(after)}")


async def test_an_upload_slower_than_read_timeout_is_not_a_504(proxy, origin):
    """proxy.read_timeout is how long the origin may be silent (nginx's proxy_read_timeout,
    aiohttp's sock_read). Connection.send starts the clock for the answer's head when the
    request head is written, so a body the client sends for longer than read_timeout
    (an upload of 30 s by default) ends in 504 though the origin answers at once."""
    async def upload(request: web.Request) -> web.Response:
        data = await request.read()
        return web.Response(text=f"got {len(data)}", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_post("/up", upload)
    c = await proxy(await origin(app), proxy={"read_timeout": 0.5})

    async def slow_body():
        for _ in range(6):
            yield b"x" * 1000
            await asyncio.sleep(0.25)

    resp = await c.post("/up", data=slow_body())
    assert resp.status == 200, (resp.status, await resp.text())
    assert await resp.text() == "got 6000"


async def test_a_timed_out_request_on_a_reused_connection_is_not_sent_twice(proxy, caplog):
    """The retry rule is for the idle-close race (the origin closed the pooled connection
    as the request went out). A read timeout on a reused connection is no such race: the
    origin has the request and is slow. Exchange.send sends it again anyway, so the client
    waits 2 x read_timeout for its 504 and a slow origin gets every request twice."""
    import time

    async def script(head: bytes, index: int) -> bytes | None:
        if b"/slow" in head:
            await asyncio.sleep(2.0)
        return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nhi"

    async with raw_origin(script) as origin:
        c = await proxy(url(origin), proxy={"read_timeout": 0.5})
        assert (await c.get("/warm")).status == 200  # leaves a pooled connection
        started = time.monotonic()
        resp = await c.get("/slow")
        took = time.monotonic() - started
        assert resp.status == 504
        slow_requests = origin.requests - 1
        assert slow_requests == 1 and took < 0.9, (
            f"/slow sent {slow_requests} times, 504 after {took:.2f}s (read_timeout 0.5)")


async def test_a_response_whose_transfer_coding_is_not_chunked_runs_to_the_close(proxy):
    """RFC 9112 §6.3 (4): a response with Transfer-Encoding whose final coding is not
    chunked is delimited by the close. pool.Connection only reads to the close when the
    answer has neither Content-Length nor Transfer-Encoding, so this one is taken as
    broken off."""
    def script(head: bytes, index: int) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
                b"Transfer-Encoding: identity-ish\r\n\r\nwhole body")

    async with Scripted(script) as origin:
        c = await proxy(origin.url)
        resp = await c.get("/te")
        assert resp.status == 200
        assert await resp.read() == b"whole body"


async def test_a_fill_that_broke_off_before_the_304_is_not_reported_stored(proxy):
    """Issue 9 defect 7's rule (stored only when it happened): on the 304-to-client path a
    body that breaks off ends in 502, and that 502's Cache-Status (and the log line)
    still says "stored", which note_answered set before consume() raised."""
    def script(head: bytes, index: int) -> bytes:
        return (b'HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nETag: "v1"\r\n'
                b"Content-Length: 1000\r\n\r\n" + b"x" * 400)

    async with Scripted(script) as origin:
        c = await proxy(origin.url)
        resp = await c.get("/r", headers={"If-None-Match": '"v1"'})
        assert resp.status == 502
        assert "stored" not in cache_status(resp), cache_status(resp)


async def test_broken_fills_leak_the_budget_until_nothing_is_stored(proxy):
    """The consequence of the leak above: after fill_buffer_bytes of broken-off fills on
    the 304 path, every later fill is refused (detail=fill-budget) for the life of the
    process. Here 3 x 300 bytes leak against a 1000-byte budget; then a 200-byte
    cacheable answer is never stored although no fill is in flight."""
    def script(head: bytes, index: int) -> bytes:
        if b"/ok" in head:
            return (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
                    b"Content-Length: 200\r\n\r\n" + b"0" * 200)
        # chunked, so nothing announced; the body breaks off after 300 bytes
        return (b'HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nETag: "v1"\r\n'
                b"Transfer-Encoding: chunked\r\n\r\n12c\r\n" + b"x" * 300 + b"\r\n")

    async with Scripted(script) as origin:
        c = await proxy(origin.url, cache={"fill_buffer_bytes": 1000})
        for n in range(3):
            await (await c.get(f"/r{n}", headers={"If-None-Match": '"v1"'})).read()
        first = await c.get("/ok")  # nothing else is in flight now
        assert await first.read() == b"0" * 200
        again = await c.get("/ok")
        assert again.headers["X-Cache"] == "HIT", cache_status(first)


async def test_an_upstream_url_with_userinfo_still_authenticates(proxy, origin):
    """Lost in the pool rewrite: with aiohttp's ClientSession, proxy.upstream =
    "http://user:pass@host" sent "Authorization: Basic ..." (aiohttp takes BasicAuth from
    the URL). Config still accepts the URL; Exchange.send now drops the userinfo silently
    and the origin answers 401."""
    async def guarded(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Basic dXNlcjpwYXNz":
            return web.Response(status=401, text="who are you")
        return web.Response(text="secret", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/s", guarded)
    up = await origin(app)
    c = await proxy(f"http://user:pass@127.0.0.1:{up.port}")
    resp = await c.get("/s")
    assert resp.status == 200, (resp.status, await resp.text())


async def test_an_origin_ending_lines_with_bare_lf_is_still_answered(proxy):
    """RFC 9112 §2.2: a recipient MAY take a bare LF as a line end. aiohttp's response
    parser did (lenient on responses); httptools' strict llhttp refuses, so origins that
    worked through the old client are now 502."""
    def script(head: bytes, index: int) -> bytes:
        return b"HTTP/1.1 200 OK\nCache-Control: no-store\nContent-Length: 2\n\nhi"

    async with Scripted(script) as origin:
        c = await proxy(origin.url)
        resp = await c.get("/lf")
        assert resp.status == 200, (resp.status, await resp.text())


async def test_an_endless_header_field_is_refused_at_the_bound(proxy):
    """pool._MAX_FIELD_BYTES ("the most an answer's header section may hold") is checked
    in on_header, which httptools calls only once a field is complete; until then it
    accumulates the name/value (bytes +=, quadratic) without bound. An origin streaming
    one endless field is held in memory until read_timeout, then 504."""
    import time

    def script(head: bytes, index: int) -> list:
        return [b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (8 * 1024 * 1024), 3.0]

    async with Scripted(script) as origin:
        c = await proxy(origin.url, proxy={"read_timeout": 2.0})
        started = time.monotonic()
        resp = await c.get("/big-field")
        took = time.monotonic() - started
        assert resp.status == 502 and took < 1.0, (resp.status, f"{took:.2f}s")


async def test_one_client_that_does_not_read_holds_the_fill_budget_only_until_send_timeout(
        proxy, origin):
    """A fill advances only as fast as its client reads. One client that asks for a large
    cacheable miss and never reads holds its fill's bytes until proxy.send_timeout (nginx's
    send_timeout) closes it; then the budget is free and other misses are stored again."""
    blob = b"x" * (6 * 1024 * 1024)

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=blob, headers={"Cache-Control": "max-age=600"})

    app = web.Application()
    app.router.add_get("/a", big)
    app.router.add_get("/b", big)
    c = await proxy(await origin(app), cache={"fill_buffer_bytes": 8 * 1024 * 1024},
                    proxy={"send_timeout": 1.0})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", c.server.port))
    await asyncio.get_running_loop().sock_sendall(sock, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    budget = c.app_proxy.exchange.budget
    try:
        assert await until(lambda: budget.held > 0)  # the fill of /a is stuck behind it
        assert await until(lambda: budget.held == 0, timeout=5.0)  # closed at send_timeout
        first = await c.get("/b")
        assert len(await first.read()) == len(blob)
        second = await c.get("/b")
        assert second.headers["X-Cache"] == "HIT", cache_status(first)
    finally:
        sock.close()


async def test_making_room_for_one_connection_closes_one_idle_connection_not_all():
    """Pool.acquire at the limit: "an idle connection to another origin makes room". But
    in_use counts _open, which shrinks only in connection_lost (a later loop turn), so the
    `continue` finds the pool still full and _close_an_idle_one() runs again: every idle
    connection of every other origin is closed to make room for one."""
    from cacheproxy.proxy.pool import Origin, Pool

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    async with Scripted(lambda h, i: ok, keep=True) as a, \
            Scripted(lambda h, i: ok, keep=True) as b:
        pool = Pool(4, 1.0, 30.0)
        oa, ob = (Origin("http", "127.0.0.1", s.port) for s in (a, b))

        async def exchange(origin: Origin):
            conn = await pool.acquire(origin)
            await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, False, 1.0)
            while await conn.read_chunk(1.0):
                pass
            return conn

        conns = [await pool.acquire(ob) for _ in range(3)]
        for conn in conns:  # three exchanges at once, then all three idle
            await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, False, 1.0)
        for conn in conns:
            while await conn.read_chunk(1.0):
                pass
            pool.release(conn)
        busy = await exchange(oa)  # 4 open: 3 idle to b, 1 busy to a
        await exchange(oa)  # needs room for one more
        await asyncio.sleep(0.1)
        idle_b = len(pool._idle.get(ob, []))
        pool.release(busy)
        pool.close()
        assert idle_b == 2, f"{3 - idle_b} idle connections to b closed to make room for one"


async def test_a_wake_given_to_a_waiter_that_leaves_is_passed_on():
    """Pool._wake_one hands a freed connection to one waiter. If that waiter's acquire
    ends before it runs (its connect_timeout fires in the same loop turn, or its request
    is cancelled), acquire's finally drops the wake: the next waiter sleeps beside an
    idle connection until its own deadline, then 503."""
    from cacheproxy.proxy.pool import Origin, Pool
    from cacheproxy.proxy.upstream import UpstreamError

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    async with Scripted(lambda h, i: ok, keep=True) as a:
        pool = Pool(1, 1.0, 30.0)
        oa = Origin("http", "127.0.0.1", a.port)
        conn = await pool.acquire(oa)
        await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, False, 1.0)
        while await conn.read_chunk(1.0):
            pass
        first = asyncio.create_task(pool.acquire(oa))
        second = asyncio.create_task(pool.acquire(oa))
        await asyncio.sleep(0.05)  # both wait: the pool is full
        pool.release(conn)  # idle now; wakes the first waiter
        first.cancel()  # which leaves in the same turn
        try:
            got = await second
            outcome = "got the idle connection"
            pool.release(got)
        except UpstreamError as exc:
            outcome = f"{exc.status} {exc.reason}"
        pool.close()
        assert outcome == "got the idle connection", outcome


async def test_a_post_without_a_body_still_says_content_length_0(proxy):
    """Lost in the pool rewrite: aiohttp's client sent "Content-Length: 0" for a POST
    without a body (RFC 9110 §8.6: a POST normally carries Content-Length even when 0;
    HTTP.sys/IIS and some frameworks answer 411 without it). Exchange.send sends
    neither Content-Length nor Transfer-Encoding."""
    heads: list[bytes] = []

    def script(head: bytes, index: int) -> bytes:
        heads.append(head)
        return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nhi"

    async with Scripted(script) as origin:
        c = await proxy(origin.url)
        reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
        writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
        assert b"\r\nContent-Length: 0\r\n" in heads[0], heads[0]
