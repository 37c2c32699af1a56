"""Review perfflow3: the quick path's probe on a miss, and the flow's request side.
QuickHits.hit remembers the last request's facts with the field lines, method and
Referer rule they were made from, and lookup's decision on a key holding nothing with
the facts, the route's cache settings and whether the key is marked hit-for-pass: a
client asking again with the same lines (a keep-alive connection, a poller, the bench)
is decided once. The tests pin, through the real proxy, that a request differing from
the last one in any of those inputs is decided afresh."""

from __future__ import annotations

from typing import Any

from support import raw_origin
from test_client_plane import Raw
from test_quick_hits import request

_NO_STORE = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"
_STORABLE = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok"


async def test_a_remembered_miss_follows_the_keys_hit_for_pass_mark(proxy: Any) -> None:
    """Performance (perfflow3): the decision on a key holding nothing is remembered with
    recently_passed. With the same lines (If-None-Match: "x"), /a's second request goes
    as it is (its key marked hit-for-pass: the origin's 304 would reach the client,
    Varnish's pass), and /b's, on a key never passed, must have its conditional taken
    out so that the cache can fill from a whole answer (RFC 9111 §4.3.2). Taking /a's
    remembered decision for /b would send /b's validator on and leave it unstored.
    Severity if broken: medium (a URL the cache could store goes uncached while a
    neighbour is passed)."""
    heads: list[bytes] = []

    def answer(head: bytes) -> bytes:
        heads.append(head)
        return _NO_STORE if head.startswith(b"GET /a ") else _STORABLE

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}", cache={"collapse": False})
        conn = await Raw.open(client)
        seen = []
        for path in ("/a", "/a", "/b", "/b"):
            await conn.send(request(path, ('If-None-Match: "x"',)))
            reply = await conn.reply()
            assert reply.status == 200
            seen.append(reply.headers.get("x-cache"))
    assert seen == ["MISS", "MISS", "MISS", "HIT"]
    assert [b"if-none-match" in h.lower() for h in heads] == [False, True, False]


async def test_remembered_facts_follow_the_method(proxy: Any) -> None:
    """Performance (perfflow3): the facts are remembered with the method. A HEAD with the
    same field lines as the GET before it, on the same connection and the same key
    (marked hit-for-pass by the GET's no-store answer), goes as HEAD (RFC 9110 §9.3.2)
    and its client gets no body; the GET's facts taken for it would send a GET and
    answer the HEAD with one, which the next reply on the connection would be read
    from. Severity if broken: high (a keep-alive connection's framing broken)."""
    methods: list[bytes] = []

    def answer(head: bytes) -> bytes:
        methods.append(head.split(b" ", 1)[0])
        return _NO_STORE.replace(b"\r\n\r\nok", b"\r\n\r\n") if head.startswith(b"HEAD") \
            else _NO_STORE

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}", cache={"collapse": False})
        conn = await Raw.open(client)
        await conn.send(request("/m", ()))
        assert (await conn.reply()).body == b"ok"
        await conn.send(request("/m", (), method="HEAD"))
        head = await conn.reply(head=True)
        assert head.status == 200
        await conn.send(request("/m", ()))
        again = await conn.reply()
        assert (again.status, again.body) == (200, b"ok")
    assert methods == [b"GET", b"HEAD", b"GET"]
