"""Defects found reviewing the https upstream path in reverse mode (proxy.upstream =
"https://..."), against real TLS origins on 127.0.0.1: each test failed before its fix
(or is marked xfail, strict, with the reason it stays)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from processes import clean_env, start_serve, stop

from cacheproxy.tls.ca import LocalCA

TIMEOUT = 5.0


# -- a stalled origin's TLS connection, once closed, holds no pool slot ------------------------


async def _stalled_origin(ca: LocalCA) -> tuple[asyncio.AbstractServer, list[asyncio.StreamWriter]]:
    """An https origin that never answers /slow and stops reading that connection (a hung
    worker, a full accept queue behind a TLS terminator): it never takes our close_notify,
    nor sends its own. Other paths get a small whole answer."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        if b" /slow " in head:
            writer.transport.pause_reading()
            await asyncio.sleep(3600)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(3600)

    server = await asyncio.start_server(serve, "127.0.0.1", 0,
                                        ssl=ca.server_context("127.0.0.1"))
    return server, writers


@pytest.fixture
async def stalled(tmp_path: Path) -> AsyncIterator[tuple[LocalCA, int]]:
    ca = LocalCA.load_or_create(tmp_path / "ca")
    server, writers = await _stalled_origin(ca)
    try:
        yield ca, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()


@pytest.mark.parametrize("where", ["serve", "in-process"])
async def test_a_tls_connection_closed_after_a_read_timeout_frees_its_pool_slot_at_once(
        stalled, proxy, tmp_path, where):
    """After a read timeout (504) on an https origin that had stopped reading, the next
    request got 503 "no upstream connection free" for all of proxy.connect_timeout with
    proxy.max_connections = 1, where over plain http it went out at once. Closing a TLS
    transport sends close_notify and then waits for the peer's (asyncio's and uvloop's
    ssl_shutdown_timeout, 30 s): the connection stays counted in the pool, and its socket
    open, until then. nginx sends close_notify without waiting (and none after a
    timeout, SSL_set_quiet_shutdown) and frees the upstream connection at once. Every
    read timeout against a stalled https origin takes a slot for 30 s: with the default
    max_connections a few hung requests make every other request 503, a self-inflicted
    outage of the whole site (stale-if-error aside). Severity: medium."""
    ca, origin_port = stalled
    upstream = f"https://127.0.0.1:{origin_port}"
    settings = {"upstream_ca_file": str(ca.cert_path), "max_connections": 1,
                "read_timeout": 0.5, "connect_timeout": 2.0}
    if where == "serve":
        env = clean_env(CACHEPROXY_LOG_FORMAT="off", **{
            f"CACHEPROXY_PROXY_{key.upper()}": str(value) for key, value in settings.items()})
        proc, port = await start_serve("--upstream", upstream, cwd=tmp_path, env=env)
    else:
        client = await proxy(upstream, proxy=settings)
        port = client.server.port
    try:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"http://127.0.0.1:{port}/slow") as resp:
                assert resp.status == 504
            started = time.monotonic()
            async with session.get(f"http://127.0.0.1:{port}/next") as resp:
                status, body = resp.status, await resp.text()
            took = time.monotonic() - started
    finally:
        if where == "serve":
            await stop(proc)
    assert status == 200 and body == "ok", (
        f"the closed TLS connection still held the only pool slot: {status} {body!r} "
        f"after {took:.1f}s")


# -- a certificate refused: the WARNING says which check failed ---------------------------------


async def _tls_site(ctx) -> tuple[web.AppRunner, int]:
    """An aiohttp origin over TLS (ctx) on 127.0.0.1: "hi" at every path."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/{path:.*}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.mark.parametrize("case", ["unknown-issuer", "name-mismatch", "expired"])
async def test_a_refused_origin_certificate_is_logged_with_the_check_that_failed(
        proxy, tmp_path, caplog, case):
    """An https origin whose certificate is refused got a 502 (right: no plaintext
    fallback, no unverified answer) whose WARNING said only "TLS failure
    (CERTIFICATE_VERIFY_FAILED)", whatever the check that failed: an issuer not trusted
    (a private CA not in proxy.upstream_ca_file), a certificate for another name (an
    upstream given by IP address whose certificate names only its DNS name, the common
    mistake), or one expired all read the same, and the operator has to reproduce the
    handshake with openssl s_client to learn which. nginx logs "upstream SSL certificate
    verify error: (19:self-signed certificate in certificate chain)" or "upstream SSL
    certificate does not match "127.0.0.1"". OpenSSL's verify message is at hand
    (SSLCertVerificationError.verify_message). Severity: low (diagnosis only)."""
    caplog.set_level(logging.WARNING, logger="cacheproxy")
    ca = LocalCA.load_or_create(tmp_path / "ca")
    if case == "unknown-issuer":
        runner, port = await _tls_site(ca.server_context("127.0.0.1"))
        client = await proxy(f"https://127.0.0.1:{port}")  # the CA is not trusted
        expected = "self-signed certificate in certificate chain"  # (it sends the CA)
    elif case == "expired":  # a leaf made two years ago (valid 398 days)
        then = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=730)
        runner, port = await _tls_site(ca.server_context("127.0.0.1", now=then))
        client = await proxy(f"https://127.0.0.1:{port}",
                             proxy={"upstream_ca_file": str(ca.cert_path)})
        expected = "certificate has expired"
    else:
        runner, port = await _tls_site(ca.server_context("localhost"))
        client = await proxy(f"https://127.0.0.1:{port}",
                             proxy={"upstream_ca_file": str(ca.cert_path)})
        expected = "IP address mismatch"  # "..., certificate is not valid for '127.0.0.1'"
    try:
        resp = await client.get("/page")
        body = await resp.text()
    finally:
        await runner.cleanup()
    assert resp.status == 502 and "TLS" in body
    warnings = [r.getMessage() for r in caplog.records if "failed for GET /page" in r.getMessage()]
    assert len(warnings) == 1
    assert expected in warnings[0], f"the WARNING does not say which check failed: {warnings}"
