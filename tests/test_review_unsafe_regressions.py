"""Review of what unsafe requests do to the cache (RFC 9111 §4.4 invalidation, RFC 9110 §9
methods, §9.3.3 stored POST answers, RFC 9111 §4.3.5 HEAD): a real proxy in front of real
origins on 127.0.0.1, unsafe methods (POST, PUT, DELETE, PATCH, unknown and lower-case
ones) answered 2xx/3xx/4xx/5xx or not at all, their Location and Content-Location (same
origin, other hosts, other routes), stored POST answers, HEAD updates, OPTIONS/TRACE/
CONNECT in reverse mode."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from support import raw_get, until


def site(name: str, calls: list[str], unsafe: web.Response | None = None) -> web.Application:
    """An origin whose GETs are fresh for 10 minutes and name `name` and the call count;
    other methods get `unsafe` (default: 201 with the Location its `loc` query names)."""
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        calls.append(f"{request.method} {request.raw_path}")
        if request.method in ("GET", "HEAD"):
            return web.Response(text=f"{name} {request.path} {len(calls)}",
                                headers={"Cache-Control": "max-age=600"})
        if unsafe is not None:
            return unsafe
        return web.Response(status=201, text="made",
                            headers={"Location": request.query.get("loc", "")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@contextlib.asynccontextmanager
async def refusing_slowly(calls: list[str], closed: asyncio.Event) -> AsyncIterator[int]:
    """An origin (raw bytes) whose GETs are fresh for 10 minutes, and which answers any
    other method 405 only once the proxy closed its connection (closed set then), as a
    slow handler would. Yields its port."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target = head.decode("latin-1").split(" ")[:2]
                calls.append(f"{method} {target}")
                if method == "GET":
                    body = f"page {len(calls)}".encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    continue
                while await reader.read(65536):  # its body, then the proxy's close
                    pass
                closed.set()
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_a_client_leaving_an_unsafe_request_before_its_answer_purges_nothing(
        proxy: Any) -> None:
    """RFC 9111 §4.4 invalidates a URI on a non-error status received for an unsafe
    request. When the client left before the origin answered (the upstream request is
    then given up, 013b750), the proxy invalidated the target URI anyway, "since the
    origin may have acted on it". So any client could purge any stored response without
    the origin's consent: `POST /page` then close, before the origin's 405 comes back.
    Every user's next request was a miss (a full fetch of a large object), and a
    response kept for `stale-if-error` while the origin is down was gone, so users got
    502s instead. An upload reset or timed out upstream (no status either) never
    invalidated; nginx, Varnish and Squid invalidate on no such thing. Now no status, no
    invalidation. Severity: medium (an unauthenticated purge of any URL)."""
    calls: list[str] = []
    closed = asyncio.Event()
    async with refusing_slowly(calls, closed) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        await _post_and_leave(c, calls, closed)


async def _post_and_leave(c: Any, calls: list[str], closed: asyncio.Event) -> None:
    host = f"127.0.0.1:{c.server.port}"
    first = await raw_get(c, "/page", host=host)
    assert (await raw_get(c, "/page", host=host))[1]["x-cache"] == "HIT"
    _, writer = await asyncio.open_connection(c.server.host, c.server.port)
    writer.write(f"POST /page HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\n{{}}"
                 .encode())
    await writer.drain()
    assert await until(lambda: "POST /page" in calls)
    writer.close()
    await asyncio.wait_for(closed.wait(), 5)  # the proxy gave the POST up
    after = await raw_get(c, "/page", host=host)
    assert (after[1]["x-cache"], after[2]) == ("HIT", first[2])
    assert calls == ["GET /page", "POST /page"]
