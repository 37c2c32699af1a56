"""Review perfreq: the request's side of a miss (a client's bytes to the upstream request's
head on the wire: client_conn's reads and quick forward, the parser wrapper, the quick
path's route and lookup, request_fields and request_head), made cheaper per request.
The tests pin what the upstream sees where a cheaper shape could get it wrong."""

from __future__ import annotations

from typing import Any

from support import raw_origin
from test_client_plane import Raw
from test_quick_hits import request

# Field lines every request below sends alike, so that one connection's upstream heads
# can be made from the lines of the one before (ClientConnection._upstream_head).
_LINES = ("Connection: keep-alive", "Referer: http://shop.example/cart?token=s#top",
          'If-None-Match: "client"', "X-Forwarded-For: 203.0.113.9")
# (method, target, version): what may differ between requests with the same lines.
# (Each differs from a quick forward before it in one thing: the target, the version,
# whether the client's conditionals go, the cache's own, the method.)
_SEQUENCE = (("GET", "/a", "1.1"), ("GET", "/b", "1.1"), ("GET", "/c", "1.1"),
             ("GET", "/a", "1.1"), ("GET", "/c", "1.0"), ("GET", "/v", "1.1"),
             ("GET", "/v", "1.1"), ("GET", "/v", "1.1"), ("GET", "/b?x", "1.1"),
             ("GET", "/b", "1.0"), ("HEAD", "/b", "1.0"))


def _answer(head: bytes) -> bytes:
    # /v is stored and validated each time (no-cache, an ETag): its request carries
    # the cache's conditional; the rest are not stored (hit-for-pass after the first).
    cc = b"no-cache" if b" /v " in head.split(b"\r\n", 1)[0] else b"no-store"
    if head.startswith(b"HEAD "):
        return b"HTTP/1.1 200 OK\r\nCache-Control: " + cc + b"\r\nContent-Length: 2\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nCache-Control: " + cc + b'\r\nETag: "v1"\r\n' \
        b"Content-Length: 2\r\n\r\nok"


async def test_requests_with_the_same_lines_on_one_connection_get_their_own_heads(
        proxy: Any, forward_switch: Any) -> None:
    """Performance (perfreq), a behaviour no test pinned: a connection's upstream head is
    made from the field lines its last one was made of when its client sends the same
    lines again. The request line, the Via (the client's version: RFC 9110 §7.6.3),
    the client's conditionals (stripped when the cache may fill, §4.3.2 of RFC 9111;
    sent as they are on a pass) and the cache's own (a revalidation, §4.3.1) must still
    be each request's: what the origin sees is what it sees when every request comes
    on a connection of its own (no lines to reuse), from a proxy in the same state.
    Severity if broken: high (a wrong target, version or validator upstream)."""
    heads: list[bytes] = []

    def seen(head: bytes) -> bytes:
        heads.append(head)
        return _answer(head)

    async with raw_origin(seen) as port:
        upstream = f"http://127.0.0.1:{port}"
        # Every request on one connection (its heads may reuse the lines before).
        client = await proxy(upstream, cache={"collapse": False})  # (sent at once)
        conn = await Raw.open(client)
        for method, target, version in _SEQUENCE:
            await conn.send(request(target, _LINES, method, version))
            assert (await conn.reply(head=method == "HEAD")).status == 200
        conn.close()
        together = heads[:]
        assert forward_switch.state["sent"] >= 8  # the quick forward made most of them
        # The same, each on a connection of its own, from a proxy that starts as empty.
        heads.clear()
        client = await proxy(upstream, cache={"collapse": False})  # (sent at once)
        for method, target, version in _SEQUENCE:
            conn = await Raw.open(client)
            await conn.send(request(target, _LINES, method, version))
            assert (await conn.reply(head=method == "HEAD")).status == 200
            conn.close()
        apart = heads[:]
    assert together == apart
    # What differs between them did go up: targets, Via's version, the conditionals.
    assert [h.split(b"\r\n", 1)[0] for h in together][:3] == [
        b"GET /a HTTP/1.1", b"GET /b HTTP/1.1", b"GET /c HTTP/1.1"]
    assert b"Via: 1.1 cacheproxy" in together[3] and b"Via: 1.0 cacheproxy" in together[4]
    assert b'If-None-Match: "client"' in together[3]  # a pass: the client's, as sent
    assert b"If-None-Match" not in together[2]  # a miss that may fill: the cache's, none
    assert b'If-None-Match: "v1"' in together[6] and b'If-None-Match: "v1"' in together[7]
    assert b"If-None-Match" not in together[8]
    assert together[10].startswith(b"HEAD /b ")
