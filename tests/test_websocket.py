"""WebSocket through the proxy (RFC 6455 §4, RFC 9110 §7.8): the opening handshake goes to
the origin with its Upgrade, the origin's 101 makes the connection a tunnel, and nothing
else does. Real aiohttp origins and clients (and Chromium) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web
from browser import chromium
from processes import clean_env, start_serve, stop
from support import read_json_log

from cacheproxy.demo.origin import make_demo_app
from cacheproxy.http.upgrade import accept_value, refused_switch, websocket_key

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def handshake(path: str = "/ws", *extra: str, key: str = KEY) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: example", "Connection: Upgrade",
             "Upgrade: websocket", "Sec-WebSocket-Version: 13",
             f"Sec-WebSocket-Key: {key}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def echo_app(seen: list[str] | None = None) -> web.Application:
    """/ws echoes each message ("echo:" before text); /page is a page; any other path
    answers 200 with what it was asked."""
    async def ws(request: web.Request) -> web.StreamResponse:
        if seen is not None:
            seen.append(f"{request.method} {request.path} upgrade={request.headers.get('Upgrade')}")
        w = web.WebSocketResponse()
        await w.prepare(request)
        async for m in w:
            if m.type == aiohttp.WSMsgType.TEXT:
                await w.send_str("echo:" + m.data)
            elif m.type == aiohttp.WSMsgType.BINARY:
                await w.send_bytes(m.data)
        return w

    async def other(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append(f"{request.method} {request.path} upgrade={request.headers.get('Upgrade')}")
        return web.Response(text=f"{request.method} {request.path}",
                            headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", other)
    return app


@contextlib.asynccontextmanager
async def scripted_origin(answer: Callable[[bytes], bytes], then_echo: bool = False
                          ) -> AsyncIterator[tuple[int, list[bytes]]]:
    """An origin that answers each request head with answer(head) as bytes, and keeps
    what it reads (heads, and after them every byte). then_echo: after the first answer,
    echo every byte back (a tunnel's far end)."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            received.append(head)
            writer.write(answer(head))
            await writer.drain()
            while data := await reader.read(65536):
                received.append(data)
                if then_echo:
                    writer.write(data)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        server.close()


def switching(head: bytes, accept: str | None = None, upgrade: str = "websocket",
              extra: str = "") -> bytes:
    key = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {upgrade}\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept or accept_value(key)}\r\n"
            f"{extra}\r\n").encode()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        while await asyncio.wait_for(reader.read(65536), seconds):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def browser_echo(tab: Any, url: str) -> str:
    """What a page's WebSocket to url gets back for "from chromium" (Playwright's tab)."""
    return await tab.evaluate("""url => new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        ws.onopen = () => ws.send("from chromium");
        ws.onmessage = e => { resolve(e.data); ws.close(); };
        ws.onerror = () => reject(new Error("websocket error"));
        setTimeout(() => reject(new Error("timeout")), 5000);
    })""", url)


# -- the rules, sans I/O ------------------------------------------------------------------

def test_the_accept_value_is_rfc_6455s_example() -> None:
    assert accept_value(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3


def test_which_requests_are_websocket_handshakes() -> None:
    fields = {"Upgrade": "websocket", "Connection": "keep-alive, Upgrade"}
    assert websocket_key("GET", (1, 1), fields, [KEY], False) == KEY
    assert websocket_key("GET", (1, 1), {**fields, "Upgrade": "WebSocket"}, [KEY], False) == KEY
    assert websocket_key("POST", (1, 1), fields, [KEY], False) is None  # §4.1: a GET
    assert websocket_key("GET", (1, 0), fields, [KEY], False) is None  # RFC 9110 §7.8
    assert websocket_key("GET", (1, 1), fields, [KEY], True) is None
    assert websocket_key("GET", (1, 1), fields, [], False) is None
    assert websocket_key("GET", (1, 1), fields, [KEY, KEY], False) is None
    assert websocket_key("GET", (1, 1), {**fields, "Connection": "close"}, [KEY], False) is None
    assert websocket_key("GET", (1, 1), {**fields, "Upgrade": "h2c"}, [KEY], False) is None


def test_which_101_answers_are_switched_to() -> None:
    good = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_value(KEY))]
    assert refused_switch(KEY, good) is None
    assert refused_switch(KEY, [*good[:2], ("Sec-WebSocket-Accept", "x")]) is not None
    assert refused_switch(KEY, good[1:]) is not None  # no Upgrade
    assert refused_switch(KEY, [("Upgrade", "h2c"), *good[1:]]) is not None
    assert refused_switch(KEY, [good[0], good[2]]) is not None  # no upgrade option
    assert refused_switch(KEY, [*good, ("Sec-WebSocket-Accept", accept_value(KEY))]) \
        is not None  # two answers to one key


# -- through the proxy ------------------------------------------------------------------

async def test_a_websocket_carries_messages_both_ways_and_is_logged_once(
        proxy: Any, origin: Any, tmp_path: Any) -> None:
    """Text, binary, and a 1 MiB message each way (flow control both ways: a message the
    size of many socket buffers arrives whole); the client's 101 names the protocol and
    this proxy (Via, RFC 9110 §7.6.3); one log line at the close: 101, TUNNEL, the bytes
    each way."""
    client = await proxy(await origin(echo_app()), log={"path": str(tmp_path / "r.log")})
    big = os.urandom(1 << 20)
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(client.make_url("/ws")) as ws:
        response = ws._response  # (the handshake's answer)
        assert response.status == 101
        assert response.headers["Upgrade"].lower() == "websocket"
        assert response.headers["Connection"].lower() == "upgrade"
        assert "cacheproxy" in response.headers["Via"]
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "echo:hello"
        await ws.send_bytes(big)
        assert await ws.receive_bytes(timeout=10) == big
    lines: list[dict[str, Any]] = []

    async def logged() -> bool:
        lines[:] = [line for line in await read_json_log(client) if line["path"] == "/ws"]
        return bool(lines)

    deadline = time.monotonic() + 5
    while not await logged() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(lines) == 1, lines
    line = lines[0]
    assert (line["status"], line["cache"], line["upstream_status"]) == (101, "TUNNEL", 101)
    assert line["bytes"] > 1 << 20 and line["bytes_in"] > 1 << 20


async def test_a_websocket_holds_no_upstream_pool_slot(proxy: Any, origin: Any) -> None:
    """proxy.max_connections bounds the pool of exchanges; a WebSocket lasts for hours:
    counted there, a few of them would leave every miss a 503."""
    client = await proxy(await origin(echo_app()), proxy={"max_connections": 1,
                                                          "connect_timeout": 1})
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(client.make_url("/ws")) as ws:
        await ws.send_str("a")
        assert await ws.receive_str(timeout=5) == "echo:a"
        for i in range(3):
            async with session.get(client.make_url(f"/page{i}")) as resp:
                assert (resp.status, await resp.text()) == (200, f"GET /page{i}")
        await ws.send_str("b")
        assert await ws.receive_str(timeout=5) == "echo:b"


async def test_either_side_closing_closes_the_other(proxy: Any, origin: Any) -> None:
    async def closing(request: web.Request) -> web.StreamResponse:
        w = web.WebSocketResponse()
        await w.prepare(request)
        await w.send_str("bye")
        await w.close()
        return w

    app = echo_app()
    app.router.add_get("/closing", closing)
    client = await proxy(await origin(app))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(client.make_url("/closing")) as ws:
            assert await ws.receive_str(timeout=5) == "bye"
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        async with session.ws_connect(client.make_url("/ws")) as ws:
            await ws.send_str("x")
            assert await ws.receive_str(timeout=5) == "echo:x"
            await ws.close()
            assert ws.close_code == 1000  # the origin's close frame came back through


async def test_bytes_the_origin_sends_with_its_101_reach_the_client(proxy: Any) -> None:
    """A server may send its first frame in the same segment as the 101 (nothing waits
    for the client): those bytes are the tunnel's, not the end of an HTTP answer."""
    frame = b"\x81\x05hello"
    async with scripted_origin(lambda head: switching(head, extra="Content-Length: 0\r\n")
                               + frame, then_echo=True) as (port, _):
        client = await proxy(f"http://127.0.0.1:{port}")
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(handshake())
        status, fields = await read_head(reader)
        assert status == 101 and fields["sec-websocket-accept"] == accept_value(KEY)
        assert "content-length" not in fields  # (RFC 9110 §8.6: none in a 1xx)
        assert await asyncio.wait_for(reader.readexactly(len(frame)), 5) == frame
        writer.write(b"\x82\x03abc")  # (echoed by the origin: the tunnel goes both ways)
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"\x82\x03abc"
        writer.close()


async def test_an_origin_that_does_not_switch_gets_no_tunnel(proxy: Any) -> None:
    """The origin answers 200 (it ignored the Upgrade, RFC 9110 §7.8) or 426: that answer
    is relayed and the connection closes. What the client sent after its handshake never
    reaches the origin: forwarded as bytes, a request hidden there would pass every rule
    of this proxy (the "WebSocket smuggling" of proxies that trust the request alone)."""
    for answer in (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
                   b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n"):
        async with scripted_origin(lambda head, answer=answer: answer) as (port, received):
            client = await proxy(f"http://127.0.0.1:{port}")
            reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
            writer.write(handshake() + b"GET /admin HTTP/1.1\r\nHost: example\r\n\r\n")
            status, _ = await read_head(reader)
            assert status == int(answer.split()[1])
            assert await closed_within(reader, 3)
            writer.close()
            assert b"/admin" not in b"".join(received), received
            assert len(received) == 1 and b"Upgrade: websocket" in received[0]


async def test_a_101_that_does_not_answer_the_handshake_is_a_502(
        proxy: Any, caplog: Any) -> None:
    """RFC 6455 §4.1: a client fails a WebSocket whose Sec-WebSocket-Accept does not
    answer its key, or whose Upgrade names another protocol; the proxy opens no tunnel
    for such a 101 either, and says why."""
    for bad in (lambda head: switching(head, accept=base64.b64encode(b"x" * 20).decode()),
                lambda head: switching(head, upgrade="h2c")):
        async with scripted_origin(bad) as (port, _):
            client = await proxy(f"http://127.0.0.1:{port}")
            reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
            with caplog.at_level(logging.WARNING, logger="cacheproxy"):
                writer.write(handshake())
                status, _ = await read_head(reader)
                assert status == 502
                assert await closed_within(reader, 3)
            writer.close()
    assert "Sec-WebSocket-Accept does not answer the key" in caplog.text
    assert "another protocol than websocket" in caplog.text


async def test_an_idle_websocket_is_closed_at_websocket_idle_timeout(
        proxy: Any, origin: Any, caplog: Any) -> None:
    client = await proxy(await origin(echo_app()), proxy={"websocket_idle_timeout": 0.5})
    with caplog.at_level(logging.INFO, logger="cacheproxy"):
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(client.make_url("/ws"), autoping=False,
                                   heartbeat=None) as ws:
            for _ in range(3):  # traffic keeps it open past the timeout
                await asyncio.sleep(0.3)
                await ws.send_str("x")
                assert await ws.receive_str(timeout=5) == "echo:x"
            began = time.monotonic()
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.ERROR)
            assert 0.3 < time.monotonic() - began < 3
    assert "proxy.websocket_idle_timeout" in caplog.text


async def test_websocket_false_passes_no_upgrade(proxy: Any, origin: Any) -> None:
    """proxy.websocket = false: the handshake goes on as any request, its Upgrade removed
    as a hop-by-hop field (RFC 9110 §7.6.1), as before WebSocket was passed."""
    seen: list[str] = []
    client = await proxy(await origin(echo_app(seen)), proxy={"websocket": False})
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(handshake("/other"))
    status, fields = await read_head(reader)
    assert status == 200 and fields.get("connection") == "close"
    writer.close()
    assert seen == ["GET /other upgrade=None"]


async def test_a_websocket_is_never_answered_from_the_cache(proxy: Any, origin: Any) -> None:
    """A URL stored as a page (max-age=60) still gets its handshake from the origin."""
    seen: list[str] = []
    app = echo_app(seen)
    client = await proxy(await origin(app))
    async with aiohttp.ClientSession() as session:
        async with session.get(client.make_url("/ws2")) as resp:
            assert resp.status == 200
        async with session.get(client.make_url("/ws2")) as resp:
            assert resp.headers["X-Cache"].startswith("HIT")
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(handshake("/ws2"))
        status, fields = await read_head(reader)
        assert status == 200 and "HIT" not in fields.get("x-cache", "")
        writer.close()
    assert seen == ["GET /ws2 upgrade=None", "GET /ws2 upgrade=websocket"]


async def test_chromium_opens_a_websocket_through_the_proxy(proxy: Any, origin: Any) -> None:
    """A page loaded through the proxy opens a WebSocket to it, as a browser user's app
    does: messages go both ways."""
    app = echo_app()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>ws</title>",
                            content_type="text/html")

    app.router.add_get("/index.html", page)
    client = await proxy(await origin(app))
    async with chromium() as browser:
        tab = await browser.new_page()
        await tab.goto(str(client.make_url("/index.html")))
        got = await browser_echo(tab, str(client.make_url("/ws")).replace("http://", "ws://"))
        assert got == "echo:from chromium"


async def test_the_demo_origins_websocket_echo_through_the_proxy(proxy: Any, origin: Any
                                                                 ) -> None:
    """README's example: the bundled demo origin's /ws, through the proxy; a plain GET of
    /ws is a page, never stored."""
    client = await proxy(await origin(make_demo_app()))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(client.make_url("/ws")) as ws:
            await ws.send_str("hi")
            assert await ws.receive_str(timeout=5) == "hi"
            await ws.send_bytes(b"\x00\x01")
            assert await ws.receive_bytes(timeout=5) == b"\x00\x01"
        async with session.get(client.make_url("/ws")) as resp:
            assert resp.status == 200 and "WebSocket" in await resp.text()
            assert resp.headers["Cache-Control"] == "no-store"


async def test_a_stop_with_websockets_open_logs_each_once(origin: Any, tmp_path: Any) -> None:
    """SIGTERM with a WebSocket open: the graceful stop waits proxy.shutdown_timeout for it
    (as for a CONNECT tunnel), then closes it; its log line is written once, not once by
    the stop and again by the tunnel's end."""
    server = await origin(echo_app())
    log = tmp_path / "requests.log"
    proc, port = await start_serve(
        "--upstream", str(server.make_url("")).rstrip("/"), "--log-file", str(log),
        cwd=tmp_path, env=clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="0.5"))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://127.0.0.1:{port}/ws")
        await ws.send_str("a")
        assert await ws.receive_str(timeout=5) == "echo:a"
        code, _ = await stop(proc)
        assert code == 0
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR)
        await ws.close()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(line["path"], line["status"]) for line in lines] == [("/ws", 101)], lines
