"""A reviewer's findings on streamed answers (Server-Sent Events, long polls, bodies sent a
piece at a time) through the proxy: reverse mode, forward mode, an intercepted CONNECT.

Each test failed on the code it was written against (commit 326ba27); its docstring says
what happened, what should happen and why. Real servers on 127.0.0.1, as elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import raw_get, read_json_log, until
from test_forward_mode import raw
from test_review_forward_regressions import _intercepted

from cacheproxy.http.storability import is_event_stream
from cacheproxy.tls.ca import LocalCA

EVENT = b"id: 1\ndata: hello\n\n"


def sse_app() -> tuple[web.Application, dict[str, Any]]:
    """An aiohttp origin whose /events sends one event, then nothing (a quiet stream: the
    next event, or the heartbeat, is far off), watching its connection: `closed` holds
    when (time.monotonic()) it saw the proxy's side of it close. A request with X-End
    gets its stream ended after the event."""
    state: dict[str, Any] = {"started": [], "closed": []}

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(EVENT)
        state["started"].append(request.headers.get("Last-Event-ID"))
        await _held(request, 0 if "X-End" in request.headers else 20, state)
        return resp

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application()
    app.router.add_get("/events", events)
    app.router.add_get("/ping", ping)
    return app, state


async def _held(request: web.Request, seconds: float, state: dict[str, Any]) -> None:
    """Hold the answer open for seconds, or until its client's connection closes (when,
    noted in state["closed"])."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            state["closed"].append(time.monotonic())
            return
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def served(app: web.Application, tls: LocalCA | None = None,
                 shutdown_timeout: float = 60.0) -> AsyncIterator[int]:
    """app served by aiohttp's AppRunner on a TCP site (whose connections, unlike
    aiohttp.test_utils.TestServer's, show a handler the peer's close), over https with a
    certificate for localhost from tls: its port. shutdown_timeout: how long its cleanup
    waits for a handler still running (a stream left open ends then)."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0,
                       ssl_context=tls.server_context("localhost") if tls else None)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def sse_origin(tls: LocalCA | None = None
                     ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """sse_app() served (served()), over https with a certificate for localhost from tls:
    its URL, its state."""
    app, state = sse_app()
    async with served(app, tls) as port:
        yield f"http{'s' if tls else ''}://localhost:{port}", state


async def _read_event(reader: asyncio.StreamReader) -> None:
    """Read the head and the first event (what a client shows before it leaves)."""
    got = b""
    while b"data: hello" not in got:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, got
        got += data


async def _leave_and_watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           state: dict[str, Any]) -> float:
    """The client leaves after the first event; how long the origin's connection stayed
    open after that (or 99 when it was still open 3 s later)."""
    await _read_event(reader)
    left = time.monotonic()
    writer.close()
    if not await until(lambda: bool(state["closed"]), timeout=3):
        return 99.0
    return state["closed"][0] - left


@pytest.mark.parametrize("quick", [False, True], ids=["full-path", "quick-path"])
async def test_a_client_that_leaves_a_quiet_stream_frees_its_upstream_connection_at_once(
        proxy, forward_switch, caplog, tmp_path: Path, quick: bool):
    """A client that closes its connection while the stream it reads is quiet (an SSE
    page closed, an EventSource.close(), a long poll given up) was not noticed until the
    origin's next byte: the relay waited on the upstream read alone, and learnt of the
    client only from a failed write. An origin that sends an event a minute (or a
    heartbeat every 30 s) kept the connection, and whatever it holds per subscriber, for
    that long; an origin that sends nothing more held it until proxy.read_timeout (30 s),
    which then wrote a WARNING blaming the origin ("body ... broke off: timeout reading
    the body") and logged the request as cache ERROR. nginx sees the client's close at
    once ("client prematurely closed connection, so upstream connection is closed too",
    seen with nginx 1.22 here: its origin saw the close within 1 ms; cacheproxy's after
    30 s). Severity: medium (origin resources held by clients long gone; a false
    origin-failure warning and ERROR line for every SSE tab closed)."""
    async with sse_origin() as (url, state):
        client = await proxy(url, log={"path": str(tmp_path / "r.log")})
        await _leave_quiet_stream(client, state, forward_switch, caplog, quick)


async def _leave_quiet_stream(client: Any, state: dict[str, Any], forward_switch: Any,
                              caplog: Any, quick: bool) -> None:
    if quick:  # a URL marked pass and an idle pooled connection: the quick forward
        reader, writer = await raw(
            client.port, b"GET /events HTTP/1.1\r\nHost: x\r\nX-End: 1\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(65536), 5)).endswith(b"0\r\n\r\n")
        writer.close()
        assert (await raw_get(client, "/ping"))[0] == 200
        state["closed"].clear()
    forward_switch.state["sent"] = 0
    reader, writer = await raw(client.port, b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    with caplog.at_level(logging.WARNING):
        held = await _leave_and_watch(reader, writer, state)
        assert held < 1.0, f"the origin's connection stayed open {held:.1f} s"
        lines = await read_json_log(client)
        assert [(line["path"], line["status"], line["cache"], line["bytes"])
                for line in lines][2 * quick:] == [("/events", 200, "MISS", len(EVENT))]
    assert "broke off" not in caplog.text
    assert forward_switch.state["sent"] == quick  # (the path the test meant)
    assert client.app_proxy.exchange.pool.in_use == 0  # it is closed, not pooled


@pytest.mark.parametrize("mode", ["forward", "intercepted"])
async def test_a_client_that_leaves_a_quiet_stream_frees_it_in_forward_mode_too(
        proxy, tmp_path: Path, mode: str):
    """The same as above for a forward proxy's client: an absolute-form request, and a
    request inside an intercepted CONNECT (forward.intercept_tls) to an https origin: the
    origin's connection was held until its next byte or read_timeout. Severity: medium."""
    site_ca = LocalCA.load_or_create(tmp_path / "site-ca") if mode == "intercepted" else None
    async with sse_origin(site_ca) as (url, state):
        port = int(url.rsplit(":", 1)[1])
        ca_dir = tmp_path / "proxy-ca"
        client = await proxy("http://127.0.0.1:9", log={"path": str(tmp_path / "r.log")},
                             proxy={"upstream_ca_file": str(site_ca.cert_path) if site_ca
                                    else ""},
                             forward={"enabled": True, "intercept_tls": bool(site_ca),
                                      "allow_hosts": ["localhost"], "connect_ports": [port],
                                      "ca_dir": str(ca_dir)})
        if site_ca:
            reader, writer = await _intercepted(client, ca_dir, port)
            writer.write(f"GET /events HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
        else:
            reader, writer = await raw(client.port, f"GET {url}/events HTTP/1.1\r\n"
                                       f"Host: localhost:{port}\r\n\r\n".encode())
        held = await _leave_and_watch(reader, writer, state)
        assert held < 1.0, f"the origin's connection stayed open {held:.1f} s"


def long_poll_app() -> tuple[web.Application, dict[str, Any]]:
    """An aiohttp origin whose /poll answers after 20 s (`?after=` seconds) (a long poll
    with nothing new), unless its connection closes first: `closed` holds when it saw
    that."""
    state: dict[str, Any] = {"started": 0, "closed": []}

    async def poll(request: web.Request) -> web.Response:
        await request.read()
        state["started"] += 1
        await _held(request, float(request.query.get("after", 20)), state)
        return web.Response(text="[]")

    app = web.Application()
    app.router.add_route("*", "/poll", poll)
    return app, state


@pytest.mark.parametrize("request_head", [
    "POST /poll HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    "GET /poll HTTP/1.1\r\nHost: x\r\nCache-Control: no-store\r\n\r\n",
], ids=["POST", "GET-no-store"])
async def test_a_client_that_leaves_a_long_poll_nothing_can_store_frees_it_at_once(
        proxy, tmp_path: Path, request_head: str):
    """A long poll (CometD/Bayeux and GraphQL clients poll with POST; a GET with
    `Cache-Control: no-store`) whose client leaves before the origin answers: the proxy
    kept the upstream request open until the origin answered (here 20 s; up to
    proxy.read_timeout, 30 s, then a 504 WARNING blaming the origin), although nothing of
    the answer could be stored or serve anyone else. nginx closes the upstream connection
    at once and logs 499 (seen with nginx 1.22 here, "client prematurely closed
    connection, so upstream connection is closed too", for a location without
    proxy_cache; with proxy_cache it keeps a cacheable GET's fetch, as cacheproxy does for
    a miss it may store). Severity: low (an origin's poll slot held for one poll period
    per departed client)."""
    app, state = long_poll_app()
    async with served(app) as port:
        client = await proxy(f"http://127.0.0.1:{port}", log={"path": str(tmp_path / "r.log")})
        _, writer = await raw(client.port, request_head.encode())
        assert await until(lambda: state["started"] == 1)
        left = time.monotonic()
        writer.close()
        assert await until(lambda: bool(state["closed"]), timeout=3), \
            "the origin's connection was still open 3 s after its client left"
        assert state["closed"][0] - left < 1.0
        lines = await read_json_log(client)
        assert [(line["path"], line["status"]) for line in lines] == [("/poll", 499)]
        assert client.app_proxy.exchange.pool.in_use == 0


def validated_sse_app() -> web.Application:
    """An origin whose /live is an event stream that runs for 5 s (an event each 0.1 s)
    with a validator or a date (`?v=etag`, `?v=lm`) and no Cache-Control, as a handler
    behind a framework that adds an ETag or Last-Modified to what it serves may send."""
    async def live(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream; charset=utf-8"}
        if request.query["v"] == "etag":
            headers["ETag"] = '"feed-1"'
        else:
            headers["Last-Modified"] = "Mon, 01 Jan 2024 00:00:00 GMT"
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        for i in range(50):
            await resp.write(f"id: {i}\ndata: {time.monotonic()}\n\n".encode())
            await asyncio.sleep(0.1)
        return resp

    app = web.Application()
    app.router.add_get("/live", live)
    return app


async def _subscribe(port: int, target: str) -> tuple[asyncio.StreamWriter, bytes]:
    """An EventSource's request, as Chromium sends it (Cache-Control: no-cache, HTML
    §9.2.3); its connection and its head, once it came (3 s at most)."""
    reader, writer = await raw(port, f"GET {target} HTTP/1.1\r\nHost: x\r\n"
                               "Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
                               "Pragma: no-cache\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    return writer, head


@pytest.mark.parametrize("validator", ["etag", "lm"])
async def test_an_event_stream_is_never_filled_so_a_second_subscriber_waits_for_nothing(
        proxy, origin, validator: str):
    """An event stream (text/event-stream) that carries an ETag or a Last-Modified and no
    Cache-Control was filled to be stored (§3: storable; a validator, or heuristic
    freshness from Last-Modified: a day): a second subscriber to the same URL (a second
    tab, another user), arriving while the first stream ran, waited behind that fill,
    which never ends for a live stream, for cache.collapse_timeout (10 s) before it got a
    stream of its own; a client that left did not free the origin (a fill is read on to
    its end); and a stream that did end within max_object_bytes was replayed, old events
    and all, as a HIT for a day. An event stream is live and never whole (HTML "Server-sent
    events" §9.2: user agents send Cache-Control: no-cache on its requests "to bypass any
    caches"): it is not stored, so each subscriber gets its own stream at once. nginx with
    proxy_cache and proxy_cache_lock on (seen with 1.22 here) gives the second its stream
    at once. Severity: medium (a 10 s stall per subscriber for such origins)."""
    client = await proxy(await origin(validated_sse_app()))
    target = f"/live?v={validator}"
    first, head1 = await _subscribe(client.port, target)
    started = time.monotonic()
    try:
        second, head2 = await _subscribe(client.port, target)
    except TimeoutError:
        pytest.fail("the second subscriber got no stream within 3 s")
    assert time.monotonic() - started < 1.0
    assert b"stored" not in head1 and b"stored" not in head2
    first.close()
    second.close()


@pytest.mark.parametrize(("content_type", "stream"), [
    ("text/event-stream", True), ("Text/Event-Stream ; charset=utf-8", True),
    ("text/event-streams", False), ("text/plain", False), (None, False),
])
def test_what_counts_as_an_event_stream(content_type: str | None, stream: bool) -> None:
    """The media type alone, case-insensitively, its parameters aside (RFC 9110 §8.3.1)."""
    assert is_event_stream(content_type) is stream


async def test_a_collapsed_waiter_whose_client_left_is_not_sent_upstream(proxy, tmp_path: Path):
    """Two clients long-poll one URL (a first miss: the second waits behind the first, as
    README's collapsing says); the second leaves while it waits. When the first's answer
    came and could not be stored, the waiter went upstream itself all the same, for a
    client long gone: the origin got a second long poll nobody would read (held for its
    whole period: a miss that may be stored is fetched on), and the line said 499 some
    20 s later. A waiter whose client left goes no further: its line says 499 (collapsed)
    when its wait ends. Severity: low (one wasted origin request per departed waiter)."""
    app, state = long_poll_app()
    async with served(app) as port:
        client = await proxy(f"http://127.0.0.1:{port}", log={"path": str(tmp_path / "r.log")})
        head = b"GET /poll?after=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        first_reader, first = await raw(client.port, head)
        assert await until(lambda: state["started"] == 1)
        _, second = await raw(client.port, head)
        await asyncio.sleep(0.2)  # (it waits behind the first)
        second.close()
        assert (await asyncio.wait_for(first_reader.read(65536), 5)).endswith(b"[]")
        first.close()
        await asyncio.sleep(0.5)
        assert state["started"] == 1, "the departed waiter's request went upstream"
        lines = await read_json_log(client)
        assert sorted((line["status"], line["collapsed"]) for line in lines) == [
            (200, False), (499, True)]


async def test_open_event_streams_do_not_use_up_the_upstream_connections(
        proxy, tmp_path: Path):
    """Each open event stream held one of the proxy.max_connections upstream connections
    (256 by default) for as long as it lasted: an app with that many EventSource tabs
    open made every other miss wait proxy.connect_timeout and get a 503 ("no upstream
    connection free"), here with max_connections = 2 and two streams. A WebSocket leaves
    the pool for that reason (README, WebSocket); an event stream, the HTTP way of doing
    the same, should too. nginx has no such limit by default (max_conns=0), so its
    subscribers never starve its other requests. Severity: medium (an SSE app's own
    users make the proxy refuse everything else at a few hundred subscribers)."""
    async with sse_origin() as (url, state):
        client = await proxy(url, proxy={"max_connections": 2, "connect_timeout": 1.0})
        streams = []
        for _ in range(2):
            reader, writer = await raw(client.port, b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            await _read_event(reader)
            streams.append(writer)
        status, _, _ = await asyncio.wait_for(raw_get(client, "/other?x=1"), 5)
        assert status == 404  # (the origin's own answer, not the proxy's 503)
        for writer in streams:
            writer.close()
        assert await until(lambda: len(state["closed"]) == 2)
        pool = client.app_proxy.exchange.pool
        assert await until(lambda: pool.in_use == 1)  # (/other's, idle)
