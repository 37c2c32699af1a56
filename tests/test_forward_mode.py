"""Forward mode through the proxy's listener: absolute-form requests to the origin they name,
the [forward] gate, CONNECT tunnels, and CONNECT with TLS interception (real TLS on
127.0.0.1: an https origin with a certificate from its own CA, trusted through
proxy.upstream_ca_file; the proxy's local CA trusted by the test client)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import echo_server, read_json_log

from cacheproxy.tls.ca import LocalCA

SEEN = web.AppKey("seen", list)


def origin_app(name: str) -> web.Application:
    seen: list[str] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path_qs} host={request.headers.get('Host')}")
        return web.Response(text=f"{name} {request.path}",
                            headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app[SEEN] = seen
    app.router.add_route("*", "/{tail:.*}", page)
    return app


async def raw(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def head_and_body(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status = int((await asyncio.wait_for(reader.readline(), 5)).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, value = line.decode("latin-1").split(":", 1)
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return status, headers, await reader.readexactly(length)


async def forward_get(port: int, url: str, *fields: str) -> tuple[int, dict[str, str], bytes]:
    host = url.split("/")[2]
    lines = [f"GET {url} HTTP/1.1", f"Host: {host}", *fields, "Connection: close"]
    reader, writer = await raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        return await head_and_body(reader)
    finally:
        writer.close()


@pytest.fixture
async def two_origins(origin):
    upstream = await origin(origin_app("upstream"))
    other = await origin(origin_app("other"))
    return upstream, other


async def test_absolute_form_goes_to_the_origin_it_names_and_is_cached_by_its_url(
        proxy, two_origins):
    upstream, other = two_origins
    client = await proxy(upstream, forward={"enabled": True})
    url = f"http://localhost:{other.port}/page?x=1"
    status, headers, body = await forward_get(client.port, url)
    assert (status, body) == (200, b"other /page")
    assert headers["x-cache"] == "MISS"
    status, headers, body = await forward_get(client.port, url)
    assert (status, body, headers["x-cache"]) == (200, b"other /page", "HIT")
    assert other.app[SEEN] == [f"GET /page?x=1 host=localhost:{other.port}"]
    # Origin-form still goes to the configured upstream.
    resp = await client.get("/page")
    assert await resp.text() == "upstream /page"
    keys = {e["key"] for e in (await (await client.get("/_cacheproxy/entries")).json())
            ["entries"]}
    assert f"http://localhost:{other.port}/page?x=1#forward" in keys


async def test_forward_and_reverse_entries_never_answer_for_each_other(proxy, two_origins):
    """An origin-form request with a Host naming another site is answered by the
    upstream and, with X-Forwarded-Host on, keyed by the client's URL: a forward request
    for that very URL must not get it (nor the other way round). Forward entries are
    keyed apart ("#forward"), listed so, and purged by their listed key."""
    upstream, other = two_origins
    client = await proxy(upstream, forward={"enabled": True})
    site = f"127.0.0.1:{other.port}"
    forged = await client.get("/page", headers={"Host": site})  # reverse mode, any Host
    assert await forged.text() == "upstream /page" and forged.headers["X-Cache"] == "MISS"
    status, headers, body = await forward_get(client.port, f"http://{site}/page")
    assert (status, body, headers["x-cache"]) == (200, b"other /page", "MISS")
    # The other way: a forward fetch first, then a reverse request with that Host.
    status, headers, body = await forward_get(client.port, f"http://{site}/b")
    assert (body, headers["x-cache"]) == (b"other /b", "MISS")
    reverse = await client.get("/b", headers={"Host": site})
    assert await reverse.text() == "upstream /b" and reverse.headers["X-Cache"] == "MISS"
    for path, text in (("/page", b"other /page"), ("/b", b"other /b")):  # each kept apart
        status, headers, body = await forward_get(client.port, f"http://{site}{path}")
        assert (body, headers["x-cache"]) == (text, "HIT")
        again = await client.get(path, headers={"Host": site})
        assert await again.text() == f"upstream {path}" and again.headers["X-Cache"] == "HIT"
    keys = {e["key"] for e in (await (await client.get("/_cacheproxy/entries")).json())
            ["entries"]}
    assert {f"http://{site}/page", f"http://{site}/page#forward"} <= keys
    purged = await client.post("/_cacheproxy/purge",
                               params={"url": f"http://{site}/page#forward"})
    assert purged.status == 200
    _, headers, _ = await forward_get(client.port, f"http://{site}/page")
    assert headers["x-cache"] == "MISS"
    again = await client.get("/page", headers={"Host": site})
    assert again.headers["X-Cache"] == "HIT"  # the reverse entry stayed


async def test_absolute_form_without_forward_mode_keeps_going_to_the_upstream(
        proxy, two_origins):
    upstream, other = two_origins
    client = await proxy(upstream)
    _, _, body = await forward_get(client.port, f"http://localhost:{other.port}/p")
    assert body == b"upstream /p"
    assert other.app[SEEN] == []


async def test_hosts_outside_allow_hosts_and_in_deny_hosts_are_refused(proxy, two_origins,
                                                                       tmp_path: Path):
    upstream, other = two_origins
    client = await proxy(upstream, forward={"enabled": True,
                                            "allow_hosts": ["localhost", "127.0.0.2"],
                                            "deny_hosts": ["127.0.0.2"]},
                         log={"path": str(tmp_path / "requests.log")})
    status, _, _ = await forward_get(client.port, f"http://127.0.0.2:{other.port}/p")
    assert status == 403  # deny wins
    status, _, _ = await forward_get(client.port, f"http://127.0.0.3:{other.port}/p")
    assert status == 403  # not allowed
    status, _, _ = await forward_get(client.port, f"http://localhost:{other.port}/p")
    assert status == 200
    assert other.app[SEEN] == [f"GET /p host=localhost:{other.port}"]
    lines = await read_json_log(client)
    refused = [r for r in lines if r["status"] == 403]
    assert len(refused) == 2 and all(r["cache"] == "DENIED" for r in refused)
    assert all(r["policy"].startswith("forward: ") for r in refused)


async def test_admin_paths_on_another_host_are_that_hosts(proxy, two_origins):
    upstream, other = two_origins
    client = await proxy(upstream, forward={"enabled": True})
    _, _, body = await forward_get(client.port,
                                   f"http://localhost:{other.port}/_cacheproxy/stats")
    assert body == b"other /_cacheproxy/stats"  # forwarded, not our admin API
    status, _, body = await forward_get(client.port,
                                        f"http://127.0.0.1:{client.port}/_cacheproxy/healthz")
    assert status == 200 and b"alive" in body  # this proxy's own, named as itself


async def test_a_request_naming_the_proxy_itself_is_its_own_site_not_a_loop(
        proxy, two_origins):
    """Named as itself (its address, a loopback name), the proxy is the origin server:
    the request is the site behind it, as in origin-form with that Host, never forwarded
    back to itself (review-browser3; was a 508, which kept a browser using the proxy from
    opening that site). 0.0.0.0 names no server: still 508."""
    upstream, _ = two_origins
    client = await proxy(upstream, forward={"enabled": True})
    for host in ("127.0.0.1", "localhost", "127.1"):
        status, _, body = await forward_get(client.port, f"http://{host}:{client.port}/p")
        assert (status, body) == (200, b"upstream /p"), host
    assert [line.split(" host=")[0] for line in upstream.app[SEEN]] == ["GET /p"] * 3
    status, _, _ = await forward_get(client.port, f"http://0.0.0.0:{client.port}/p")
    assert status == 508
    assert len(upstream.app[SEEN]) == 3


async def test_connect_tunnels_bytes_both_ways_and_logs_one_tunnel_line(proxy, two_origins,
                                                                        tmp_path: Path):
    upstream, _ = two_origins
    server, port = await echo_server(upper=True)
    try:
        client = await proxy(upstream, forward={"enabled": True, "connect_ports": [port]},
                             log={"path": str(tmp_path / "requests.log")})
        reader, writer = await raw(client.port, f"CONNECT localhost:{port} HTTP/1.1\r\n"
                                   f"Host: localhost:{port}\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.startswith(b"HTTP/1.1 200")
        assert await reader.readline() == b"\r\n"
        writer.write(b"hello tunnel")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(12), 5) == b"HELLO TUNNEL"
        writer.write(b"x" * 200_000)  # more than one socket buffer, both ways
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(200_000), 5) == b"X" * 200_000
        writer.close()
        for _ in range(50):
            lines = [r for r in await read_json_log(client) if r["method"] == "CONNECT"]
            if lines:
                break
            await asyncio.sleep(0.05)
        assert len(lines) == 1
        tunnel = lines[0]
        assert (tunnel["cache"], tunnel["status"]) == ("TUNNEL", 200)
        assert tunnel["bytes"] == tunnel["bytes_in"] == 200_012
        stats = await (await client.get("/_cacheproxy/stats")).json()
        assert stats["by_cache"].get("ERROR", 0) == 0
    finally:
        server.close()


async def test_an_idle_tunnel_is_closed_at_tunnel_idle_timeout(proxy, two_origins, tmp_path,
                                                               caplog):
    """A tunnel carrying no byte either way for forward.tunnel_idle_timeout is closed on
    both sides (a client gone without a FIN would hold both sockets for good), logged as
    a tunnel; one that keeps carrying bytes is not, however long it lasts."""
    caplog.set_level(logging.INFO, logger="cacheproxy")
    upstream, _ = two_origins
    server, port = await echo_server(upper=True)
    try:
        client = await proxy(upstream, forward={"enabled": True, "connect_ports": [port],
                                                "tunnel_idle_timeout": 0.6},
                             log={"path": str(tmp_path / "requests.log")})
        head = f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"
        busy_r, busy_w = await raw(client.port, head.encode())
        idle_r, idle_w = await raw(client.port, head.encode())
        for reader in (busy_r, idle_r):
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
                b"HTTP/1.1 200")
        for _ in range(6):  # 1.2 s in all, a byte every 0.2 s
            busy_w.write(b"a")
            assert await asyncio.wait_for(busy_r.readexactly(1), 5) == b"A"
            await asyncio.sleep(0.2)
        assert await asyncio.wait_for(idle_r.read(), 5) == b""  # closed by the proxy
        busy_w.write(b"b")  # the busy one is still open
        assert await asyncio.wait_for(busy_r.readexactly(1), 5) == b"B"
        busy_w.close()
        idle_w.close()
        for _ in range(50):
            lines = [r for r in await read_json_log(client) if r["method"] == "CONNECT"]
            if len(lines) == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted(r["bytes"] for r in lines) == [0, 7]
        assert all((r["cache"], r["status"]) == ("TUNNEL", 200) for r in lines)
        assert any("tunnel_idle_timeout" in r.getMessage() for r in caplog.records)
    finally:
        server.close()


async def test_connect_is_refused_off_its_ports_and_without_forward_mode(proxy, two_origins):
    upstream, _ = two_origins
    server, port = await echo_server(upper=True)
    try:
        off = await proxy(upstream)
        reader, writer = await raw(off.port, f"CONNECT localhost:{port} HTTP/1.1\r\n"
                                   f"Host: localhost:{port}\r\n\r\n".encode())
        status, headers, _ = await head_and_body(reader)
        assert status == 405 and "cacheproxy" in headers["via"]
        assert headers["allow"] == ""  # RFC 9110 §15.5.6: a MUST; none, by configuration
        writer.close()
        on = await proxy(upstream, forward={"enabled": True})  # connect_ports = [443]
        reader, writer = await raw(on.port, f"CONNECT localhost:{port} HTTP/1.1\r\n"
                                   f"Host: localhost:{port}\r\n\r\n".encode())
        status, _, body = await head_and_body(reader)
        assert status == 403 and b"connect_ports" in body
        writer.close()
    finally:
        server.close()


async def test_a_connect_to_a_closed_port_is_a_502(proxy, two_origins):
    upstream, _ = two_origins
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        unused_tcp_port = s.getsockname()[1]
    client = await proxy(upstream, forward={"enabled": True,
                                            "connect_ports": [unused_tcp_port]})
    reader, writer = await raw(client.port, f"CONNECT 127.0.0.1:{unused_tcp_port} HTTP/1.1\r\n"
                               f"Host: x\r\n\r\n".encode())
    status, _, _ = await head_and_body(reader)
    assert status == 502
    writer.close()


# --- interception ------------------------------------------------------------------------


@pytest.fixture
async def https_origin(origin, tmp_path: Path):
    """An https origin on 127.0.0.1 whose certificate (for "localhost") comes from a CA of
    its own, and that CA's file for proxy.upstream_ca_file."""
    origin_ca = LocalCA.load_or_create(tmp_path / "origin-ca")
    app = origin_app("secure")
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=origin_ca.server_context("localhost"))
    try:
        yield server, str(origin_ca.cert_path)
    finally:
        await server.close()


async def test_intercepted_connect_caches_https_by_its_url(proxy, two_origins, https_origin,
                                                           tmp_path: Path):
    upstream, _ = two_origins
    server, origin_ca_file = https_origin
    ca_dir = tmp_path / "proxy-ca"
    client = await proxy(upstream, proxy={"upstream_ca_file": origin_ca_file},
                         forward={"enabled": True, "intercept_tls": True,
                                  "connect_ports": [server.port], "ca_dir": str(ca_dir)})
    results = []
    for _ in range(2):
        reader, writer = await raw(client.port, f"CONNECT localhost:{server.port} HTTP/1.1"
                                   f"\r\nHost: localhost:{server.port}\r\n\r\n".encode())
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        assert await reader.readline() == b"\r\n"
        trust = ssl.create_default_context(cafile=str(ca_dir / "ca-cert.pem"))
        await writer.start_tls(trust, server_hostname="localhost")  # verified: our CA
        writer.write(f"GET /secret?a=1 HTTP/1.1\r\nHost: localhost:{server.port}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        await writer.drain()
        results.append(await head_and_body(reader))
        writer.close()
    (s1, h1, b1), (s2, h2, b2) = results
    assert (s1, b1, h1["x-cache"]) == (200, b"secure /secret", "MISS")
    assert (s2, b2, h2["x-cache"]) == (200, b"secure /secret", "HIT")
    assert server.app[SEEN] == [f"GET /secret?a=1 host=localhost:{server.port}"]
    keys = {e["key"] for e in (await (await client.get("/_cacheproxy/entries")).json())
            ["entries"]}
    assert f"https://localhost:{server.port}/secret?a=1#forward" in keys


async def test_an_intercepted_connect_with_bytes_before_its_200_is_answered_400(
        proxy, two_origins, tmp_path: Path):
    """TLS bytes sent before the 200 are not the proxy's to read: the client is told 400
    (it used to get a bare close while the log said 400)."""
    upstream, _ = two_origins
    client = await proxy(upstream, forward={"enabled": True, "intercept_tls": True,
                                            "connect_ports": [443],
                                            "ca_dir": str(tmp_path / "proxy-ca")})
    reader, writer = await raw(client.port, b"CONNECT example.com:443 HTTP/1.1\r\n"
                               b"Host: example.com:443\r\n\r\n\x16\x03\x01\x00\x05hello")
    status, _, _ = await head_and_body(reader)
    assert status == 400
    writer.close()


async def test_without_the_origin_ca_an_intercepted_request_is_a_502(
        proxy, two_origins, https_origin, tmp_path: Path):
    upstream, _ = two_origins
    server, _ = https_origin
    ca_dir = tmp_path / "proxy-ca"
    client = await proxy(upstream, forward={"enabled": True, "intercept_tls": True,
                                            "connect_ports": [server.port],
                                            "ca_dir": str(ca_dir)})
    reader, writer = await raw(client.port, f"CONNECT localhost:{server.port} HTTP/1.1\r\n"
                               f"Host: localhost:{server.port}\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
    await reader.readline()
    await writer.start_tls(ssl.create_default_context(cafile=str(ca_dir / "ca-cert.pem")),
                           server_hostname="localhost")
    writer.write(f"GET / HTTP/1.1\r\nHost: localhost:{server.port}\r\n\r\n".encode())
    await writer.drain()
    status, _, _ = await head_and_body(reader)
    assert status == 502 and server.app[SEEN] == []  # the origin's certificate is unknown
    writer.close()
