"""Review: an intercepted CONNECT (forward.intercept_tls) whose client speaks no TLS.

Each test failed on the code it was written against (commit 54b642f), where the proxy
started a TLS handshake on every intercepted CONNECT and closed the connection when the
client's first bytes were no ClientHello. Real servers on 127.0.0.1, as elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from browser import chromium
from processes import start_serve, stop
from support import echo_server, read_json_log
from test_forward_mode import forward_get, head_and_body, origin_app, raw
from test_websocket import browser_echo, echo_app, handshake

from cacheproxy.http.first_bytes import PEEK_BYTES, spoken
from cacheproxy.proxy.peek import peek
from cacheproxy.tls.ca import LocalCA


def intercepting(port: int, tmp_path: Path, **forward: Any) -> dict[str, Any]:
    return {"enabled": True, "intercept_tls": True, "connect_ports": [port],
            "ca_dir": str(tmp_path / "proxy-ca"), **forward}


async def connected(proxy_port: int, port: int) -> tuple[asyncio.StreamReader,
                                                         asyncio.StreamWriter]:
    """A CONNECT to localhost:port through the proxy, its 200 read."""
    reader, writer = await raw(proxy_port, f"CONNECT localhost:{port} HTTP/1.1\r\n"
                               f"Host: localhost:{port}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    return reader, writer


def text_frame(text: str) -> bytes:
    """A client's masked text frame (RFC 6455 §5.2, §5.3), a short one."""
    data, mask = text.encode(), os.urandom(4)
    return bytes([0x81, 0x80 | len(data)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(data))


async def connect_lines(client: Any) -> list[dict[str, Any]]:
    """The CONNECT lines, once one is written (a tunnel's line comes at its end)."""
    for _ in range(100):
        lines = [r for r in await read_json_log(client) if r["method"] == "CONNECT"]
        if lines:
            return lines
        await asyncio.sleep(0.05)
    return []


def test_first_bytes_tell_tls_from_http_from_anything_else() -> None:
    """The peek's rule, sans I/O: a TLS record of type handshake (RFC 8446 §5.1), an HTTP
    request line (RFC 9112 §3), else another protocol; too few bytes to tell: wait."""
    # (A ClientHello's record is awaited whole: its ALPN decides, test_review_h2clients.)
    assert spoken(b"\x16\x03\x01\x00\x02\x01\x00") == "tls"
    assert spoken(b"\x16\x03\x01\x02\x00\x01") is None
    assert spoken(b"\x16\x03") is None and spoken(b"") is None
    assert spoken(b"\x16\x05\x00") == "other"
    assert spoken(b"GET /socket HTTP/1.1\r\nHost: x\r\n\r\n") == "http"
    assert spoken(b"\r\nGET / HTTP/1.0\n") == "http"
    for cut in (b"G", b"GET", b"GET ", b"GET /a", b"GET /a H", b"GET /a HTTP/1.",
                b"GET / HTTP/1.1\r"):
        assert spoken(cut) is None, cut
    assert spoken(b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3\r\n") == "other"
    assert spoken(b"GET /a HTTPS/1.1\r\n") == "other"
    assert spoken(b"\x00\x00\x00\x08\x04\xd2\x16\x2f") == "other"  # PostgreSQL SSLRequest


async def test_a_ws_websocket_through_an_intercepted_connect_carries_messages(
        proxy: Any, origin: Any, tmp_path: Path) -> None:
    """Browsers open every WebSocket through an HTTP proxy with CONNECT (RFC 6455 §4.1),
    ws:// ones too: a dev server's live reload (ws://localhost:5173) with its port in
    forward.connect_ports. With intercept_tls the connection was cut at the handshake;
    now the plain HTTP inside is served, the upgrade passed on (proxy.websocket) and
    messages go both ways, as through Squid's ssl_bump with on_unsupported_protocol or
    mitmproxy. Severity: medium (every ws:// WebSocket breaks once interception is on)."""
    site = await origin(echo_app())
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward=intercepting(site.port, tmp_path),
                         log={"path": str(tmp_path / "requests.log")})
    reader, writer = await connected(client.port, site.port)
    try:
        writer.write(handshake("/ws"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        writer.write(text_frame("live reload"))
        first, size = await asyncio.wait_for(reader.readexactly(2), 5)
        assert (first, await reader.readexactly(size)) == (0x81, b"echo:live reload")
    finally:
        writer.close()
    lines = await connect_lines(client)
    assert [(r["status"], r["policy"]) for r in lines] == [(200, "intercepted")]


async def test_plain_http_in_an_intercepted_connect_is_served_and_cached_by_its_http_url(
        proxy: Any, origin: Any, tmp_path: Path) -> None:
    """Plain HTTP inside an intercepted CONNECT is served as forward-mode http requests
    are: the forward policies and the cache apply, under the http://host:port/ key an
    absolute-form request for the same URL has, so the two share entries. The second
    request on the connection is a hit. Severity: medium (it was cut)."""
    site = await origin(origin_app("plain"))
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward=intercepting(site.port, tmp_path))
    reader, writer = await connected(client.port, site.port)
    request = f"GET /page HTTP/1.1\r\nHost: localhost:{site.port}\r\n\r\n".encode()
    try:
        caches = []
        for _ in range(2):
            writer.write(request)
            status, headers, body = await head_and_body(reader)
            assert (status, body) == (200, b"plain /page")
            caches.append(headers.get("x-cache", "").split()[0])
    finally:
        writer.close()
    assert caches == ["MISS", "HIT"]
    status, headers, _ = await forward_get(client.port, f"http://localhost:{site.port}/page")
    assert (status, headers["x-cache"].split()[0]) == (200, "HIT")
    entries = await (await client.get("/_cacheproxy/entries")).json()
    assert [e["key"] for e in entries["entries"]] == [
        f"http://localhost:{site.port}/page#forward"]


async def test_a_request_line_sent_in_pieces_is_still_served_as_http(
        proxy: Any, origin: Any, tmp_path: Path) -> None:
    """A client whose request line comes in more than one segment (a slow link, a client
    writing the method alone first) is still told to speak HTTP: the peek waits for the
    line, not for the first byte only. Severity: low."""
    site = await origin(origin_app("plain"))
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward=intercepting(site.port, tmp_path))
    reader, writer = await connected(client.port, site.port)
    try:
        for piece in (b"GE", b"T /slow HT", f"TP/1.1\r\nHost: localhost:{site.port}\r\n"
                      "Connection: close\r\n\r\n".encode()):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.1)
        status, headers, body = await head_and_body(reader)
    finally:
        writer.close()
    assert (status, body) == (200, b"plain /slow")
    assert "cache-status" in headers  # served by the proxy, not tunnelled raw


async def test_a_protocol_neither_tls_nor_http_is_tunnelled_to_the_origin(
        proxy: Any, origin: Any, tmp_path: Path) -> None:
    """Another protocol to a port in connect_ports (SSH, a database) still works with
    interception on: its bytes go to the origin untouched, as through a CONNECT without
    interception (Squid's `on_unsupported_protocol tunnel`), with the tunnel's one log
    line counting them. Before, the proxy closed it at the failed TLS handshake.
    Severity: medium."""
    server, port = await echo_server(upper=True)
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward=intercepting(port, tmp_path),
                         log={"path": str(tmp_path / "requests.log")})
    try:
        reader, writer = await connected(client.port, port)
        writer.write(b"SSH-2.0-OpenSSH_9.6 x\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(23), 5) == b"SSH-2.0-OPENSSH_9.6 X\r\n"
        writer.write(b"y" * 100_000)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(100_000), 5) == b"Y" * 100_000
        writer.close()
        lines = await connect_lines(client)
    finally:
        server.close()
    assert [(r["status"], r["cache"], r["bytes"], r["bytes_in"]) for r in lines] == \
        [(200, "TUNNEL", 100_023, 100_023)]


async def test_a_client_silent_after_the_200_is_closed_at_client_header_timeout(
        proxy: Any, origin: Any, tmp_path: Path) -> None:
    """A client that sends nothing after an intercepted CONNECT's 200 holds a connection
    (and a descriptor) as one sending no request head does: it is closed at
    proxy.client_header_timeout, as nginx's client_header_timeout would. It waited for
    the TLS handshake's own 30 s whatever that timeout said. Severity: low."""
    site = await origin(origin_app("plain"))
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward=intercepting(site.port, tmp_path),
                         proxy={"client_header_timeout": 1})
    reader, writer = await connected(client.port, site.port)
    started = time.monotonic()
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    assert time.monotonic() - started < 3


async def test_chromium_opens_a_ws_websocket_with_interception_on(
        proxy: Any, origin: Any, tmp_path: Path) -> None:
    """What a user sees: Chromium with its proxy setting on this proxy, interception on,
    a page at http://localhost:P opening ws://localhost:P/ws (a CONNECT localhost:P, P in
    connect_ports): the WebSocket opens and echoes. It failed with "websocket error".
    Severity: medium."""
    app = echo_app()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>ws</title>", content_type="text/html")

    app.router.add_get("/index.html", page)
    site = await origin(app)
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward=intercepting(site.port, tmp_path,
                                                        allow_hosts=["localhost"]))
    async with chromium(f"--proxy-server=http://127.0.0.1:{client.port}",
                        "--proxy-bypass-list=<-loopback>") as browser:
        tab = await browser.new_page()
        await tab.goto(f"http://localhost:{site.port}/index.html")
        got = await browser_echo(tab, f"ws://localhost:{site.port}/ws")
    assert got == "echo:from chromium"



async def test_a_raw_tunnel_is_vetted_by_address_as_any_connect_is(
        proxy: Any, origin: Any, tmp_path: Path) -> None:
    """The bytes of a protocol neither TLS nor HTTP go to the origin only past the same
    check by address a CONNECT without interception gets (`deny_hosts = ["127.0.0.1"]`
    keeps `localhost` off local services): refused after its 200, the connection is
    closed before anything is connected, and the line says 403 DENIED. Guards the raw
    tunnel added for such clients. Severity: high if it were missing (a way around
    deny_hosts)."""
    reached: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reached.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward=intercepting(port, tmp_path,
                                                        deny_hosts=["127.0.0.1"]),
                         log={"path": str(tmp_path / "requests.log")})
    try:
        reader, writer = await connected(client.port, port)
        writer.write(b"SSH-2.0-OpenSSH_9.6 x\r\n")
        await writer.drain()
        # (Closed with those bytes unread: a reset, as the kernel sends then, or a FIN.)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        lines = await connect_lines(client)
    finally:
        server.close()
    assert reached == []
    assert [(r["status"], r["cache"]) for r in lines] == [(403, "DENIED")]


async def test_the_served_process_on_uvloop_tells_all_three_apart(origin: Any,
                                                                   tmp_path: Path) -> None:
    """The same through `cacheproxy serve` (uvloop, whose start_tls and descriptor
    bookkeeping differ from asyncio's that the in-process tests run on): on one port in
    connect_ports, a TLS client is still intercepted (its request answered through the
    proxy's TLS, under the local CA), a plain HTTP client served (a hit the second time),
    another protocol tunnelled, and a silent client closed at client_header_timeout."""
    site = await origin(echo_app())
    server, echo_port = await echo_server(upper=True)
    ca_dir = tmp_path / "proxy-ca"
    site_ca = LocalCA.load_or_create(tmp_path / "site-ca")
    tls_site = await asyncio.start_server(
        tls_page, "127.0.0.1", 0, ssl=site_ca.server_context("localhost"))
    tls_port = tls_site.sockets[0].getsockname()[1]
    config = tmp_path / "cacheproxy.toml"
    config.write_text(f"""
[proxy]
upstream = "http://127.0.0.1:{site.port}"
client_header_timeout = 1
upstream_ca_file = "{site_ca.cert_path}"
[log]
format = "off"
[forward]
enabled = true
intercept_tls = true
connect_ports = [{site.port}, {echo_port}, {tls_port}]
ca_dir = "{ca_dir}"
""")
    proc, port = await start_serve("--config", str(config), cwd=tmp_path)
    try:
        reader, writer = await connected(port, tls_port)
        await writer.start_tls(ssl.create_default_context(cafile=str(ca_dir / "ca-cert.pem")),
                               server_hostname="localhost")
        writer.write(f"GET /x HTTP/1.1\r\nHost: localhost:{tls_port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        status, headers, body = await head_and_body(reader)
        assert (status, body, "cache-status" in headers) == (200, b"tls /x", True)
        writer.close()

        reader, writer = await connected(port, site.port)
        caches = []
        for _ in range(2):
            writer.write(f"GET /page HTTP/1.1\r\nHost: localhost:{site.port}\r\n\r\n".encode())
            status, headers, body = await head_and_body(reader)
            caches.append((status, body, headers["x-cache"].split()[0]))
        writer.close()
        assert caches == [(200, b"GET /page", "MISS"), (200, b"GET /page", "HIT")]

        reader, writer = await connected(port, echo_port)
        writer.write(b"\x00\x01binary\xff")
        assert await asyncio.wait_for(reader.readexactly(9), 5) == b"\x00\x01BINARY\xff"
        writer.close()

        reader, writer = await connected(port, site.port)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert time.monotonic() - started < 3
        writer.close()
    finally:
        server.close()
        tls_site.close()
        code, err = await stop(proc)
    assert (code, "Traceback" in err) == (0, False), err


async def tls_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An https origin that answers one request with its path."""
    head = await reader.readuntil(b"\r\n\r\n")
    body = b"tls " + head.split(b" ", 2)[1]
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (len(body), body))
    await writer.drain()
    writer.close()


async def _peeking(client_sends: list[bytes], timeout: float, gap: float = 0.0
                   ) -> tuple[bytes, int, float, int]:
    """peek() on a real accepted connection whose client sends client_sends (gap seconds
    apart; b"" closes its side): what it returned, how often it looked (enough's calls),
    how long it took, and the socket's low-water mark afterwards."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Side(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.pause_reading()  # (as connect.py does before peeking)
            accepted.set_result(transport)  # type: ignore[arg-type]

    server = await loop.create_server(Side, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    transport = await accepted
    looks = 0

    def enough(head: bytes) -> bool:
        nonlocal looks
        looks += 1
        return spoken(head) is not None

    async def send() -> None:
        for i, data in enumerate(client_sends):
            if i:
                await asyncio.sleep(gap)
            if data:
                writer.write(data)
            else:
                writer.write_eof()

    sender = asyncio.ensure_future(send())
    began = time.monotonic()
    try:
        head = await peek(transport, PEEK_BYTES, enough, timeout)
        took = time.monotonic() - began
        lowat = transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET,
                                                              socket.SO_RCVLOWAT)
    finally:
        await sender
        writer.close()
        transport.close()
        server.close()
    return head, looks, took, lowat


async def test_a_client_stalled_mid_request_line_does_not_keep_the_peek_busy():
    """A client that sends "GET" after the 200 of an intercepted CONNECT and nothing more
    (a slowloris): the bytes peeked stay readable, so the poller woke at once for them,
    and the peek looked again every 10 ms for all of client_header_timeout: a wake-up
    and a recv per 10 ms per such connection (a thousand of them: a core busy, with
    proxy.max_client_connections at 10,000). The socket's low-water mark makes only a
    new byte wake it. Severity: low (forward mode with intercept_tls; a local proxy)."""
    head, looks, took, lowat = await _peeking([b"GET"], timeout=1.0)
    assert head == b"GET" and took >= 0.9
    assert looks <= 3, f"{looks} looks in {took:.1f} s"
    assert lowat == 1  # the transport reads from the first byte again


async def test_the_peek_still_sees_the_rest_of_a_line_and_a_close_at_once():
    head, _, took, lowat = await _peeking(
        [b"GET / HT", b"TP/1.1\r\nHost: x\r\n\r\n"], timeout=5.0, gap=0.2)
    assert spoken(head) == "http" and took < 1.0 and lowat == 1
    head, _, took, lowat = await _peeking([b"GE", b""], timeout=5.0, gap=0.2)
    assert head == b"GE" and took < 1.0 and lowat == 1  # closed: not held to the timeout
