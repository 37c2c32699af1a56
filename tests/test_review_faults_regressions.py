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
from test_pool_review_regressions import Scripted

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


def test_lines_for_a_stalled_stderr_pipe_are_bounded_and_their_loss_said(monkeypatch):
    """The fix's bound: what a pipe nobody drains does not take is queued up to
    MAX_QUEUED lines (a thread writes them), the rest dropped and counted, and the count
    said once the pipe takes lines again; no emit blocks meanwhile."""
    import logging
    import os
    import time

    from cacheproxy.observe import diagnostics

    monkeypatch.setattr(diagnostics, "MAX_QUEUED", 100)
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream, os.fdopen(read_end, "rb") as drain:
        handler = diagnostics.StderrHandler(stream)
        record = logging.LogRecord("cacheproxy", logging.WARNING, __file__, 1,
                                   "upstream failed: " + "x" * 200, None, None)
        started = time.monotonic()
        for _ in range(2000):  # ~440 KB: the pipe takes 64 KiB
            handler.emit(record)
        assert time.monotonic() - started < 2  # (a blocking write would never return)
        assert handler.dropped > 0
        os.set_blocking(read_end, False)
        got = b""
        deadline = time.monotonic() + 5
        while b"log lines dropped" not in got and time.monotonic() < deadline:
            try:
                got += drain.read() or b""
            except BlockingIOError:
                time.sleep(0.01)
        lines = got.splitlines()
        assert lines[-1].startswith(b"cacheproxy: stderr was stalled:"), lines[-1]
        assert len(lines) - 1 + int(lines[-1].split()[4]) == 2000  # written + dropped


# -- collapsed requests behind a fill that broke off ------------------------------------------


async def test_waiters_behind_a_fill_that_broke_off_do_not_all_go_upstream(proxy):
    """Requests collapsed behind a miss whose body broke off (the origin closed mid-body)
    found nothing stored and all went to the origin at once (lookup never collapses a
    request that waited): five clients made five upstream requests to an origin that had
    just failed, the herd collapsing exists to prevent. nginx (proxy_cache_lock) and
    Varnish (the waiting list's rush) let the waiters look again and one of them fetch
    it, the others waiting for that. A non-storable answer is another matter: it marks
    the URL hit-for-pass (README), and its waiters go alone as before. Severity: low."""
    def script(head: bytes, index: int) -> list:
        if index == 0:  # 10 of 100 bytes, a pause for the others to collapse, the close
            return [b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
                    b"Content-Length: 100\r\n\r\n" + b"b" * 10, 0.3]
        return [b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
                b"Content-Length: 4\r\n\r\nfull", 0.2]

    async with Scripted(script) as origin:
        client = await proxy(origin.url)

        async def get() -> bytes | None:
            try:
                resp = await client.get("/herd")
                return await resp.read()
            except aiohttp.ClientPayloadError:
                return None

        first = asyncio.ensure_future(get())
        await asyncio.sleep(0.1)  # the leader is in flight
        others = await asyncio.gather(*[get() for _ in range(4)])
        assert await first is None  # the leader's client saw its body cut
        assert others == [b"full"] * 4
        assert len(origin.requests) == 2, f"{len(origin.requests)} upstream requests"


async def test_waiters_behind_a_fill_given_up_for_its_size_still_go_at_once(proxy, origin):
    """The control: a fill given up because the body outgrew cache.max_object_bytes
    (chunked, no length to refuse it by) is no failure; its waiters go upstream at once,
    as before, rather than wait behind a second leader whose fill would be given up too."""
    started: list[float] = []

    async def big(request: web.Request) -> web.StreamResponse:
        started.append(asyncio.get_running_loop().time())
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        await resp.prepare(request)
        for _ in range(8):
            await resp.write(b"x" * 1024)
            await asyncio.sleep(0.1)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/big", big)
    client = await proxy(await origin(app), cache={"max_object_bytes": 2048})

    async def get() -> int:
        resp = await client.get("/big")
        return len(await resp.read())

    first = asyncio.ensure_future(get())
    await asyncio.sleep(0.05)  # the leader is in flight, its fill not yet given up
    assert await asyncio.gather(first, *[get() for _ in range(3)]) == [8192] * 4
    assert len(started) == 4
    # The three waiters were woken when the fill was given up (~0.2 s), all at once.
    assert max(started[1:]) - min(started[1:]) < 0.1, started


# -- the Redis store: what one lookup reads --------------------------------------------------------


async def test_a_hit_on_one_variant_does_not_read_every_variant_from_redis(
        origin, proxy, redis_server):
    """With the Redis store a lookup reads every variant of the URL, bodies included
    (HGETALL of its hash), and decodes them all, to serve one. A client that sends a few
    values of a field the origin varies on (Accept-Language, User-Agent, a custom one)
    fills the URL's 32 variants; from then on each request for the URL, a hit on a
    1 MiB variant here, reads 16 MiB from Redis (up to 32 x cache.max_object_bytes =
    256 MiB by default), held in the process once per concurrent request. Seen: with 32
    variants of 1 MiB each hit took ~57 ms (32 MiB read and decoded on the event loop).
    The time grows with the bytes toward cache.redis_timeout (0.5 s), past which a read
    counts as Redis down for every URL (README "When Redis is down or slow"). nginx
    keys the variant in its cache key and reads that one. Severity: medium (memory and
    time per request scale with what clients chose)."""
    from redis.asyncio import Redis

    body = b"z" * (1 << 20)

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Cache-Control": "max-age=600",
                                                "Vary": "Accept-Language"})

    app = web.Application()
    app.router.add_get("/page", page)
    client = await proxy(await origin(app), cache={
        "store": "redis", "redis_url": redis_server.url, "memory_layer_bytes": 0})
    for n in range(16):
        resp = await client.get("/page", headers={"Accept-Language": f"x-{n}"})
        assert resp.status == 200 and len(await resp.read()) == len(body)
    redis = Redis.from_url(redis_server.url)
    try:
        before = (await redis.info("stats"))["total_net_output_bytes"]
        hit = await client.get("/page", headers={"Accept-Language": "x-3"})
        assert hit.headers["X-Cache"] == "HIT" and await hit.read() == body
        read = (await redis.info("stats"))["total_net_output_bytes"] - before
    finally:
        await redis.aclose()
    assert read < 2 * len(body), f"{read} bytes read from Redis to serve {len(body)}"


# -- the size of a request head ------------------------------------------------------------------


async def test_a_request_head_of_a_megabyte_is_refused(origin, proxy):
    """A request head of 120 fields of 8,000 bytes (960 KB) was accepted, held and
    forwarded: only each field's size (8,190) and their number (128) are bounded, so
    each of proxy.max_client_connections (10,000) connections may hold about 1 MB of head
    for up to client_header_timeout (60 s). nginx refuses a head past its
    large_client_header_buffers (4 x 8 KB), Varnish past http_req_size (32 KB), Squid
    past request_header_max_size (64 KB); RFC 9110 §5.4 lets a server refuse a section
    larger than it wishes to process, with a 4xx (431, RFC 6585 §5). Severity: low."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="a")

    app = web.Application()
    app.router.add_get("/a", page)
    client = await proxy(await origin(app))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    fields = "".join(f"X-{n}: {'v' * 8000}\r\n" for n in range(120))
    writer.write(f"GET /a HTTP/1.1\r\nHost: a\r\n{fields}Connection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 431 Request Header Fields Too Large", \
        answer[:100]


async def _head_server(origin, proxy):  # type: ignore[no-untyped-def]
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"{len(await request.read())}")

    app = web.Application()
    app.router.add_route("*", "/a", page)
    client = await proxy(await origin(app))
    return await asyncio.open_connection(client.server.host, client.server.port)


async def test_a_head_trickled_past_the_bound_is_refused_before_it_ends(origin, proxy):
    """The bound holds for a head sent in pieces that never ends (held until
    client_header_timeout otherwise): 431 once it passes 64 KiB, and the connection closes."""
    reader, writer = await _head_server(origin, proxy)
    writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\n")
    for n in range(10):
        writer.write(f"X-{n}: {'v' * 8000}\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.01)
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)  # closed without the head's end
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]


async def test_heads_within_the_bound_and_large_bodies_are_not_counted(origin, proxy):
    """A 56 KB head is served; so is a 1 MB upload and the request pipelined after it:
    body bytes are not head bytes."""
    reader, writer = await _head_server(origin, proxy)
    fields = "".join(f"X-{n}: {'v' * 8000}\r\n" for n in range(7))
    body = b"b" * 1_000_000
    writer.write(f"GET /a HTTP/1.1\r\nHost: a\r\n{fields}\r\n".encode()
                 + f"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                 + body + b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    assert answer.count(b"HTTP/1.1 200 OK") == 3, answer[:300]
    assert b"\r\n\r\n1000000" in answer
