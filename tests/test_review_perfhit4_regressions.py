"""Review perfhit4: a fresh hit's own steps (the quick path's hit branch, the plain hit's
write, its observation). QuickHits.hit now keeps, with the last request's field lines,
what those lines say of its way (an Expect or a Via loop: the full path; none of the
fields lookup reads nor Origin: a plain GET), and asks an entry whose head the route
keeps for a plain hit no more about its Content-Encoding. The tests pin, through the
real proxy, that a request with the same lines is still judged by the config and the
entry of its own time."""

from __future__ import annotations

from typing import Any

from support import proxy_config, raw_origin
from test_client_plane import Raw, reconfigure
from test_quick_hits import request

_STORABLE = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok"
_CODED = (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Encoding: gzip\r\n"
          b"Content-Length: 2\r\n\r\ngz")


async def test_the_same_lines_after_a_reload_that_renames_the_cache_are_a_loop(
        proxy: Any) -> None:
    """Performance (perfhit4): what a request's lines say of a Via loop is remembered
    with the lines and the plans. A request naming "other" in Via LOOP_HOPS (8) times is
    a HIT while this cache is called "cacheproxy"; once a reload renames it "other",
    the same lines, on the same kept-alive connection, name this cache 8 times: a loop,
    which the full path answers 508 (RFC 5842 §7.2, hit or not). Keeping the word on the
    lines past the reload would replay the stored 200 to a looping request. Severity if
    broken: medium (a proxy loop is not cut where the lines repeat)."""
    async with raw_origin(lambda head: _STORABLE) as port:
        upstream = f"http://127.0.0.1:{port}"
        client = await proxy(upstream)
        conn = await Raw.open(client)
        looped = request("/v", tuple(["Via: 1.1 other"] * 8))
        statuses = []
        for _ in range(2):
            await conn.send(looped)
            reply = await conn.reply()
            statuses.append((reply.status, reply.headers.get("x-cache")))
        reconfigure(client.server.app, proxy_config(upstream, proxy={"via": "other"}))
        await conn.send(looped)
        reply = await conn.reply()
        statuses.append((reply.status, reply.headers.get("x-cache")))
    assert statuses[:2] == [(200, "MISS"), (200, "HIT")]
    assert statuses[2][0] == 508, statuses


async def test_a_coded_entry_replacing_a_replayed_one_is_not_a_plain_hit(
        proxy: Any) -> None:
    """Performance (perfhit4): an entry whose head the route keeps (replayed as a plain
    hit) is taken as one without Content-Encoding. When a refetch (the client's
    no-cache) stores a gzip-coded answer under the same key, a client that sends no
    Accept-Encoding must not get those bytes as a HIT (RFC 9110 §12.5.3; Varnish never
    sends gzip to such a client): the coding check is asked again of the new entry, and
    the proxy goes forward for it. Severity if broken: high (a body the client cannot
    decode)."""
    answers = iter([_STORABLE, _CODED, _CODED])  # (a refetch for an Accept-Encoding: gzip)
    heads: list[bytes] = []

    def answer(head: bytes) -> bytes:
        heads.append(head)
        return next(answers)

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        conn = await Raw.open(client)
        plain = request("/c", ())
        seen = []
        for data in (plain, plain, request("/c", ("Cache-Control: no-cache",
                                                           "Accept-Encoding: gzip")), plain):
            await conn.send(data)
            reply = await conn.reply()
            seen.append((reply.headers.get("x-cache"), reply.body))
    assert seen[:2] == [("MISS", b"ok"), ("HIT", b"ok")]
    assert seen[2][1] == b"gz"
    assert seen[3] != ("HIT", b"gz"), seen
    assert len(heads) == 3 and b"accept-encoding" not in heads[2].lower()
