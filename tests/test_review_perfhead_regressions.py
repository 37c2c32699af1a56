"""Review perfhead: the answer's side of a miss (the pool's parse of the origin's head,
the flow's reading of its fields, the pass-through's client head written from them as
bytes). The pass-through head is now written from the origin's field pairs without a
multidict when nothing in it is replaced or removed, and by the multidict path otherwise;
these tests pin what a client gets either way, byte by byte in the order sent, against the
real proxy and an origin on 127.0.0.1 that sends bytes of the test's choosing."""

from __future__ import annotations

import asyncio
from typing import Any

from support import raw_origin


async def _head_lines(client: Any, target: str, *fields: str, version: str = "1.1",
                      length: int | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
    """The status line, the field lines in order (names as sent) and the rest of what the
    proxy sent (length bytes of it, else all until it closes), for one request on a
    connection of its own."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    lines = [f"GET {target} HTTP/{version}", "Host: example.test", *fields]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    rest = await asyncio.wait_for(reader.read() if length is None
                                  else reader.readexactly(length), 10)
    writer.close()
    status, *field_lines = head[:-4].decode("latin-1").split("\r\n")
    pairs = [(name, value) for name, _, value in (line.partition(": ") for line in field_lines)]
    return status, pairs, rest


async def test_pass_through_head_keeps_the_origin_s_fields_in_order_then_the_marks(
        proxy) -> None:
    """What wrote a pass-through's head changed (the origin's pairs joined as bytes,
    no multidict): the client must get the origin's end-to-end fields as sent, in their
    order, then Via (RFC 9110 §7.6.3), Cache-Status (RFC 9211 §2: appended), X-Cache, the
    configured Referrer-Policy (W3C Referrer Policy §4.1), Date when the origin sent none
    (RFC 9110 §6.6.1) and the connection's fate (RFC 9112 §9.6). Pinned as the multidict
    path wrote it. Severity: would be medium (a field lost or reordered on every
    pass-through)."""
    body = b"0123456789"
    answer = (b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Type: text/plain\r\n"
              b"Cache-Control: no-store\r\nX-Obs: caf\xe9\r\nContent-Length: 10\r\n\r\n" + body)
    async with raw_origin(lambda _: answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        status, pairs, rest = await _head_lines(c, "/p", "Connection: close")
    assert status == "HTTP/1.1 200 OK"
    names = [n for n, _ in pairs]
    assert names == ["Server", "Content-Type", "Cache-Control", "X-Obs", "Content-Length",
                     "Via", "Cache-Status", "X-Cache", "Referrer-Policy", "Date",
                     "Connection"]
    fields = dict(pairs)
    assert fields["X-Obs"] == "caf\xe9"  # obs-text goes on as the bytes received
    assert fields["Via"] == "1.1 cacheproxy"
    assert fields["Cache-Status"] == "cacheproxy; fwd=uri-miss; fwd-status=200; " \
                                     "detail=no-store"
    assert fields["X-Cache"] == "MISS"
    assert fields["Connection"] == "close"
    assert rest == body


async def test_pass_through_head_replaces_an_upstream_x_cache_and_drops_hop_by_hop(
        proxy) -> None:
    """An origin (or a cache before it) that sends X-Cache, Via, Cache-Status and
    hop-by-hop fields, one of them named in Connection: X-Cache is replaced where it stood
    (ours says what this cache did), Via and Cache-Status get ours appended (RFC 9110
    §7.6.3, RFC 9211 §2), and Connection, Keep-Alive and the field Connection names are
    not passed on (RFC 9110 §7.6.1). Its Date stays, not doubled. Pinned across the change
    that writes most pass-through heads without a multidict. Severity: would be high (a
    hop-by-hop field passed on, as nginx and Squid never do)."""
    answer = (b"HTTP/1.1 200 OK\r\nDate: Sat, 05 Dec 2026 04:00:00 GMT\r\n"
              b"X-Cache: HIT from edge\r\nVia: 1.1 edge\r\nCache-Status: edge; hit\r\n"
              b"Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n"
              b"Cache-Control: no-store\r\nContent-Length: 2\r\n\r\nok")
    async with raw_origin(lambda _: answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        status, pairs, rest = await _head_lines(c, "/p", "Connection: close")
    assert status == "HTTP/1.1 200 OK"
    assert pairs[:7] == [
        ("Date", "Sat, 05 Dec 2026 04:00:00 GMT"), ("X-Cache", "MISS"), ("Via", "1.1 edge"),
        ("Cache-Status", "edge; hit"), ("Cache-Control", "no-store"),
        ("Content-Length", "2"), ("Via", "1.1 cacheproxy")]
    names = [n for n, _ in pairs]
    assert names[7:] == ["Cache-Status", "Referrer-Policy", "Connection"]
    assert rest == b"ok"


async def test_pass_through_head_to_http_1_0_keep_alive_and_to_head(proxy) -> None:
    """The connection's fate as begin() says it: an HTTP/1.0 client that asked to keep the
    connection gets Connection: keep-alive (RFC 9112 Appendix C.2.2); a HEAD gets the
    GET's Content-Length and no body (RFC 9110 §9.3.2). Pinned across the bytes path.
    Severity: would be medium (a 1.0 client's connection dropped or hung)."""
    answer = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"
    async with raw_origin(lambda head: answer[:-2] if head.startswith(b"HEAD") else answer
                          ) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        status, pairs, rest = await _head_lines(c, "/p", "Connection: keep-alive",
                                                version="1.0", length=2)
        assert status == "HTTP/1.1 200 OK"
        assert dict(pairs)["Connection"] == "keep-alive"
        assert rest == b"ok"
        reader, writer = await asyncio.open_connection(c.server.host, c.server.port)
        writer.write(b"HEAD /p HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    head, _, after = data.partition(b"\r\n\r\n")
    assert b"\r\nContent-Length: 2\r\n" in head + b"\r\n"
    assert after == b""
