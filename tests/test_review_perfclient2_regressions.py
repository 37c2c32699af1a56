"""Review perfclient2: the client request's side of a miss, up to the upstream send
(ClientConnection's read path and quick forward, the quick path's hit probe,
CacheProxy.planned), read for where a pass-through and a revalidation spend their
instructions. The shortcuts taken keep every decision where it was; these tests pin,
through the real proxy, the equivalences they rely on that no test held yet."""

from __future__ import annotations

from typing import Any

from support import raw_origin
from test_client_plane import Raw
from test_quick_hits import request

_NO_STORE = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"
_LINES = ("Accept: */*", "Referer: http://shop.example/page", "Connection: keep-alive")


async def _heads(client: Any, asked: tuple[tuple[str, str], ...], heads: list[bytes],
                 together: bool) -> list[bytes]:
    """The upstream heads for asked ((method, target) pairs, the same lines each): on one
    connection (together), or each on a connection of its own (no head to reuse)."""
    heads.clear()
    conn = await Raw.open(client) if together else None
    for method, target in asked:
        one = conn or await Raw.open(client)
        await one.send(request(target, _LINES, method))
        head = await one.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        if method == "GET":
            await one.reader.readexactly(2)
        if conn is None:
            one.close()
    if conn is not None:
        conn.close()
    return heads[:]


async def test_a_kept_upstream_head_follows_the_method_and_the_url(
        proxy: Any, forward_switch: Any) -> None:
    """Pinned: a connection keeps the whole upstream head a quick forward sent last, and
    sends it again when the client's lines, the route and the forward's conditionals
    match and the method and URL are the same; with the same lines for another URL, or
    HEAD after GET, only the field lines are reused and the request line is made anew.
    Were the kept head keyed without the method or the URL, a page's second resource
    would fetch the first one's URL (the wrong body to the client, and a wrong entry
    stored under the key) or a HEAD go as GET: RFC 9112 §3 (the request line names the
    target), RFC 9110 §9.3.2. Every head must equal the one a connection of its own
    gets. Severity if broken: high."""
    heads: list[bytes] = []

    def seen(head: bytes) -> bytes:
        heads.append(head)
        if head.startswith(b"HEAD"):
            return _NO_STORE[:-2]
        return _NO_STORE

    asked = (("GET", "/x"), ("GET", "/x"), ("GET", "/x"), ("HEAD", "/x"), ("HEAD", "/x"),
             ("GET", "/y"), ("GET", "/y"), ("GET", "/x"), ("HEAD", "/y"))
    async with raw_origin(seen) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        together = await _heads(client, asked, heads, together=True)
        assert forward_switch.state["sent"] >= len(asked) - 3  # (by callback, mostly)
        apart = await _heads(client, asked, heads, together=False)
    assert together == apart
    for (method, target), head in zip(asked, together, strict=True):
        assert head.startswith(f"{method} {target} HTTP/1.1\r\n".encode())
