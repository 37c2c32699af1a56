"""Review (second5): a second reader of the merges since 4ae8f52 (the peek of an
intercepted CONNECT, WebSocket, a trusted front's scheme, keys and purges, status lines,
Happy Eyeballs). Each test failed on the code it was written against (8f4ba5c), against
real servers on 127.0.0.1: aiohttp origins and the proxy in front, as elsewhere."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from processes import free_port
from support import echo_server, raw_get, raw_origin
from test_forward_mode import origin_app
from test_review_ipv6_regressions import dropped_loser
from test_review_peek_regressions import connected, intercepting
from test_websocket import handshake

from cacheproxy.config import ConfigError, load_config
from cacheproxy.http.first_bytes import spoken

# RFC 9113 §3.4: the connection preface of HTTP/2 with prior knowledge, then a SETTINGS frame.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


async def test_h2c_prior_knowledge_in_an_intercepted_connect_is_tunnelled(
        proxy: Any, origin: Any, tmp_path: Path) -> None:
    """HTTP/2 with prior knowledge (RFC 9113 §3.3) begins with the preface
    `PRI * HTTP/2.0`, which the peek (http/first_bytes.py) took for an HTTP/1 request
    line (any HTTP/d.d matched): the connection went to the HTTP/1.1 parser, which cannot
    serve it, so the client got an error instead of its origin. A gRPC client without TLS
    behind HTTPS_PROXY (grpc-go, grpc-java) opens exactly this: a CONNECT, then h2c. It
    is no protocol this proxy serves, so, as the commit says for "anything else", it
    must be tunnelled untouched (Squid's on_unsupported_protocol tunnel). Severity:
    medium (every plaintext gRPC/h2c client breaks once interception is on)."""
    assert spoken(H2_PREFACE) == "other"
    server, port = await echo_server(upper=True)
    upstream = await origin(origin_app("upstream"))
    client = await proxy(upstream, forward=intercepting(port, tmp_path))
    try:
        reader, writer = await connected(client.port, port)
        writer.write(H2_PREFACE + H2_SETTINGS)
        await writer.drain()
        sent = H2_PREFACE + H2_SETTINGS
        got = await asyncio.wait_for(reader.readexactly(len(sent)), 5)
        writer.close()
    finally:
        server.close()
    assert got == sent.upper()


def location_app(location: str) -> web.Application:
    """An origin whose GETs may be stored for a minute (each answer numbered, so a hit
    shows) and whose POST /make answers 201 with Location: location."""
    seen: list[str] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.raw_path}")
        if request.method == "POST":
            return web.Response(status=201, text="made", headers={"Location": location})
        return web.Response(text=f"{len(seen)} {request.raw_path}",
                            headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    return app


async def test_location_with_an_empty_query_invalidates_that_url(origin: Any, proxy: Any
                                                                  ) -> None:
    """RFC 9111 §4.4: a non-error answer to an unsafe method invalidates the URI in its
    Location (same origin). `/e?` and `/e` are two keys (3f9d554, 1524673: the key keeps an
    empty query, RFC 3986 §6.2.3), but same_origin_key wrote the Location `/e?` as
    `/e` (urlsplit gives "" for an empty query and none alike): the POST invalidated
    `/e`, an entry it did not name, and `/e?` went on being served as it was before
    the write. Severity: low (a rare spelling; the entry is stale until it expires)."""
    c = await proxy(await origin(location_app("/e?")))
    host = f"127.0.0.1:{c.server.port}"
    first = await raw_get(c, "/e?", host=host)
    assert (await raw_get(c, "/e?", host=host))[1]["x-cache"] == "HIT"
    made = await raw_get(c, "/make", "Content-Length: 0", method="POST", host=host)
    assert made[0] == 201
    after = await raw_get(c, "/e?", host=host)
    assert (after[1]["x-cache"], after[2] != first[2]) == ("MISS", True)


async def test_a_losing_tunnel_attempt_leaves_no_idle_timer_that_aborts_the_client() -> None:
    """Happy Eyeballs (connect_first, 8d74db9) drops a losing attempt that connected all
    the same without its protocol hearing of it (53a09ad: a CONNECT's TunnelEnd closed
    its client at connection_lost). But the loser's TunnelEnd had already armed its idle
    timer in connection_made, and nothing cancelled it: forward.tunnel_idle_timeout after
    the connect it fired, found no byte moved on its (dropped) connection and aborted
    `client`, the winning tunnel's client, busy or not. A dual-stack site whose two
    addresses answer about together (RTT over the 250 ms attempt delay) had its
    CONNECT cut at the idle timeout. Severity: low (a timing window; a cut tunnel)."""
    async with dropped_loser(0.3) as (transport, _, client):
        await asyncio.sleep(0.8)  # past the loser's idle timeout
        assert transport.is_closing()
        assert not client.is_closing()  # the winner's client goes on


@pytest.mark.parametrize("proxy_host,admin_host", [
    ("localhost", "127.0.0.1"),  # a name and one of its addresses
    ("[::1]", "[0:0::1]"),  # one IPv6 address in two spellings (RFC 5952)
])
def test_admin_listen_on_proxy_listen_spelled_otherwise_is_a_config_error(
        tmp_path: Path, proxy_host: str, admin_host: str) -> None:
    """951ad7a made admin.listen on proxy.listen's address a config error: with --workers
    both listeners bind it with SO_REUSEPORT and the kernel spreads connections over the
    admin app and the proxy at random. It compared the host text only, so
    proxy.listen = "localhost:P" with admin.listen = "127.0.0.1:P" (or [::1] written
    [0:0::1]) was accepted, and `cacheproxy serve` with workers = 2 did exactly that:
    run by hand, 8 GETs of /_cacheproxy/stats came back 200 200 200 200 200 502 502 200
    (three forwarded upstream) and 6 GETs of /some/page 404 502 404 404 404 502 (four
    answered by the admin app). The rule must compare the addresses bound, as the bind
    resolves them (and IPv6 compressed, as 0e2f08a does for routes). Severity: low (a
    config mistake, but one that fails silently and at random)."""
    port = free_port()
    config = tmp_path / "cacheproxy.toml"
    config.write_text(f'[proxy]\nlisten = "{proxy_host}:{port}"\n'
                      f'upstream = "http://127.0.0.1:9"\nworkers = 2\n'
                      f'[admin]\nlisten = "{admin_host}:{port}"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(config, env={})
    assert raised.value.key == "admin.listen"
    # Another port, or another address, is still fine.
    config.write_text(f'[proxy]\nlisten = "{proxy_host}:{port}"\n'
                      f'upstream = "http://127.0.0.1:9"\n'
                      f'[admin]\nlisten = "{admin_host}:{free_port()}"\n')
    assert load_config(config, env={}).admin.listen.startswith(admin_host)
    config.write_text(f'[proxy]\nlisten = "127.0.0.2:{port}"\n'
                      f'upstream = "http://127.0.0.1:9"\n'
                      f'[admin]\nlisten = "127.0.0.1:{port}"\n')
    assert load_config(config, env={}).admin.listen == f"127.0.0.1:{port}"


async def test_a_refused_websocket_handshake_gets_the_origins_whole_answer(proxy: Any
                                                                          ) -> None:
    """An origin that does not switch (a page that ignores the Upgrade, RFC 9110 §7.8; a
    403 from an auth check; a 426) answers as any request, and its answer is relayed
    (a55e768). But pool.Connection kept every read after the head of an exchange that
    asked to upgrade for the tunnel (`_switching and _headed`: the 101's new protocol),
    whatever the status: a body that came in a later read than the head never reached
    the parser, and the client waited until proxy.read_timeout for an answer cut short.
    Only a 101 ends the HTTP exchange (RFC 9110 §15.2.2); after any other final answer
    the bytes are its body. Severity: medium (every WebSocket handshake refused with a
    page bigger than one read, or sent in two writes, hangs)."""
    body = b"<h1>Forbidden</h1>" + b"." * 100_000
    pieces = [b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body), body]
    async with raw_origin(lambda head: pieces) as port:
        client = await proxy(f"http://127.0.0.1:{port}", proxy={"read_timeout": 5})
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        try:
            writer.write(handshake())
            started = time.monotonic()
            data = await asyncio.wait_for(reader.read(), 10)  # (it closes after the answer)
        finally:
            writer.close()
    head, _, got = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403"), head
    assert (len(got), got == body) == (len(body), True)
    assert time.monotonic() - started < 2
