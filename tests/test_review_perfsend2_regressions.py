"""Review perfsend2: a quick miss from the quick path's route to the upstream write
(ClientConnection._forward and _upstream_head, CacheProxy.planned, QuickForward.start).
A connection now sends its last upstream head again, without building its key, when the
quick path hands it the same Route and Forward objects for the same lines (by value),
method and version. These tests pin, through the real proxy, what that shortcut must
still tell apart: the client's version and its lines, where the Route and the Forward
(a revalidation's, remembered per stored response) are the same objects."""

from __future__ import annotations

from typing import Any

from support import raw_origin
from test_client_plane import Raw
from test_quick_hits import request

_NO_STORE = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"
_NO_CACHE = (b"HTTP/1.1 200 OK\r\nCache-Control: no-cache\r\nETag: \"v1\"\r\n"
             b"Content-Length: 2\r\n\r\nok")
_VALID = b"HTTP/1.1 304 Not Modified\r\nCache-Control: no-cache\r\nETag: \"v1\"\r\n\r\n"
_LINES = ("Accept: */*", "Connection: keep-alive")
# (version, User-Agent): the same target and route each time
_ASKED = (("1.1", "a"), ("1.1", "a"), ("1.0", "a"), ("1.0", "a"), ("1.1", "b"), ("1.1", "a"))


def _asked(version: str, agent: str, target: str) -> bytes:
    return request(target, (*_LINES, f"X-Agent: {agent}"), "GET", version)


async def _heads(client: Any, target: str, heads: list[bytes], together: bool
                 ) -> list[bytes]:
    """The upstream heads for _ASKED: on one connection (together), or each on a
    connection of its own (no head to reuse)."""
    heads.clear()
    conn = await Raw.open(client) if together else None
    for version, agent in _ASKED:
        one = conn or await Raw.open(client)
        await one.send(_asked(version, agent, target))
        head = await one.reader.readuntil(b"\r\n\r\n")
        assert head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")), head
        await one.reader.readexactly(2)
        if conn is None:
            one.close()
    if conn is not None:
        conn.close()
    return heads[:]


async def _both(proxy: Any, forward_switch: Any, target: str, answer: Any) -> None:
    heads: list[bytes] = []

    def seen(head: bytes) -> bytes:
        heads.append(head)
        return answer(head)

    async with raw_origin(seen) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        await _heads(client, target, heads, together=False)  # (stored, where it may be)
        together = await _heads(client, target, heads, together=True)
        assert forward_switch.state["sent"] >= len(_ASKED)  # (by callback, mostly)
        apart = await _heads(client, target, heads, together=False)
    assert together == apart
    for (version, agent), head in zip(_ASKED, together, strict=True):
        assert f"X-Agent: {agent}\r\n".encode() in head
        assert f"Via: {version} ".encode() in head


async def test_a_kept_upstream_head_follows_the_version_and_the_lines(
        proxy: Any, forward_switch: Any) -> None:
    """Pinned: a pass-through's upstream head is sent whole again only for the same
    lines, method and version. Were the head kept by the Route and the Forward alone, an
    HTTP/1.0 client's request would go with the last HTTP/1.1 one's Via (RFC 9110 §7.6.3:
    the received protocol is the client's), and a client's changed field (a new Cookie,
    User-Agent) would not reach the origin. Every head must equal the one a connection of
    its own gets. Severity if broken: high (another request's fields sent)."""
    await _both(proxy, forward_switch, "/pass", lambda head: _NO_STORE)


async def test_a_kept_revalidation_head_follows_the_version_and_the_lines(
        proxy: Any, forward_switch: Any) -> None:
    """Pinned: a revalidation's Forward is the same object for another client's lines
    (lookup remembers it per stored response, directives and route), so the kept head's
    lines are compared by value: each revalidation carries its own client's fields and
    version, and the cache's If-None-Match (RFC 9111 §4.3.1). Severity if broken: high."""
    def answer(head: bytes) -> bytes:
        return _VALID if b"If-None-Match" in head else _NO_CACHE

    await _both(proxy, forward_switch, "/reval", answer)
