"""Forwarding through the proxy (RFC 9110 §7.6): methods, targets, fields and
bodies reach the origin as the client sent them, minus hop-by-hop fields, plus
Via / X-Forwarded-*; bodies stream both ways; upstream connections are pooled.

Real aiohttp origins on 127.0.0.1 with the proxy in front; where exact bytes
matter (targets, hop-by-hop fields) the client or the origin is a raw socket.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict, CIMultiDictProxy

try:
    from tests.faults import faulty_relay
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from faults import faulty_relay

from support import cache_status

TIMEOUT = 5.0  # a hang is a failure, not a stuck suite


# -- helpers -------------------------------------------------------------------------------------


@dataclass
class Seen:
    """What the origin received for one request."""

    method: str
    raw_path: str
    headers: CIMultiDictProxy[str]
    raw_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@dataclass
class Recorder:
    """An origin that records every request and answers with a configurable response."""

    seen: list[Seen] = field(default_factory=list)
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b"ok"

    def app(self) -> web.Application:
        async def any_request(request: web.Request) -> web.Response:
            body = await request.read()
            self.seen.append(Seen(request.method, request.raw_path, request.headers,
                                  tuple(request.raw_headers), body))
            return web.Response(status=self.status, body=self.body,
                                headers=CIMultiDict(self.headers))

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_request)
        return app

    @property
    def last(self) -> Seen:
        assert self.seen, "the origin received no request"
        return self.seen[-1]


def names(raw_headers: tuple[tuple[bytes, bytes], ...]) -> set[str]:
    return {k.decode("latin-1").lower() for k, _ in raw_headers}


def combined(headers: Any, name: str) -> str:
    return ", ".join(headers.getall(name, []))


async def raw_request(client: TestClient, head: str, body: bytes = b"") -> bytes:
    """Send exact request bytes to the proxy (the head should say Connection: close);
    return the whole answer."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b"\r\n", 1)[0].split()[1])


async def recording_proxy(
    origin: Callable[[web.Application], Awaitable[TestServer]], make_proxy: Any, /,
    **sections: dict[str, Any],
) -> tuple[Recorder, TestServer, TestClient]:
    rec = Recorder()
    server = await origin(rec.app())
    client = await make_proxy(server, **sections)
    return rec, server, client


# -- methods, targets, fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status"),
    [("POST", 201), ("PUT", 204), ("PATCH", 200), ("DELETE", 202), ("OPTIONS", 200),
     ("PROPFIND", 207)],
)
async def test_method_body_and_status_are_forwarded(origin, proxy, method, status):
    rec, _, client = await recording_proxy(origin, proxy)
    rec.status = status
    rec.body = b"" if status == 204 else f"answer to {method}".encode()
    sent = b'<?xml version="1.0"?><propfind xmlns="DAV:"><allprop/></propfind>'
    resp = await client.request(method, "/dav/item?depth=1", data=sent,
                                headers={"Content-Type": "application/xml", "Depth": "1"})
    assert resp.status == status
    assert await resp.read() == rec.body
    assert rec.last.method == method
    assert rec.last.raw_path == "/dav/item?depth=1"
    assert rec.last.body == sent
    assert rec.last.headers["Content-Type"] == "application/xml"
    assert rec.last.headers["Depth"] == "1"
    assert rec.last.headers["Content-Length"] == str(len(sent))
    assert resp.headers["X-Cache"] == "MISS"
    assert "1.1 cacheproxy" in combined(resp.headers, "Via")


async def test_head_is_forwarded_without_a_body(origin, proxy):
    rec, _, client = await recording_proxy(origin, proxy)
    rec.body = b"x" * 1234
    resp = await client.head("/thing")
    assert resp.status == 200
    assert await resp.read() == b""
    assert rec.last.method == "GET"  # fetched whole so it can be stored (nginx does the same)
    assert resp.headers["Content-Length"] == "1234"
    unstorable = await client.head("/thing", headers={"Cache-Control": "no-store"})
    assert await unstorable.read() == b"" and rec.last.method == "HEAD"
    # The connection is still usable for a normal request afterwards.
    again = await client.get("/other")
    assert again.status == 200 and await again.read() == rec.body


@pytest.mark.parametrize(
    "target",
    [
        "/a%2Fb?x=1&x=2&y=%20",
        "/%7Euser/a;p=1/%E2%82%AC?q=%2B+%26&empty=&flag",
        "/search?q=a%2Cb%3Dc&Q=UPPER%2f&x=%25",
    ],
)
async def test_target_reaches_origin_byte_for_byte(origin, proxy, target):
    rec, _, client = await recording_proxy(origin, proxy)
    answer = await raw_request(client, f"GET {target} HTTP/1.1\r\nHost: site.test\r\n"
                                       "Connection: close\r\n\r\n")
    assert status_of(answer) == 200
    assert rec.last.raw_path == target


async def test_absolute_form_target_is_forwarded_as_origin_form(origin, proxy):
    rec, _, client = await recording_proxy(origin, proxy)
    answer = await raw_request(
        client, "GET http://site.test/a%2Fb?x=1&x=2 HTTP/1.1\r\nHost: site.test\r\n"
                "Connection: close\r\n\r\n")
    assert status_of(answer) == 200
    assert rec.last.raw_path == "/a%2Fb?x=1&x=2"


@pytest.mark.parametrize("target", ["http://user:pw@site.test/a", "http://evil@site.test/",
                                    "https://@site.test/"])
async def test_userinfo_in_an_absolute_form_target_is_a_400(origin, proxy, target):
    """RFC 9110 §4.2.4: a recipient SHOULD treat userinfo in an http(s) URI as an error
    (it makes a URI look like another site's); it is neither dropped nor forwarded."""
    rec, _, client = await recording_proxy(origin, proxy)
    answer = await raw_request(client, f"GET {target} HTTP/1.1\r\nHost: site.test\r\n"
                                       "Connection: close\r\n\r\n")
    assert status_of(answer) == 400
    assert rec.seen == []


async def test_unknown_and_repeated_fields_pass_both_ways(origin, proxy):
    rec, _, client = await recording_proxy(origin, proxy)
    rec.headers = [("X-Origin-Thing", "o1"), ("X-Rep", "first"), ("X-Rep", "second"),
                   ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Link", "</a>; rel=x")]
    resp = await client.get("/h", headers=[
        ("X-Custom-Field", "value with  spaces, and commas"), ("X-Multi", "one"),
        ("X-Multi", "two"), ("Accept-Language", "de, en;q=0.5"), ("Cookie", "sid=1"),
        ("Authorization", "Bearer t"),
    ])
    assert resp.status == 200
    seen = rec.last.headers
    assert seen["X-Custom-Field"] == "value with  spaces, and commas"
    assert seen.getall("X-Multi") == ["one", "two"]
    assert seen["Accept-Language"] == "de, en;q=0.5"
    assert seen["Cookie"] == "sid=1"
    assert seen["Authorization"] == "Bearer t"
    assert resp.headers["X-Origin-Thing"] == "o1"
    assert resp.headers.getall("X-Rep") == ["first", "second"]
    assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    assert resp.headers["Link"] == "</a>; rel=x"


# -- hop-by-hop fields (RFC 9110 §7.6.1) -------------------------------------------------------

HOP_REQUEST = (
    "Connection: close, X-Conn-Named\r\n"
    "X-Conn-Named: secret\r\n"
    "Connection: X-Second-Named\r\n"
    "X-Second-Named: also secret\r\n"
    "Keep-Alive: timeout=30\r\n"
    "Proxy-Connection: keep-alive\r\n"
    "TE: trailers\r\n"
    "Trailer: X-Checksum\r\n"
    "Upgrade: h2c\r\n"
    "Proxy-Authorization: Basic cHJveHk6c2VjcmV0\r\n"
)


async def test_hop_by_hop_request_fields_are_removed(origin, proxy):
    rec, _, client = await recording_proxy(origin, proxy)
    answer = await raw_request(
        client, f"GET /hop HTTP/1.1\r\nHost: site.test\r\n{HOP_REQUEST}X-Kept: yes\r\n\r\n")
    assert status_of(answer) == 200
    seen = names(rec.last.raw_headers)
    for hop in ("x-conn-named", "x-second-named", "keep-alive", "proxy-connection", "te",
                "trailer", "upgrade", "proxy-authorization", "transfer-encoding"):
        assert hop not in seen, hop
    assert "x-conn-named" not in rec.last.headers.get("Connection", "").lower()
    assert rec.last.headers["X-Kept"] == "yes"


async def test_hop_by_hop_fields_removed_from_a_chunked_request_with_body(origin, proxy):
    rec, _, client = await recording_proxy(origin, proxy)
    head = (f"POST /hop HTTP/1.1\r\nHost: site.test\r\n{HOP_REQUEST}"
            "Transfer-Encoding: chunked\r\nX-Kept: yes\r\n\r\n")
    answer = await raw_request(client, head + "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert status_of(answer) == 200
    assert rec.last.body == b"hello world"
    seen = names(rec.last.raw_headers)
    for hop in ("x-conn-named", "x-second-named", "keep-alive", "proxy-connection", "te",
                "trailer", "upgrade", "proxy-authorization"):
        assert hop not in seen, hop
    # The upstream hop frames the body itself: chunked again, never a stale client field.
    assert rec.last.headers.getall("Transfer-Encoding") == ["chunked"]
    assert rec.last.headers["X-Kept"] == "yes"


async def start_raw_origin(response: bytes) -> tuple[asyncio.Server, int]:
    """A socket origin that answers every request on a connection with fixed bytes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def raw_origin() -> AsyncIterator[Callable[[bytes], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(response: bytes) -> str:
        server, port = await start_raw_origin(response)
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_hop_by_hop_response_fields_are_removed(raw_origin, proxy):
    upstream = await raw_origin(
        b"HTTP/1.1 200 OK\r\n"
        b"Connection: keep-alive, X-Conn-Named\r\n"
        b"X-Conn-Named: secret\r\n"
        b"Keep-Alive: timeout=5, max=100\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authenticate: Basic realm=x\r\n"
        b"Proxy-Authorization: Basic eDp5\r\n"
        b"X-Kept: yes\r\n"
        b"Content-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n"
        b"5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n"
    )
    client = await proxy(upstream)
    resp = await client.get("/hop")
    assert resp.status == 200
    assert await resp.read() == b"hello"
    got = {k.lower() for k in resp.headers}
    for hop in ("x-conn-named", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
                "proxy-authenticate", "proxy-authorization", "x-checksum"):
        assert hop not in got, hop
    assert "x-conn-named" not in resp.headers.get("Connection", "").lower()
    assert resp.headers["X-Kept"] == "yes"


# -- Via, X-Forwarded-*, Host --------------------------------------------------------------------


async def test_via_is_added_both_ways_and_appended(origin, proxy):
    rec, _, client = await recording_proxy(origin, proxy)
    rec.headers = [("Via", "1.1 origin-cdn")]
    resp = await client.get("/via", headers={"Via": "1.0 corp-proxy"})
    assert resp.status == 200
    assert combined(rec.last.headers, "Via") == "1.0 corp-proxy, 1.1 cacheproxy"
    assert combined(resp.headers, "Via") == "1.1 origin-cdn, 1.1 cacheproxy"

    rec.headers = []
    plain = await client.get("/plain")
    assert plain.headers["Via"] == "1.1 cacheproxy"
    assert rec.last.headers["Via"] == "1.1 cacheproxy"


async def test_via_uses_the_configured_pseudonym(origin, proxy):
    rec, _, client = await recording_proxy(origin, proxy, proxy={"via": "edge-7"})
    resp = await client.get("/via")
    assert rec.last.headers["Via"] == "1.1 edge-7"
    assert resp.headers["Via"] == "1.1 edge-7"


async def test_x_forwarded_fields_and_host_rewrite(origin, proxy):
    """With proxy.trust_forwarded (behind a proxy of one's own) the chain is appended to."""
    rec, server, client = await recording_proxy(origin, proxy,
                                                proxy={"trust_forwarded": True})
    await client.get("/xf", headers=[("X-Forwarded-For", "203.0.113.9"),
                                     ("X-Forwarded-For", "198.51.100.2")])
    seen = rec.last.headers
    assert seen.getall("X-Forwarded-For") == ["203.0.113.9, 198.51.100.2, 127.0.0.1"]
    assert seen["X-Forwarded-Proto"] == "http"
    proxy_authority = f"{client.server.host}:{client.server.port}"
    assert seen["X-Forwarded-Host"] == proxy_authority
    assert seen.getall("Host") == [f"127.0.0.1:{server.port}"]

    await client.get("/xf2")
    assert rec.last.headers["X-Forwarded-For"] == "127.0.0.1"


async def test_host_passes_through_when_configured(origin, proxy):
    rec, _, client = await recording_proxy(origin, proxy, proxy={"host_header": "pass"})
    answer = await raw_request(client, "GET /h HTTP/1.1\r\nHost: www.example.test:8443\r\n"
                                       "Connection: close\r\n\r\n")
    assert status_of(answer) == 200
    assert rec.last.headers.getall("Host") == ["www.example.test:8443"]
    assert rec.last.headers["X-Forwarded-Host"] == "www.example.test:8443"


@pytest.mark.parametrize("off", ["x_forwarded_for", "x_forwarded_proto", "x_forwarded_host"])
async def test_each_x_forwarded_field_can_be_turned_off(origin, proxy, off):
    rec, _, client = await recording_proxy(origin, proxy,
                                           proxy={off: False, "trust_forwarded": True})
    await client.get("/xf", headers={"X-Forwarded-For": "203.0.113.9"})
    seen = rec.last.headers
    if off == "x_forwarded_for":  # not appended to; what the client sent is left alone
        assert seen.getall("X-Forwarded-For") == ["203.0.113.9"]
    else:
        assert seen.getall("X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
    assert ("X-Forwarded-Proto" in seen) == (off != "x_forwarded_proto")
    assert ("X-Forwarded-Host" in seen) == (off != "x_forwarded_host")


# -- no decompression, no fields of the proxy's own ----------------------------------------------


async def test_gzip_response_passes_byte_identical(origin, proxy):
    text = b"compress me " * 2000
    packed = gzip.compress(text, mtime=0)

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=packed, headers={
            "Content-Encoding": "gzip", "Content-Type": "text/plain",
            "Cache-Control": "max-age=60", "Vary": "Accept-Encoding",
            "X-Seen-Accept-Encoding": request.headers.get("Accept-Encoding", "<none>")})

    app = web.Application()
    app.router.add_get("/z", page)
    client = await proxy(await origin(app))
    for expected in ("MISS", "HIT"):
        resp = await client.get("/z", headers={"Accept-Encoding": "gzip"})
        assert resp.headers["X-Cache"] == expected
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["X-Seen-Accept-Encoding"] == "gzip"
        assert resp.headers["Content-Length"] == str(len(packed))
        assert await resp.read() == packed


async def test_proxy_adds_no_accept_encoding_user_agent_or_content_type(origin, proxy):
    rec, _, client = await recording_proxy(origin, proxy)
    answer = await raw_request(client, "GET /bare HTTP/1.1\r\nHost: site.test\r\n"
                                       "Connection: close\r\n\r\n")
    assert status_of(answer) == 200
    seen = names(rec.last.raw_headers)
    for own in ("user-agent", "accept-encoding", "accept", "content-type", "cookie"):
        assert own not in seen, own

    answer = await raw_request(client, "POST /bare HTTP/1.1\r\nHost: site.test\r\n"
                                       "Content-Length: 3\r\nConnection: close\r\n\r\n", b"abc")
    assert status_of(answer) == 200
    assert rec.last.body == b"abc"
    assert "content-type" not in names(rec.last.raw_headers)


async def test_client_accept_encoding_and_user_agent_arrive_exactly(origin, proxy):
    rec, _, client = await recording_proxy(origin, proxy)
    await client.get("/ua", headers={"User-Agent": "Mozilla/5.0 (X11) test/1.0",
                                     "Accept-Encoding": "br;q=1.0, identity;q=0.1",
                                     "Accept": "text/html"})
    seen = rec.last.headers
    assert seen.getall("User-Agent") == ["Mozilla/5.0 (X11) test/1.0"]
    assert seen.getall("Accept-Encoding") == ["br;q=1.0, identity;q=0.1"]
    assert seen.getall("Accept") == ["text/html"]


# -- bodies stream -------------------------------------------------------------------------------


def body_echo_app() -> web.Application:
    """Answers with what it saw of the request body and its framing."""

    async def echo(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        while chunk := await request.content.readany():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({
            "size": size, "sha256": digest.hexdigest(),
            "content_length": request.headers.get("Content-Length"),
            "transfer_encoding": request.headers.getall("Transfer-Encoding", []),
        })

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def test_large_request_body_with_content_length_arrives_intact(origin, proxy):
    client = await proxy(await origin(body_echo_app()))
    body = bytes(range(256)) * (5 * 4096)  # 5 MiB
    resp = await client.post("/upload", data=body)
    assert resp.status == 200
    seen = await resp.json()
    assert seen == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                    "content_length": str(len(body)), "transfer_encoding": []}


async def test_chunked_request_body_arrives_intact_and_chunked(origin, proxy):
    client = await proxy(await origin(body_echo_app()))
    pieces = [bytes([i]) * (1000 + 997 * i) for i in range(40)]

    async def gen() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    resp = await client.put("/upload", data=gen())
    assert resp.status == 200
    whole = b"".join(pieces)
    assert await resp.json() == {"size": len(whole), "sha256": hashlib.sha256(whole).hexdigest(),
                                 "content_length": None, "transfer_encoding": ["chunked"]}


async def test_request_body_streams_to_origin(origin, proxy):
    """The origin gets the first part before the client has sent the rest."""
    got_first = asyncio.Event()

    async def upload(request: web.Request) -> web.Response:
        first = await request.content.readany()
        got_first.set()
        rest = await request.read()
        return web.Response(text=f"{len(first) + len(rest)}")

    app = web.Application()
    app.router.add_post("/up", upload)
    client = await proxy(await origin(app))

    async def gen() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        await asyncio.wait_for(got_first.wait(), TIMEOUT)
        yield b"b" * 1000

    resp = await asyncio.wait_for(client.post("/up", data=gen()), TIMEOUT)
    assert await resp.text() == "2000"


async def test_response_body_streams_to_client(origin, proxy):
    """The client reads the first chunk while the origin still holds back the last."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        await resp.prepare(request)
        await resp.write(b"first-chunk;")
        await asyncio.wait_for(release.wait(), TIMEOUT)
        await resp.write(b"last-chunk")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/slow", slow)
    client = await proxy(await origin(app))
    resp = await asyncio.wait_for(client.get("/slow"), TIMEOUT)
    first = await asyncio.wait_for(resp.content.readany(), TIMEOUT)
    assert first.startswith(b"first")
    assert not release.is_set()
    release.set()
    rest = await asyncio.wait_for(resp.read(), TIMEOUT)
    assert first + rest == b"first-chunk;last-chunk"


async def test_large_response_streams_intact(origin, proxy):
    body = bytes(range(256)) * 16384  # 4 MiB, written in pieces without Content-Length

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(0, len(body), 100_000):
            await resp.write(body[i:i + 100_000])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/big", big)
    client = await proxy(await origin(app))
    resp = await client.get("/big")
    assert resp.status == 200
    assert "Content-Length" not in resp.headers
    assert await resp.read() == body


# -- pooled upstream connections -----------------------------------------------------------------


async def test_sequential_requests_reuse_pooled_upstream_connections(origin, proxy):
    rec = Recorder()
    rec.headers = [("Cache-Control", "no-store")]
    server = await origin(rec.app())
    async with faulty_relay("127.0.0.1", server.port) as relay:
        client = await proxy(f"http://127.0.0.1:{relay.port}")
        for i in range(20):
            if i % 2:
                resp = await client.post(f"/p/{i}", data=b"payload")
            else:
                resp = await client.get(f"/g/{i}")
            assert resp.status == 200
            assert await resp.read() == b"ok"
        assert len(rec.seen) == 20
        assert relay.connections <= 2


async def test_cached_answers_carry_cache_status(origin, proxy):
    rec, _, client = await recording_proxy(origin, proxy)
    rec.headers = [("Cache-Control", "max-age=60")]
    first = await client.get("/c")
    assert "fwd=uri-miss" in cache_status(first) and "stored" in cache_status(first)
    second = await client.get("/c")
    assert second.headers["X-Cache"] == "HIT"
    assert second.headers["Via"] == "1.1 cacheproxy"
    assert len(rec.seen) == 1


# -- once-known bugs, now fixed -------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_get_with_a_body_forwards_the_body(origin, proxy, framing):
    rec, _, client = await recording_proxy(origin, proxy, proxy={"read_timeout": 0.5})
    if framing == "content-length":
        head = "GET /search HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n"
        body = b"hello world"
    else:
        head = "GET /search HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    answer = await raw_request(client, head + "Connection: close\r\n\r\n", body)
    assert status_of(answer) == 200
    assert rec.last.body == b"hello world"


async def test_options_asterisk_is_answered_by_the_proxy(origin, proxy):
    """RFC 9110 §9.3.7: OPTIONS * concerns the server in general; to the client that is
    the proxy, so it answers itself (aiohttp's client cannot send asterisk-form)."""
    rec, _, client = await recording_proxy(origin, proxy)
    answer = await raw_request(client, "OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200
    assert b"\r\nVia: 1.1 cacheproxy\r\n" in answer
    assert rec.seen == []
    other = await raw_request(client, "GET * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_of(other) == 400


async def test_response_via_names_the_upstream_protocol_version(origin, proxy):
    rec, _, client = await recording_proxy(origin, proxy)
    answer = await raw_request(client, "GET /v HTTP/1.0\r\nHost: a\r\n\r\n")
    assert status_of(answer) == 200
    assert rec.last.headers["Via"] == "1.0 cacheproxy"  # the request came in as HTTP/1.0
    assert b"\r\nVia: 1.1 cacheproxy\r\n" in answer  # the response came in as HTTP/1.1


async def test_unknown_methods_are_forwarded(origin, proxy):
    """RFC 9110 §9.1: any method token; llhttp does not know FOO (server_protocol.py)."""
    rec, _, client = await recording_proxy(origin, proxy)
    answer = await raw_request(
        client, "FOO /thing HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
        b"abc")
    assert status_of(answer) == 200
    assert rec.last.method == "FOO" and rec.last.body == b"abc"
    assert b"fwd=method" in answer
