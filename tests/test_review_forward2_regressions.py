"""A second reviewer's findings on forward mode, as an attacker or a hostile network would
use it (absolute-form requests, CONNECT, interception).

Each test failed on the code it was written against (commit c3d2749); its docstring says
what happened, what should happen and why. Real servers on 127.0.0.1, as elsewhere."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator

import pytest
from support import dns_reply, raw_origin, read_json_log
from test_forward_mode import forward_get, head_and_body, origin_app, raw
from test_review_forward_regressions import _intercepted

from cacheproxy.tls.ca import LocalCA

SLOW_SUFFIX = ".slow.example"


class Nameserver(asyncio.DatagramProtocol):
    """A DNS server on 127.0.0.1 (RFC 1035 over UDP): names under .slow.example get no
    answer ever, as from an authoritative server that never answers; any other name
    resolves to 127.0.0.1 (A) and has no AAAA. It counts the questions it got."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        name, reply = loopback_answer(data)
        self.asked.append(name)
        if not name.endswith(SLOW_SUFFIX):
            self.transport.sendto(reply, addr)  # type: ignore[attr-defined]


def loopback_answer(query: bytes) -> tuple[str, bytes]:
    """The name a DNS query asks about, and the reply that resolves it to 127.0.0.1 (an A
    record; an AAAA question gets no answer record)."""
    return dns_reply(query, a=("127.0.0.1",))


@pytest.fixture
async def nameserver() -> AsyncIterator[tuple[Nameserver, int]]:
    transport, server = await asyncio.get_running_loop().create_datagram_endpoint(
        Nameserver, local_addr=("127.0.0.1", 0))
    yield server, transport.get_extra_info("sockname")[1]
    transport.close()


async def test_slow_lookups_of_some_names_do_not_stall_every_other_request(
        proxy, origin, nameserver):
    """Every name forward mode was asked for was looked up with getaddrinfo in the event
    loop's thread pool (uvloop: libuv's 4 threads; asyncio: min(32, cores + 4)), and so
    was the reverse upstream's name for each new connection. A client, or any web page the
    browser opens through the proxy (`<img src=http://r1.attacker.example/>` ...), that
    names a few hosts whose DNS answers slowly (its own nameserver, which never answers)
    filled those threads, and every other lookup waited behind them: a request for a site
    that resolves at once and the reverse upstream's own new connections took as long as
    the queue, and past proxy.connect_timeout they were 504s. Seen with `cacheproxy serve`
    on this machine, whose resolver answers no DNS: 40 requests for names that fail to
    resolve in 5 s made a request for `http://localhost:<port>/` take 4 s. Squid (its own
    asynchronous DNS client, `dns_timeout`) and nginx (`resolver`) do not hold a thread
    per lookup, so one slow name delays only the requests for it; forward mode's lookups
    are now c-ares's, here against a real DNS server on loopback (forward.resolver).
    Severity: medium (anyone who can make the browser fetch a few URLs stalled the proxy
    for every user, reverse mode included)."""
    server, port = nameserver
    upstream = await origin(origin_app("upstream"))
    other = await origin(origin_app("other"))
    client = await proxy(f"http://localhost:{upstream.port}", proxy={"connect_timeout": 2},
                         forward={"enabled": True, "resolver": [f"127.0.0.1:{port}"],
                                  "allow_hosts": ["*.fast.example", f"*{SLOW_SUFFIX}"]})
    slow = [asyncio.create_task(forward_get(client.port, f"http://n{i}{SLOW_SUFFIX}/"))
            for i in range(40)]
    await asyncio.sleep(0.5)  # (they are being looked up)
    try:
        started = time.perf_counter()
        status, _, body = await forward_get(
            client.port, f"http://site.fast.example:{other.port}/a")
        forward_took = time.perf_counter() - started
        started = time.perf_counter()
        resp = await client.get("/b")  # the reverse upstream, named "localhost"
        reverse_body = await resp.read()
        reverse_took = time.perf_counter() - started
    finally:
        results = await asyncio.gather(*slow, return_exceptions=True)
    assert (status, body) == (200, b"other /a")
    assert (resp.status, reverse_body) == (200, b"upstream /b")
    assert all(not isinstance(r, BaseException) and r[0] in (502, 504) for r in results)
    assert forward_took < 1.0 and reverse_took < 1.0, (forward_took, reverse_took)
    assert "site.fast.example" in server.asked and f"n0{SLOW_SUFFIX}" in server.asked


async def test_an_options_request_for_a_whole_server_goes_on_as_options_asterisk(proxy, origin):
    """`OPTIONS http://site:port HTTP/1.1` (absolute-form, empty path, no query) asks about
    the site's server as a whole; RFC 9112 §3.2.4: "the last proxy on the request chain
    MUST send a request-target of "*" when it forwards the request to the indicated origin
    server". The proxy sent `OPTIONS / HTTP/1.1`, a question about the root resource,
    whose answer (its Allow, a CORS policy of "/") may differ from the server's.
    Severity: low."""
    lines: list[bytes] = []

    def answer(head: bytes) -> bytes:
        lines.append(head.split(b"\r\n", 1)[0])
        return b"HTTP/1.1 200 OK\r\nAllow: GET\r\nContent-Length: 0\r\n\r\n"

    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward={"enabled": True})
    async with raw_origin(answer) as port:
        for target in (f"http://localhost:{port}", f"http://localhost:{port}/",
                       f"http://localhost:{port}?x=1"):
            reader, writer = await raw(client.port, (
                f"OPTIONS {target} HTTP/1.1\r\nHost: localhost:{port}\r\n"
                "Connection: close\r\n\r\n").encode())
            status, _, _ = await head_and_body(reader)
            writer.close()
            assert status == 200
    assert lines == [b"OPTIONS * HTTP/1.1", b"OPTIONS / HTTP/1.1", b"OPTIONS /?x=1 HTTP/1.1"]


async def test_a_connect_whose_client_left_before_the_answer_is_logged_499(
        proxy, origin, nameserver, tmp_path):
    """A client that sends `CONNECT` and leaves (its connection reset) while the proxy is
    still looking the host up (or connecting) was never answered; its line said 502 (the
    lookup failed after it left), where the tunnel that succeeds after the client left
    says 499, as nginx logs a
    request whose client closed the connection before its answer. The log, the dashboard's
    error count and `cacheproxy logs` then count an upstream error that no client saw.
    Severity: low."""
    upstream = await origin(origin_app("upstream"))
    _, port = nameserver
    client = await proxy(upstream, log={"path": str(tmp_path / "requests.log")},
                         proxy={"connect_timeout": 1},
                         forward={"enabled": True, "allow_hosts": [f"*{SLOW_SUFFIX}"],
                                  "resolver": [f"127.0.0.1:{port}"]})
    _, writer = await raw(client.port, f"CONNECT gone{SLOW_SUFFIX}:443 HTTP/1.1\r\n"
                                       f"Host: gone{SLOW_SUFFIX}:443\r\n\r\n".encode())
    await asyncio.sleep(0.3)
    # Gone (a reset, as a closed tab's socket): a FIN alone may be a half-close.
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
    writer.close()
    await asyncio.sleep(1.5)  # the lookup fails (connect_timeout) after the client left
    lines = [r for r in await read_json_log(client) if r["method"] == "CONNECT"]
    assert [(r["status"], r["cache"]) for r in lines] == [(499, "TUNNEL")]


async def test_an_intercepted_connect_that_carries_no_tls_is_not_cut(proxy, origin, tmp_path):
    """Browsers open every WebSocket through an HTTP proxy with CONNECT (RFC 6455 §4.1),
    `ws://` ones too, whose tunnel then carries plain HTTP (`GET /socket` with `Upgrade:
    websocket`): a dev server's live reload on ws://localhost:5173, say, with that port in
    forward.connect_ports. With forward.intercept_tls the proxy started a TLS handshake on
    every CONNECT and closed the connection when the client's first bytes were no
    ClientHello (logged only as an INFO "the client's TLS handshake failed"), so no plain
    connection through a CONNECT works while interception is on. Squid's ssl_bump peeks
    at the first bytes and tunnels what is not TLS (`on_unsupported_protocol tunnel`), as
    mitmproxy does. Severity: low (plain ws:// is rare off localhost, and connect_ports
    must name the port)."""
    site = await origin(origin_app("plain"))
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward={
        "enabled": True, "intercept_tls": True, "connect_ports": [site.port],
        "ca_dir": str(tmp_path / "proxy-ca")})
    reader, writer = await raw(client.port, f"CONNECT localhost:{site.port} HTTP/1.1\r\n"
                               f"Host: localhost:{site.port}\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
        b"HTTP/1.1 200")
    writer.write(f"GET /socket HTTP/1.1\r\nHost: localhost:{site.port}\r\n"
                 "Connection: close\r\n\r\n".encode())
    try:
        status, _, body = await head_and_body(reader)
    except (ValueError, IndexError, asyncio.IncompleteReadError, ConnectionError) as exc:
        pytest.fail(f"the connection was cut: {exc!r}")
    finally:
        writer.close()
    assert (status, body) == (200, b"plain /socket")


async def test_options_asterisk_inside_an_intercepted_tunnel_is_the_origins_to_answer(
        proxy, origin, tmp_path):
    """Inside an intercepted CONNECT the client believes it speaks to the origin, so its
    `OPTIONS * HTTP/1.1` (RFC 9110 §9.3.7: about the server in general) is the origin's
    question; the proxy answered it itself (its own Allow list, no request upstream), so
    the client learnt the proxy's methods as the site's. Squid's ssl_bump, and any
    proxy that forwards the requests of a bumped tunnel, send it on to the origin as
    "OPTIONS *" (RFC 9112 §3.2.4). Severity: low."""
    lines: list[bytes] = []
    site_ca = LocalCA.load_or_create(tmp_path / "site-ca")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines.append(head.split(b"\r\n", 1)[0])
        writer.write(b"HTTP/1.1 200 OK\r\nAllow: GET, OPTIONS\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    site = await asyncio.start_server(serve, "127.0.0.1", 0,
                                      ssl=site_ca.server_context("localhost"))
    port = site.sockets[0].getsockname()[1]
    upstream = await origin(origin_app("upstream"))
    ca_dir = tmp_path / "proxy-ca"
    client = await proxy(upstream, proxy={"upstream_ca_file": str(site_ca.cert_path)},
                         forward={"enabled": True, "intercept_tls": True,
                                  "connect_ports": [port], "ca_dir": str(ca_dir)})
    try:
        reader, writer = await _intercepted(client, ca_dir, port)
        writer.write(f"OPTIONS * HTTP/1.1\r\nHost: localhost:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        status, headers, _ = await head_and_body(reader)
        writer.close()
    finally:
        site.close()
    assert lines == [b"OPTIONS * HTTP/1.1"]
    assert (status, headers.get("allow")) == (200, "GET, OPTIONS")
