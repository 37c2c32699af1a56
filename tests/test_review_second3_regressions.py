"""Findings of a second reading of the merges after c3d2749 (review-second3): real
servers on 127.0.0.1 (an aiohttp app on ProxyAppRunner, raw or aiohttp origins, the proxy
in front). Each test failed on the code it was written against (f4cd78d..c93734e) and
says what is expected, why, and how severe it is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from support import raw_origin

from cacheproxy.proxy.server_protocol import ProxyAppRunner


async def _answers(port: int, data: bytes, count: int, timeout: float = 5) -> list[bytes]:
    """Send data on one connection; each answer (head and Content-Length body) read in
    timeout, up to count of them, or until the connection ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    answers: list[bytes] = []
    try:
        while len(answers) < count:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            answers.append(head + await asyncio.wait_for(reader.readexactly(length), timeout))
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
    return answers


# -- 1. ProxyAppRunner: a chunked request, then an HTTP/1.2 one ---------------------------


@pytest.fixture
async def echo_app() -> AsyncIterator[int]:
    """An aiohttp app on ProxyAppRunner (as the admin API and the demo origin are served)
    answering each request with its method, path and body; its port."""
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=f"{request.method} {request.path}\n".encode() + body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = ProxyAppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("minor", [b"1", b"2"])
async def test_app_runner_reads_an_http_1_2_request_after_a_chunked_one(echo_app, minor):
    """f4cd78d reads a request line saying HTTP/1.2..1.9 as HTTP/1.1 (RFC 9110 §2.5), on
    ProxyAppRunner too (answers_first=False). But when a chunked request comes before such
    a line in the same read, _until_close's walk gives up at the chunked request (it ends
    the walk only for ClientConnection's rules) before it has rewritten anything, and
    both requests get a 400: `POST chunked` then `GET HTTP/1.2`, pipelined, is refused
    where `GET HTTP/1.1` after it is answered, and where the same two requests split
    over two reads are answered. The rewrite is to make the version not matter; here the
    framing of the chunked request before it decides. Severity: low (the admin API and
    the demo origin; a client that pipelines HTTP/1.2 after a chunked body)."""
    data = (b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
            b"GET /b HTTP/1." + minor + b"\r\nHost: x\r\n\r\n")
    answers = await _answers(echo_app, data, 2)
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 2, answers
    assert answers[0].endswith(b"POST /a\nhello") and answers[1].endswith(b"GET /b\n")


# -- 2. A Range behind a revalidation loses stale-if-error --------------------------------


async def test_a_range_behind_a_failing_revalidation_is_answered_stale_if_error(
        aiohttp_server, proxy) -> None:
    """58c1844 sends a Range that would wait behind another request's fetch of the key to
    the origin as it is (range_behind_fill: Forward("bypass")). That Forward drops the
    lookup's stored response, so when the fetch in flight is the revalidation of a stale
    response allowed on error (RFC 5861 §4 `stale-if-error`) and the origin fails, the
    Range gets the origin's 503 while the request it would have waited for (and the
    same Range alone, which leads the revalidation itself) gets the stored response.
    Before 58c1844 the waiter got it too (Driver._collapsed: stale_on_error on the
    leader's failure). nginx (proxy_cache_use_stale error, with proxy_cache_lock) and
    Squid serve the stale copy to the waiting Range as well. Severity: medium (the outage
    stale-if-error is there for: a video player's seek or resume gets the error)."""
    failing = False

    async def handler(request: web.Request) -> web.Response:
        if failing:
            await asyncio.sleep(0.5)  # (the revalidation is in flight a while)
            return web.Response(status=503, text="down")
        return web.Response(body=b"0123456789", headers={
            "Cache-Control": "max-age=1, stale-if-error=300", "ETag": '"v1"'})

    app = web.Application()
    app.router.add_get("/v", handler)
    c = await proxy(await aiohttp_server(app))
    assert (await c.get("/v")).status == 200
    await asyncio.sleep(1.5)  # stale now, within stale-if-error
    failing = True

    async def ranged() -> Any:
        await asyncio.sleep(0.1)  # behind the revalidation
        return await c.get("/v", headers={"Range": "bytes=0-3"})

    whole, part = await asyncio.gather(c.get("/v"), ranged())
    assert whole.status == 200 and await whole.read() == b"0123456789"
    assert part.status in (200, 206), (part.status, part.headers)
    assert (await part.read()) in (b"0123", b"0123456789")


# -- 3. pool.py: an origin's HTTP/1.2 status line read as 1.1 only as the first read's ----


@pytest.mark.parametrize("pieces", [
    pytest.param([b"HTTP/1", b".2 200 OK\r\nContent-Length: 5\r\n\r\nhello"], id="split"),
    pytest.param([b"HTTP/1.2 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
                  b"HTTP/1.2 200 OK\r\nContent-Length: 5\r\n\r\nhello"], id="after-103"),
    pytest.param([b"HTTP/1.2 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                  b"HTTP/1.2 200 OK\r\nContent-Length: 5\r\n\r\nhello"], id="103-one-read"),
])
async def test_an_origin_http_1_2_status_line_is_read_as_1_1_in_any_read(proxy, pieces):
    """61194fb reads an origin's `HTTP/1.2` status line as HTTP/1.1 (RFC 9110 §2.5; nginx
    relays it), but only when the line starts the first read of the answer and that read
    holds its first 9 bytes: a status line split by TCP after `HTTP/1`, or the final
    status line after an interim 103 (Early Hints, in the same read or the next), still
    reaches llhttp as 1.2 and the client gets a 502. nginx parses the status line
    incrementally and takes HTTP/1.2 wherever it is. Severity: low (origins that label
    their answers HTTP/1.2 are rare; those are the ones the fix is for)."""
    async with raw_origin(lambda head: pieces) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        resp = await c.get("/p")
        assert resp.status == 200 and await resp.read() == b"hello"
