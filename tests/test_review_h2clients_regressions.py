"""Findings of the h2clients review (review-h2clients): HTTP/2-era clients and newer request
shapes against this HTTP/1.1 proxy (the h2c Upgrade of `curl --http2` and Java's HttpClient,
HTTP/2's connection preface, ALPN inside an intercepted CONNECT), compared with nginx 1.22
and Squid 5.7 in front of the same origin. Each test talks to the real proxy on 127.0.0.1,
failed on the code it was written against (or is marked xfail, strict, with the reason it
stays), and says what is wrong, why it matters and how severe it is."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web


def _path_app(seen: list[str]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        upgrade = request.headers.get("Upgrade", "-")
        seen.append(f"{request.method} {request.path} upgrade={upgrade}")
        return web.Response(text=f"at {request.path}", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_route("*", "/{p}", handle)
    return app


async def _answers(reader: asyncio.StreamReader, timeout: float) -> list[tuple[int, str, bytes]]:
    """The responses (Content-Length framed) read until the proxy closes or timeout seconds
    pass with nothing more: (status, Connection field, body) each."""
    got: list[tuple[int, str, bytes]] = []
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout)
        except TimeoutError:
            return got
        if not line:
            return got
        fields: dict[str, str] = {}
        while (field := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b""):
            name, value = field.decode("latin-1").split(":", 1)
            fields[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(fields.get("content-length", "0")))
        got.append((int(line.split()[1]), fields.get("connection", ""), body))


_H2C = (b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n")


async def behind_h2c(origin: Any, proxy: Any) -> tuple[list[tuple[int, str, bytes]], list[str]]:
    """GET /one with Upgrade: h2c and GET /two behind it, in one write: the answers read
    (within 3 s) and the requests the origin saw."""
    seen: list[str] = []
    client = await proxy(await origin(_path_app(seen)))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"GET /one HTTP/1.1\r\nHost: site.test\r\n" + _H2C + b"\r\n"
                     b"GET /two HTTP/1.1\r\nHost: site.test\r\n\r\n")
        return await _answers(reader, 3), seen
    finally:
        writer.close()


async def test_a_request_pipelined_behind_an_h2c_upgrade_is_answered_or_the_connection_closes(
        origin: Any, proxy: Any) -> None:
    """An `Upgrade: h2c` request (as `curl --http2` and Java's HttpClient send) followed in
    the same read by another request: llhttp pauses at the end of the upgrade request and
    aiohttp's wrapper drops the bytes after it, so the second request is lost. The proxy
    then answered the first one without `Connection: close` and kept the connection open:
    the client waited for an answer that never came, until proxy.keepalive_timeout (75 s).
    The rule that keeps an h2c connection alive (_upgrade_alone, "an upgrade request that
    ended its read") looked only at whether the read ended with CRLFCRLF, which the
    request after it does as well. README: "a request followed by more bytes there still
    ends its connection". RFC 9112 §9.3.2: a server answers pipelined requests in order;
    nginx and Squid answer both. Severity: low to medium (a client that pipelines behind
    an h2c upgrade, or a front proxy multiplexing clients on one connection, hangs for 75 s
    and loses its request; no wrong answer is given)."""
    got, _ = await behind_h2c(origin, proxy)
    assert got, "no answer"
    assert got[0][:1] == (200,) and got[0][2] == b"at /one"
    # Either both are answered (nginx, Squid) or the first says close and the connection
    # ends (the proxy's documented way): never an open connection holding a lost request.
    assert [body for _, _, body in got] == [b"at /one", b"at /two"] \
        or (len(got) == 1 and got[0][1].lower() == "close"), got


async def test_an_h2c_upgrade_pipelined_behind_a_request_still_keeps_its_connection(
        origin: Any, proxy: Any) -> None:
    """The other side of the test above: a request, then an `Upgrade: h2c` one ending the
    read (nothing dropped after it), keeps the connection as a lone h2c request does
    (RFC 9110 §7.8; test_review_clients_regressions): both answered, no close, and the
    next request is answered on it. Severity: low (guards the fix above)."""
    seen: list[str] = []
    client = await proxy(await origin(_path_app(seen)))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"GET /zero HTTP/1.1\r\nHost: site.test\r\n\r\n"
                     b"GET /one HTTP/1.1\r\nHost: site.test\r\n" + _H2C + b"\r\n")
        got = await _answers(reader, 1)
        assert [(status, body) for status, _, body in got] == [(200, b"at /zero"),
                                                               (200, b"at /one")]
        assert all(conn.lower() != "close" for _, conn, _ in got), got
        writer.write(b"GET /two HTTP/1.1\r\nHost: site.test\r\n\r\n")
        assert [body for _, _, body in await _answers(reader, 1)] == [b"at /two"]
    finally:
        writer.close()
    assert seen == ["GET /zero upgrade=-", "GET /one upgrade=-", "GET /two upgrade=-"]


# RFC 9113 §3.4: HTTP/2's connection preface, then an empty SETTINGS frame.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


async def test_a_request_before_http2_s_preface_in_one_read_is_answered(
        origin: Any, proxy: Any) -> None:
    """README ("Errors"): requests pipelined before a malformed one are answered first, then
    the malformed one gets its 400 and the connection closes. HTTP/2's connection preface
    (`PRI * HTTP/2.0`, RFC 9113 §3.4) after a request in the same read got the 400 alone:
    the request before it was dropped, never sent upstream nor answered. llhttp drops the
    messages of a feed it refuses, and the walk that parses them again one head at a time
    (_FallbackParser._until_close) gave up on the preface's first head, after which llhttp
    gives no message and no error (it waits for the preface's "SM"). nginx and Squid
    answer the request, then refuse the preface (400, 505). Severity: low (a client that
    switches to HTTP/2 mid-connection is broken anyway; the request lost was valid)."""
    seen: list[str] = []
    client = await proxy(await origin(_path_app(seen)))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"GET /first HTTP/1.1\r\nHost: site.test\r\n\r\n" + _PREFACE)
        got = await _answers(reader, 3)
    finally:
        writer.close()
    assert [(status, body) for status, _, body in got][:1] == [(200, b"at /first")], got
    assert [status for status, _, _ in got] == [200, 400] and got[1][1] == "close", got
    assert seen == ["GET /first upgrade=-"]


async def test_http2_s_preface_is_logged_with_its_request_line(
        origin: Any, proxy: Any, tmp_path: Any) -> None:
    """README (The request log): a request the parser refused is logged "with the request
    line the parser read", "-" only when the line was not read whole, as nginx does. HTTP/2's
    preface (what `curl --http2-prior-knowledge` or a gRPC client sends to an HTTP/1.1
    port) was logged with method, path and protocol "-": where the refused head begins was
    judged by feeding its first head alone to llhttp, which then neither refuses it nor
    gives a message (it waits for "SM"), and that was taken for a whole request before the
    refused one. nginx logs `"PRI * HTTP/2.0" 400`. Severity: low (an operator looking for
    HTTP/2 clients misconfigured against the proxy finds anonymous 400s)."""
    from support import read_json_log

    client = await proxy(await origin(_path_app([])), log={"path": str(tmp_path / "r.log")})
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(_PREFACE)
        got = await _answers(reader, 3)
    finally:
        writer.close()
    assert [(status, conn) for status, conn, _ in got] == [(400, "close")]
    lines = await read_json_log(client)
    assert [(line["method"], line["path"], line["protocol"], line["status"])
            for line in lines] == [("PRI", "*", "HTTP/2.0", 400)], lines


async def test_tls_offering_only_h2_in_an_intercepted_connect_reaches_its_origin(
        origin: Any, proxy: Any, tmp_path: Any) -> None:
    """With forward.intercept_tls, a TLS client whose ALPN offers only `h2` (gRPC over
    TLS behind HTTPS_PROXY: grpc-go and grpc-java offer `h2` alone) got a TLS session with
    the proxy with no protocol selected, then the proxy's HTTP/1.1 `400` to its HTTP/2
    preface: the call failed. RFC 7301 §3.2: a server that supports none of the protocols
    offered "SHALL respond with a fatal no_application_protocol alert" (nginx 1.22 does,
    checked here; Python's ssl cannot: it goes on without ALPN). A protocol the proxy
    does not speak is tunnelled to the site untouched, as the README says of the
    plaintext HTTP/2 preface and of non-TLS bytes (Squid's on_unsupported_protocol
    tunnel): the ClientHello's ALPN says so before the handshake, in the bytes the peek
    already looks at. Expected: the client reaches the origin (its certificate, `h2`
    selected), or at least an alert; never a session that says nothing and then 400s.
    Severity: medium (every gRPC-over-TLS client breaks once interception is on)."""
    import ssl

    from test_review_peek_regressions import connected, intercepting

    from cacheproxy.tls.ca import LocalCA

    site_ca = LocalCA.load_or_create(tmp_path / "site-ca")
    site_context = site_ca.server_context("localhost")
    site_context.set_alpn_protocols(["h2", "http/1.1"])  # an HTTP/2 site, as gRPC's are

    async def site(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.write(f"site chose {chosen}".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(site, "127.0.0.1", 0, ssl=site_context)
    port = server.sockets[0].getsockname()[1]
    forward = intercepting(port, tmp_path)
    client = await proxy(await origin(_path_app([])), forward=forward)
    proxy_ca = LocalCA.load_or_create(forward["ca_dir"])
    context = ssl.create_default_context(cafile=str(site_ca.cert_path))
    context.load_verify_locations(cafile=str(proxy_ca.cert_path))  # interception trusted
    context.set_alpn_protocols(["h2"])
    try:
        reader, writer = await connected(client.port, port)
        try:
            await writer.start_tls(context, server_hostname="localhost")
        except ssl.SSLError as exc:
            assert "NO_APPLICATION_PROTOCOL" in str(exc).upper().replace(" ", "_"), exc
            return
        selected = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.write(_PREFACE)  # what an HTTP/2 client sends first
        got = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
    finally:
        server.close()
    assert (selected, got) == ("h2", b"site chose h2")


def test_the_peek_reads_a_client_hello_s_alpn() -> None:
    """The rule of the test above, sans I/O, on ClientHellos Python's ssl writes: TLS is
    intercepted when its ALPN offers HTTP/1.x or nothing, tunnelled ("other") when it
    offers only protocols the proxy does not speak; a record not whole yet is waited for
    (its ALPN extension comes last). Severity: medium (see above)."""
    import ssl

    from cacheproxy.http.first_bytes import offered_protocols, spoken

    def client_hello(alpn: list[str] | None) -> bytes:
        context = ssl.create_default_context()
        if alpn is not None:
            context.set_alpn_protocols(alpn)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="example.com")
        with contextlib.suppress(ssl.SSLWantReadError):  # (it waits for the server)
            tls.do_handshake()
        return outgoing.read()

    for alpn, expected in ((None, "tls"), (["http/1.1"], "tls"), (["h2", "http/1.1"], "tls"),
                           (["h2"], "other"), (["grpc-exp", "h2"], "other")):
        hello = client_hello(alpn)
        assert spoken(hello) == expected, alpn
        assert offered_protocols(hello[5:]) == (
            None if alpn is None else [name.encode() for name in alpn])
        assert spoken(hello[:-1]) is None and spoken(hello[:4]) is None
    assert offered_protocols(b"\x01\x00\x00\xff" + b"\x03\x03") is None  # cut short


async def test_http2_s_preface_cut_before_its_sm_is_refused_at_once(
        origin: Any, proxy: Any) -> None:
    """HTTP/2's preface is `PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n` (RFC 9113 §3.4). Its first
    18 bytes alone, a whole "head" (a TCP segment cut there, or a client that waits), got
    no answer: llhttp waits for the "SM" before it refuses the preface, and the proxy's
    tracking of the stream took the empty line for the end of a message, so nothing was
    refused and the connection sat until proxy.client_header_timeout (60 s), then closed
    without a word. nginx and Squid answer this line at once (400, 505). The proxy knows
    enough to refuse it: no HTTP/1.x request is written `PRI * HTTP/2.0`. Severity: low
    (HTTP/2 clients write the 24-byte preface in one go; one cut short waits a minute
    for its 400)."""
    client = await proxy(await origin(_path_app([])))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(_PREFACE[:18])
        got = await _answers(reader, 2)
    finally:
        writer.close()
    assert [(status, conn) for status, conn, _ in got] == [(400, "close")]


async def test_http2_settings_never_reaches_the_origin(origin: Any, proxy: Any) -> None:
    """`HTTP2-Settings` is a connection-specific field (RFC 9113 §3.2.1; RFC 7540 §3.2.1),
    meaningful only beside the `Upgrade: h2c` of the same hop, which the proxy always
    removes (it never switches). It was removed only when the client's Connection named
    it: `Connection: Upgrade` alone, or no Connection at all (clients and hand-written
    scripts that forget the option RFC 9113 requires), sent it on to the origin, now
    without its Upgrade. RFC 9110 §7.6.1: intermediaries SHOULD remove fields "known to
    require removal before forwarding, whether or not they appear as a
    connection-option" (it names Upgrade and TE among them; HTTP2-Settings is the same
    kind). nginx 1.22 and Squid 5.7 forward it (checked), as this proxy did. Severity:
    low (an origin that speaks h2c sees a settings field for a connection it is not on;
    the harm is small, the rule is the README's "hop-by-hop fields are removed")."""
    heard: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        heard.append(request.headers.get("HTTP2-Settings"))
        return web.Response(text="ok", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/{p}", handle)
    client = await proxy(await origin(app))
    for connection in (b"Connection: Upgrade\r\n", b""):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        try:
            writer.write(b"GET /s HTTP/1.1\r\nHost: site.test\r\n" + connection
                         + b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
            assert [status for status, _, _ in await _answers(reader, 1)] == [200]
        finally:
            writer.close()
    assert heard == [None, None]
