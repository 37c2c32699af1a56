"""The fault-injecting relay itself, against a real aiohttp origin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

try:
    from tests.faults import FaultyRelay, faulty_relay
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from faults import FaultyRelay, faulty_relay

BIG = bytes(range(256)) * 4096  # 1 MiB
SMALL = b"x" * 100_000


@pytest.fixture
async def relay(aiohttp_server) -> AsyncIterator[FaultyRelay]:
    app = web.Application()

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BIG)

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=SMALL)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app.router.add_get("/big", big)
    app.router.add_get("/small", small)
    app.router.add_get("/hello", hello)
    origin = await aiohttp_server(app)
    async with faulty_relay("127.0.0.1", origin.port) as r:
        yield r


def url(relay: FaultyRelay, path: str) -> str:
    return f"http://127.0.0.1:{relay.port}{path}"


async def test_pass_relays_big_body_intact(relay: FaultyRelay) -> None:
    async with aiohttp.ClientSession() as session, session.get(url(relay, "/big")) as resp:
        assert resp.status == 200
        assert await resp.read() == BIG


async def test_latency_delays_response(relay: FaultyRelay) -> None:
    relay.latency = 0.2
    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        async with session.get(url(relay, "/hello")) as resp:
            assert await resp.text() == "hello"
        assert time.monotonic() - start >= 0.2


async def test_reset_on_connect(relay: FaultyRelay) -> None:
    relay.mode = "reset_on_connect"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(url(relay, "/hello")) as resp:
                await resp.read()
    assert relay.connections >= 1


async def test_refuse_then_pass_relistens(relay: FaultyRelay) -> None:
    port = relay.port
    relay.mode = "refuse"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(url(relay, "/hello"))
        relay.mode = "pass"
        assert relay.port == port
        async with session.get(url(relay, "/hello")) as resp:
            assert await resp.text() == "hello"


async def test_blackhole_times_out(relay: FaultyRelay) -> None:
    relay.mode = "blackhole"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await session.get(url(relay, "/hello"))
        assert time.monotonic() - start >= 0.3


@pytest.mark.parametrize("mode", ["reset_after", "close_after"])
async def test_truncated_body(relay: FaultyRelay, mode: str) -> None:
    relay.mode = mode
    relay.reset_after_bytes = 1000
    async with aiohttp.ClientSession() as session, session.get(url(relay, "/big")) as resp:
        assert resp.status == 200
        assert resp.content_length == len(BIG)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_close_after_delivers_exactly_n_bytes(relay: FaultyRelay) -> None:
    relay.mode = "close_after"
    relay.reset_after_bytes = 1000
    async with aiohttp.ClientSession() as session, session.get(url(relay, "/big")) as resp:
        body = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                body += chunk
        assert 0 < len(body) < 1000  # the status line and headers took the rest
        assert BIG.startswith(body)


async def test_close_kills_live_connections(relay: FaultyRelay) -> None:
    relay.mode = "blackhole"
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(session.get(url(relay, "/hello")))
        while relay.connections == 0:
            await asyncio.sleep(0.01)
        await relay.close()
        with pytest.raises(aiohttp.ClientConnectionError):
            await request


async def test_latency_applies_to_live_connection(relay: FaultyRelay) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(url(relay, "/hello")) as resp:
            await resp.read()
        relay.latency = 0.2
        start = time.monotonic()
        async with session.get(url(relay, "/hello")) as resp:
            await resp.read()
        assert time.monotonic() - start >= 0.2
    assert relay.connections == 1


async def test_throttle(relay: FaultyRelay) -> None:
    relay.throttle_bps = 200_000
    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        async with session.get(url(relay, "/small")) as resp:
            assert await resp.read() == SMALL
        assert time.monotonic() - start >= 0.4


async def test_connections_counter(relay: FaultyRelay) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(url(relay, "/hello")) as resp:
                await resp.read()
    assert relay.connections == 1  # keep-alive: one pooled connection
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(2):
            async with session.get(url(relay, "/hello")) as resp:
                await resp.read()
    assert relay.connections == 3
