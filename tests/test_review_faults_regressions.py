"""Defects found reviewing the proxy under faults, truncation and resource bounds: each
test failed before its fix (or is marked xfail, strict, with the reason it stays)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from processes import clean_env, free_port, start_serve, stop

from cacheproxy.tls.ca import LocalCA

TIMEOUT = 5.0


# -- TLS: a close without close_notify is no end of a body ------------------------------------


async def _tls_origin_cut(ca: LocalCA, notify: bool = False
                          ) -> tuple[asyncio.AbstractServer, list[int]]:
    """An https origin whose first answer has no length (it runs to the close) and is cut
    by a TCP close without TLS close_notify (what an attacker's FIN or a crash looks
    like), or ended cleanly (notify); later answers are whole ("full", with a length).
    Plain asyncio, not uvloop: its transport's socket can be shut down under TLS."""
    answered = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        answered[0] += 1
        if answered[0] > 1:
            writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
                         b"Content-Length: 4\r\n\r\nfull")
            await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n\r\n" + b"a" * 50)
        await writer.drain()
        await asyncio.sleep(0.05)
        if notify:  # a clean end: close_notify, then the TCP close
            writer.close()
            return
        writer.get_extra_info("socket").shutdown(socket.SHUT_RDWR)  # FIN, no close_notify
        await asyncio.sleep(0.05)
        writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0,
                                        ssl=ca.server_context("127.0.0.1"))
    return server, answered


async def _get(port: int) -> bytes:
    """GET /page with Connection: close; what arrived before the proxy closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /page HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), TIMEOUT):
            data += chunk
    except ConnectionError:
        pass
    writer.close()
    return data


@pytest.fixture
async def tls_cut(tmp_path: Path) -> AsyncIterator[tuple[LocalCA, int, list[int]]]:
    ca = LocalCA.load_or_create(tmp_path / "ca")
    server, answered = await _tls_origin_cut(ca)
    try:
        yield ca, server.sockets[0].getsockname()[1], answered
    finally:
        server.close()


@pytest.mark.parametrize("where", ["serve", "in-process"])
async def test_a_tls_body_cut_without_close_notify_is_not_stored_nor_relayed_whole(
        tls_cut, proxy, tmp_path, where):
    """A body delimited by the close, from an https origin, cut by a TCP close without
    TLS close_notify was stored and replayed as complete, and its first client got a
    clean chunked message with its last chunk (0 CRLF CRLF). RFC 9112 §9.8: "A response
    that has neither chunked transfer coding nor Content-Length is complete only if a
    valid closure alert has been received"; RFC 9111 §3: a cache MUST NOT store an
    incomplete response. TLS is there to make a truncation by anyone on the path
    detectable (a "truncation attack"); taking the bare FIN as the end hands every user of
    the shared cache the cut copy until it expires. Severity: medium (needs an https
    origin that sends a close-delimited body, as HTTP/1.0 and CGI-style servers do).
    Both loops are checked: asyncio calls eof_received for such a close, uvloop (what
    `cacheproxy serve` runs on) only connection_lost."""
    ca, origin_port, answered = tls_cut
    upstream = f"https://127.0.0.1:{origin_port}"
    if where == "serve":
        proc, port = await start_serve("--upstream", upstream, cwd=tmp_path, env=clean_env(
            CACHEPROXY_PROXY_UPSTREAM_CA_FILE=str(ca.cert_path), CACHEPROXY_LOG_FORMAT="off"))
    else:
        client = await proxy(upstream, proxy={"upstream_ca_file": str(ca.cert_path)})
        port = client.server.port
    try:
        first = await _get(port)
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        assert not first.endswith(b"\r\n0\r\n\r\n"), (
            "the cut body reached the client as a complete chunked message")
        second = await _get(port)
    finally:
        if where == "serve":
            await stop(proc)
    assert b"X-Cache: HIT" not in second, f"the cut body was stored and replayed: {second!r}"
    assert second.endswith(b"full") and answered[0] == 2


async def test_a_tls_body_run_to_a_clean_close_is_still_stored(tmp_path):
    """The control: with close_notify before the close, the body is whole and stored
    (`cacheproxy serve`, uvloop)."""
    ca = LocalCA.load_or_create(tmp_path / "ca")
    server, answered = await _tls_origin_cut(ca, notify=True)
    upstream = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    proc, port = await start_serve("--upstream", upstream, cwd=tmp_path, env=clean_env(
        CACHEPROXY_PROXY_UPSTREAM_CA_FILE=str(ca.cert_path), CACHEPROXY_LOG_FORMAT="off"))
    try:
        first = await _get(port)
        assert first.endswith(b"a" * 50 + b"\r\n0\r\n\r\n")
        second = await _get(port)
    finally:
        await stop(proc)
        server.close()
    assert b"X-Cache: HIT" in second and second.endswith(b"a" * 50) and answered[0] == 1


# -- the store's bound: what a variant holds of the request ------------------------------------


async def test_max_bytes_counts_the_vary_values_a_variant_keeps(proxy, origin):
    """Each stored variant keeps the request's values of the fields its response varies on
    (RFC 9111 §4.1: to match later requests), but CachedResponse.size left them out: with
    cache.max_bytes = 256 KiB, 100 requests whose Vary'd field was 8 lines of 8 KB (well
    within the proxy's limits on a request head) made the store hold 6.4 MB of them while
    it accounted 51 KB and evicted nothing. Any client can do this wherever an origin
    varies on a request field (Cookie, User-Agent, Accept-Language...): cache.max_bytes,
    which "bounds the process memory", is passed 25 times and more. Severity: medium."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=b"x", headers={"Cache-Control": "max-age=600",
                                                "Vary": "X-Pad"})

    app = web.Application()
    app.router.add_get("/{n}", page)
    max_bytes = 256 * 1024
    client = await proxy(await origin(app), cache={"max_bytes": max_bytes})
    for n in range(100):
        resp = await client.get(f"/{n}", headers=[("X-Pad", f"{n:08d}" + "p" * 8000)] * 8)
        assert resp.status == 200
        await resp.read()
    store = client.app_proxy.store
    held = [entry for key in await store.keys() for entry in await store.get(key)]
    kept = sum(len(value or "") for entry in held for value in entry.vary_values)
    assert kept <= max_bytes, (
        f"{kept} bytes of Vary values held in a {max_bytes}-byte store "
        f"(accounted: {store.stats().bytes})")
    assert store.stats().bytes <= max_bytes


# -- standard error as a pipe nobody drains ------------------------------------------------------


async def test_a_stderr_pipe_nobody_reads_does_not_stop_the_proxy(tmp_path):
    """Diagnostic lines went to stderr through logging's StreamHandler, written on the
    event loop. With stderr a pipe nobody drains (a stalled log driver or supervisor,
    `serve 2>&1 | stalled`), the pipe is full at 64 KiB and the next WARNING blocked the
    loop: after 602 misses against a dead origin (one "upstream ... failed" line each)
    the proxy answered nothing more, health checks included, until someone read stderr.
    A client chooses how fast that comes (long URLs make long lines). The request log is
    written by a thread so that "a slow disk or pipe never stalls requests" (README);
    stderr must not undo that. Severity: medium (every client stalls at once)."""
    dead = free_port()  # nothing listens there: each request is a 502 and a WARNING
    proc, port = await start_serve(
        "--upstream", f"http://127.0.0.1:{dead}", cwd=tmp_path,
        env=clean_env(CACHEPROXY_LOG_FORMAT="off"))  # (stderr: a pipe read only at stop)
    answered = 0
    try:
        timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for n in range(1500):
                async with session.get(f"http://127.0.0.1:{port}/{n}?{'q' * 200}") as resp:
                    assert resp.status == 502
                    answered += 1
            async with session.get(f"http://127.0.0.1:{port}/_cacheproxy/healthz") as resp:
                assert resp.status == 200
    except TimeoutError:
        pytest.fail(f"the proxy stopped answering after {answered} requests")
    finally:
        _, err = await stop(proc)
    assert err.count("answered 502") == 1500  # every line written once stderr was read
