"""Failures are answers, not crashes: an unreachable origin is 502, a slow one 504, a body
broken off mid-way reaches the client as an incomplete message and is never stored, a
malformed request is 400, a response over the object-size limit streams through uncached,
and after each of these the proxy keeps serving (RFC 9110 §15.6.3, §15.6.5; RFC 9111 §3).

Faults come from tests/faults.py (a TCP relay between the proxy and a real aiohttp origin)
or from raw sockets; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

try:
    from tests.faults import FaultyRelay, faulty_relay
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from faults import FaultyRelay, faulty_relay

from support import cache_status

TIMEOUT = 5.0
BODY = bytes(range(256)) * 400  # 100 KiB
INCOMPLETE = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)


# -- helpers -------------------------------------------------------------------------------------


def origin_app(calls: list[str] | None = None) -> web.Application:
    """/fixed: 100 KiB with Content-Length; /chunked: the same in pieces, no Content-Length;
    /ok: a small response. All cacheable for a minute."""
    cacheable = {"Cache-Control": "max-age=60"}

    def note(request: web.Request) -> None:
        if calls is not None:
            calls.append(f"{request.method} {request.raw_path}")

    async def fixed(request: web.Request) -> web.Response:
        note(request)
        return web.Response(body=BODY, headers=cacheable)

    async def chunked(request: web.Request) -> web.StreamResponse:
        note(request)
        resp = web.StreamResponse(headers=cacheable)
        await resp.prepare(request)
        for i in range(0, len(BODY), 8192):
            await resp.write(BODY[i:i + 8192])
        await resp.write_eof()
        return resp

    async def ok(request: web.Request) -> web.Response:
        note(request)
        return web.Response(text="fine", headers=cacheable)

    app = web.Application()
    app.router.add_get("/fixed", fixed)
    app.router.add_get("/chunked", chunked)
    app.router.add_route("*", "/ok", ok)
    return app


@pytest.fixture
async def relay(origin) -> AsyncIterator[FaultyRelay]:
    server = await origin(origin_app())
    async with faulty_relay("127.0.0.1", server.port) as r:
        yield r


def relay_url(relay: FaultyRelay) -> str:
    return f"http://127.0.0.1:{relay.port}"


def entries(client: TestClient) -> int:
    return client.app_proxy.store.stats().entries  # type: ignore[attr-defined]


async def assert_error_answer(resp: aiohttp.ClientResponse, status: int) -> None:
    """A short plain-text answer of the proxy's own, marked like any other response."""
    assert resp.status == status
    text = await resp.text()
    assert resp.content_type == "text/plain"
    assert 0 < len(text) < 200
    assert str(status) in text
    assert "Traceback" not in text
    assert resp.headers["Via"] == "1.1 cacheproxy"
    assert cache_status(resp).startswith("cacheproxy")
    assert "stored" not in cache_status(resp)
    assert resp.headers["X-Cache"] == "MISS"


async def assert_still_serving(client: TestClient, path: str = "/ok") -> None:
    resp = await client.get(path, headers={"Cache-Control": "no-cache"})
    assert resp.status == 200
    assert await resp.read()


# -- 502: the upstream cannot be reached ---------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_refused_connection_is_502(relay, proxy, method):
    relay.mode = "refuse"
    client = await proxy(relay_url(relay))
    resp = await client.request(method, "/ok", data=b"x" if method == "POST" else None)
    await assert_error_answer(resp, 502)
    assert entries(client) == 0
    relay.mode = "pass"
    await assert_still_serving(client)


async def test_reset_on_connect_is_502(relay, proxy):
    relay.mode = "reset_on_connect"
    client = await proxy(relay_url(relay))
    for _ in range(3):  # and again: a failed connection is not kept in the pool
        await assert_error_answer(await client.get("/ok"), 502)
    relay.mode = "pass"
    await assert_still_serving(client)


async def test_origin_closing_without_an_answer_is_502(relay, proxy):
    relay.mode, relay.reset_after_bytes = "close_after", 0
    client = await proxy(relay_url(relay))
    await assert_error_answer(await client.get("/ok"), 502)
    relay.mode = "pass"
    await assert_still_serving(client)


@contextlib.asynccontextmanager
async def raw_origin(answer: bytes) -> AsyncIterator[str]:
    """An origin that reads a request head, writes `answer` and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("answer", [
    b"this is not http\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nBad Header Name: x\r\nContent-Length: 2\r\n\r\nhi",
])
async def test_invalid_upstream_response_is_502(proxy, answer):
    async with raw_origin(answer) as upstream:
        client = await proxy(upstream)
        await assert_error_answer(await client.get("/x"), 502)
        assert entries(client) == 0


# -- 504: the upstream is too slow ---------------------------------------------------------------


@contextlib.contextmanager
def full_backlog_listener() -> Iterator[int]:
    """A port whose accept queue is full: new connects hang in SYN_SENT, never refused."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in (*fillers, listener):
            sock.close()


async def test_connect_timeout_is_504(proxy):
    with full_backlog_listener() as port:
        client = await proxy(f"http://127.0.0.1:{port}", proxy={"connect_timeout": 0.3})
        resp = await asyncio.wait_for(client.get("/ok"), TIMEOUT)
        await assert_error_answer(resp, 504)


async def test_read_timeout_before_the_answer_is_504(relay, proxy):
    relay.mode = "blackhole"
    client = await proxy(relay_url(relay), proxy={"read_timeout": 0.3})
    resp = await asyncio.wait_for(client.get("/ok"), TIMEOUT)
    await assert_error_answer(resp, 504)
    resp = await asyncio.wait_for(client.post("/ok", data=b"abc"), TIMEOUT)
    await assert_error_answer(resp, 504)
    relay.mode = "pass"
    await assert_still_serving(client)


async def test_read_timeout_mid_body_gives_an_incomplete_response(origin, proxy):
    stalled = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60",
                                           "Content-Length": str(len(BODY))})
        await resp.prepare(request)
        await resp.write(BODY[:10_000])
        await stalled.wait()
        return resp

    app = origin_app()
    app.router.add_get("/stall", stall)
    client = await proxy(await origin(app), proxy={"read_timeout": 0.3})
    try:
        resp = await asyncio.wait_for(client.get("/stall"), TIMEOUT)
        assert resp.status == 200
        with pytest.raises(INCOMPLETE):
            await asyncio.wait_for(resp.read(), TIMEOUT)
        assert entries(client) == 0
        await assert_still_serving(client)
    finally:
        stalled.set()


# -- a body broken off mid-way -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reset_after", "close_after"])
@pytest.mark.parametrize("path", ["/fixed", "/chunked"])
async def test_broken_body_is_incomplete_and_not_stored(relay, proxy, mode, path):
    relay.mode, relay.reset_after_bytes = mode, 20_000  # past the head, well before the end
    client = await proxy(relay_url(relay))
    with pytest.raises(INCOMPLETE):
        resp = await asyncio.wait_for(client.get(path), TIMEOUT)
        assert resp.status == 200
        body = await asyncio.wait_for(resp.read(), TIMEOUT)
        pytest.fail(f"a {len(body)}-byte body was delivered as if complete")
    assert entries(client) == 0

    relay.mode = "pass"
    again = await client.get(path)
    assert again.headers["X-Cache"] == "MISS"
    assert "fwd=uri-miss" in cache_status(again)
    assert await again.read() == BODY
    assert entries(client) == 1  # a complete body is stored, so the broken one was judged
    third = await client.get(path)
    assert third.headers["X-Cache"] == "HIT"
    assert await third.read() == BODY


async def test_client_going_away_mid_body_stores_the_whole_body_or_nothing(origin, proxy):
    """The client leaves mid-body: the response being stored is still read to its end
    and stored whole (those collapsed behind it wait for it), never what the client got
    of it."""
    release, finished = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        await resp.prepare(request)
        try:
            await resp.write(BODY[:1000])
            await asyncio.wait_for(release.wait(), TIMEOUT)
            for i in range(1000, len(BODY), 1000):
                await resp.write(BODY[i:i + 1000])
                await asyncio.sleep(0)
            await resp.write_eof()
        finally:
            finished.set()
        return resp

    app = origin_app()
    app.router.add_get("/slow", slow)
    client = await proxy(await origin(app))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: site.test\r\n\r\n")
    await writer.drain()
    assert b"200" in await asyncio.wait_for(reader.read(200), TIMEOUT)
    writer.transport.abort()
    release.set()
    await asyncio.wait_for(finished.wait(), TIMEOUT)
    await asyncio.sleep(0.05)
    assert entries(client) == 1
    stored = await client.get("/slow", headers={"Host": "site.test"})
    assert stored.headers["X-Cache"] == "HIT" and await stored.read() == BODY
    await assert_still_serving(client)


# -- malformed requests are 400 ------------------------------------------------------------------


@pytest.mark.parametrize("head", [
    pytest.param("POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n",
                 id="conflicting-content-length"),
    pytest.param("POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                 "Transfer-Encoding: chunked\r\n", id="content-length-and-chunked"),
    pytest.param("GET /ok HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n", id="obs-fold"),
    pytest.param("GET /ok HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n", id="space-in-name"),
    pytest.param("GET /ok HTTP/1.1\r\nHost: a\r\nX(y): x\r\n", id="separator-in-name"),
    pytest.param("GET /ok HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n", id="negative-length"),
    pytest.param("GET /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n",
                 id="transfer-coding-not-chunked"),
])
async def test_malformed_request_is_400_and_never_forwarded(origin, proxy, head):
    calls: list[str] = []
    client = await proxy(await origin(origin_app(calls)))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head.encode() + b"\r\nhello")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"400", answer[:200]
    assert b"Traceback" not in answer
    assert calls == []
    await assert_still_serving(client)
    assert calls == ["GET /ok"]


# -- responses over the object-size limit --------------------------------------------------------

LIMIT = {"max_object_bytes": 65536}
MIB = bytes(range(256)) * 4096


def big_app(calls: list[str]) -> web.Application:
    async def announced(request: web.Request) -> web.Response:
        calls.append("announced")
        return web.Response(body=MIB, headers={"Cache-Control": "max-age=60"})

    async def growing(request: web.Request) -> web.StreamResponse:
        calls.append("growing")
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        await resp.prepare(request)
        for i in range(0, len(MIB), 16384):
            await resp.write(MIB[i:i + 16384])
        await resp.write_eof()
        return resp

    async def small(request: web.Request) -> web.Response:
        calls.append("small")
        return web.Response(body=MIB[:60_000], headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/announced", announced)
    app.router.add_get("/growing", growing)
    app.router.add_get("/small", small)
    return app


async def test_response_announced_too_big_streams_through_uncached(origin, proxy):
    calls: list[str] = []
    client = await proxy(await origin(big_app(calls)), cache=LIMIT)
    for _ in range(2):
        resp = await client.get("/announced")
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(MIB))
        assert await resp.read() == MIB
        assert resp.headers["X-Cache"] == "MISS"
        status = cache_status(resp)
        assert "detail=too-big" in status or "stored" not in status
        assert "stored" not in status
        assert entries(client) == 0
    assert calls == ["announced", "announced"]


async def test_response_growing_past_the_limit_is_not_stored(origin, proxy):
    calls: list[str] = []
    client = await proxy(await origin(big_app(calls)), cache=LIMIT)
    for _ in range(2):
        resp = await client.get("/growing")
        assert resp.status == 200
        assert "Content-Length" not in resp.headers
        assert await resp.read() == MIB
        assert resp.headers["X-Cache"] == "MISS"
        assert entries(client) == 0
    assert calls == ["growing", "growing"]


async def test_response_within_the_limit_is_stored(origin, proxy):
    calls: list[str] = []
    client = await proxy(await origin(big_app(calls)), cache=LIMIT)
    first = await client.get("/small")
    assert await first.read() == MIB[:60_000]
    assert "stored" in cache_status(first)
    second = await client.get("/small")
    assert second.headers["X-Cache"] == "HIT"
    assert await second.read() == MIB[:60_000]
    assert entries(client) == 1
    assert calls == ["small"]


async def test_nothing_in_any_error_body_is_a_traceback(relay, proxy):
    client = await proxy(relay_url(relay), proxy={"read_timeout": 0.3})
    for mode in ("refuse", "reset_on_connect", "blackhole"):
        relay.mode = mode
        resp = await asyncio.wait_for(client.get("/ok", headers={"Cache-Control": "no-cache"}),
                                      TIMEOUT)
        assert resp.status in (502, 504)
        assert "Traceback" not in await resp.text()
    relay.mode = "pass"
    await assert_still_serving(client)
