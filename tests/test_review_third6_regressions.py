"""A third reader's findings on the client-gone watch, event streams and graceful stop
(commits f92cc61 .. 8e3a7aa, 36d2174, aff82f5, 84a5d8b). Real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from support import read_json_log, until
from test_forward_mode import raw
from test_review_streaming_regressions import _held, served


def _app() -> tuple[web.Application, dict[str, Any]]:
    """/events: an event stream whose head comes after ?delay= seconds, then one event,
    then nothing for 20 s. /poll: a long poll answered after ?after= seconds (20).
    Each watches its connection: `closed` holds when it saw the proxy's side close."""
    state: dict[str, Any] = {"started": 0, "closed": [], "heads": 0}

    async def events(request: web.Request) -> web.StreamResponse:
        state["started"] += 1
        await asyncio.sleep(float(request.query.get("delay", 0)))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        state["heads"] += 1
        await resp.write(b"data: hello\n\n")
        await _held(request, 20, state)
        return resp

    async def poll(request: web.Request) -> web.Response:
        await request.read()
        state["started"] += 1
        await _held(request, float(request.query.get("after", 20)), state)
        return web.Response(text="[]", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/events", events)
    app.router.add_route("*", "/poll", poll)
    return app, state


async def test_a_long_poll_whose_client_left_while_it_waited_for_a_connection_is_not_sent(
        proxy, tmp_path: Path):
    """A POST long poll (nothing of its answer can be stored) whose client leaves while
    the request waits for an upstream connection (every one of proxy.max_connections in
    use; or a connect under way) was sent to the origin all the same once one was free:
    013b750's watch is put on the connection only once one is found, and the client's
    loss before that is told to nobody. The origin got a POST from a client long gone,
    acted on it, and held the poll for its whole period (20 s here; up to read_timeout)
    on the connection the other requests were waiting for. nginx watches the client from
    the start of the request ("client prematurely closed connection" while connecting
    upstream: 499, nothing sent). Severity: low (one unwanted unsafe request and one
    upstream connection held a poll period, per client that gave up under load)."""
    app, state = _app()
    async with served(app) as port:
        client = await proxy(f"http://127.0.0.1:{port}", log={"path": str(tmp_path / "r.log")},
                             proxy={"max_connections": 1, "connect_timeout": 5})
        post = b"POST /poll?after=%s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        first_reader, first = await raw(client.port, post % b"1")
        assert await until(lambda: state["started"] == 1)
        _, second = await raw(client.port, post % b"20")
        await asyncio.sleep(0.3)  # (waiting for the one connection)
        second.close()
        assert (await asyncio.wait_for(first_reader.read(65536), 5)).endswith(b"[]")
        first.close()
        await asyncio.sleep(0.5)
        assert state["started"] == 1, "the departed client's POST went to the origin"
        lines = await read_json_log(client)
        assert sorted((line["path"], line["status"]) for line in lines) == [
            ("/poll?after=1", 200), ("/poll?after=20", 499)]
        assert client.app_proxy.exchange.pool.in_use <= 1  # (the first's, idle)


async def test_a_no_store_long_poll_on_the_quick_path_is_given_up_when_its_client_leaves(
        proxy, forward_switch, tmp_path: Path):
    """013b750 gives up a long poll whose answer nothing would store (README: "a POST, a
    no-store GET") when its client leaves, on the full path only. After the first poll
    of a URL whose answers are `no-store` (hit-for-pass: the next ones wait behind no
    other) with an idle upstream connection, a GET sent with `Cache-Control: no-store`
    goes by the quick forward (proxy/quick_forward.py), which nothing tells of the
    client's loss: the origin held the poll its whole period (20 s here; up to
    read_timeout, then a 504 WARNING blaming it) on a connection nobody would read, and
    the line came then. nginx closes the upstream connection at once, 499. Severity: low
    (the same as 013b750's: one origin poll slot per departed client)."""
    state: dict[str, Any] = {"started": 0, "closed": []}

    async def poll(request: web.Request) -> web.Response:
        state["started"] += 1
        deadline = time.monotonic() + float(request.headers.get("X-After", 20))
        while time.monotonic() < deadline:
            if request.transport is None or request.transport.is_closing():
                state["closed"].append(time.monotonic())
                break
            await asyncio.sleep(0.01)
        return web.Response(text="[]", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/poll", poll)
    async with served(app) as port:
        client = await proxy(f"http://127.0.0.1:{port}", log={"path": str(tmp_path / "r.log")})
        reader, writer = await raw(client.port, b"GET /poll HTTP/1.1\r\nHost: x\r\n"
                                                b"X-After: 0\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(65536), 3)).endswith(b"[]")
        writer.close()
        forward_switch.state["sent"] = 0
        _, writer = await raw(client.port, b"GET /poll HTTP/1.1\r\nHost: x\r\n"
                                           b"Cache-Control: no-store\r\n\r\n")
        assert await until(lambda: state["started"] == 2)
        left = time.monotonic()
        writer.close()
        assert await until(lambda: bool(state["closed"]), timeout=3), \
            "the origin's connection was still open 3 s after its client left"
        assert state["closed"][0] - left < 1.0
        assert forward_switch.state["sent"] == 1  # (the path the test meant)
        lines = await read_json_log(client)
        assert [(line["path"], line["status"]) for line in lines] == [
            ("/poll", 200), ("/poll", 499)]
        assert client.app_proxy.exchange.pool.in_use == 0
