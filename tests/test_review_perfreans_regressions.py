"""Review perfreans: the origin's answer taken in (proxy/pool.py), made cheaper.

The review looked at what a pooled exchange spends on an answer it has parsed before: a
revalidation's `304 Not Modified`, or a small static answer, repeats to the byte from
one request to the next within a second (its Date ticks once a second). The pool now
keeps the last answer it read whole in its exchange's first read and saw twice in a row
(HTTP/1.1, final, not to HEAD, not transfer-coded, a Content-Length or a 304/204,
nothing past its end but CR LF, the connection left reusable, at most 4 KiB and 64
fields), with what llhttp made of it; a fresh exchange (not to HEAD, no upgrade asked)
whose first read holds exactly those bytes takes that again without llhttp. llhttp stays
the judge of every other read. The tests below send the bytes of their choosing from a
raw origin through the real proxy and pin what the kept answer must not get wrong: each
input it is keyed on changed in turn must give the answer those bytes say, framing and
connection reuse included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from support import raw_origin, until
from test_client_plane import Raw
from test_quick_hits import request

from cacheproxy.proxy.pool import Origin

_SAME = (b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nX-Answer: same\r\n"
         b"Content-Length: 5\r\n\r\nhello")
_EXTRA = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"


def _in_turn(answers: list[bytes | list[bytes | None]]
             ) -> Callable[[bytes], bytes | list[bytes | None]]:
    """An origin's answer function that gives answers one per request, in order."""
    def answer(_head: bytes) -> bytes | list[bytes | None]:
        return answers.pop(0)
    return answer


async def _get(client: Any, path: str = "/p", method: str = "GET"
               ) -> tuple[int, Any, bytes]:
    resp = await client.request(method, path)
    return resp.status, resp.headers, await resp.read()


async def test_the_same_answer_again_on_one_connection_and_on_another(proxy: Any) -> None:
    """What was at stake: the same bytes again are taken from what their first parse
    gave, on the connection that read them and on another one (the kept answer is the
    pool's). Had the state that parse leaves not been set as llhttp leaves it (complete,
    reusable, the body queued once), a user saw a body doubled or missing, or a request
    stall to a 504 on the reused connection. Here each request gets the answer whole,
    three of them on one upstream connection (RFC 9112 §9.3 persistence), and the answer
    after the origin closed it on a second one. Severity: high, were it broken."""
    connections: list[int] = []
    answers: list[bytes | list[bytes | None]] = [_SAME, _SAME, _SAME, [_SAME, None], _SAME,
                                                 _SAME]
    async with raw_origin(_in_turn(answers), connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        for _ in range(6):
            status, headers, body = await _get(client)
            assert (status, headers["X-Answer"], body) == (200, "same", b"hello")
        assert len(connections) == 2  # reused until the origin closed it, then a new one
        kept = client.app_proxy.exchange.pool._again
        assert kept is not None and kept[0] == _SAME  # (the answer was kept and taken)


# Each differs from _SAME in one place; what the client must see, and whether the
# origin's connection may carry the next request.
_VARIANTS = {
    "status": (_SAME.replace(b"200 OK", b"203 Non-Authoritative Information"), 203,
               "same", b"hello", True),
    "field": (_SAME.replace(b"X-Answer: same", b"X-Answer: sane"), 200, "sane", b"hello",
              True),
    "content-length": (_SAME.replace(b"Length: 5", b"Length: 4")[:-1], 200, "same",
                       b"hell", True),
    "body": (_SAME[:-1] + b"O", 200, "same", b"hellO", True),
    "connection-close": (_SAME.replace(b"X-Answer", b"Connection: close\r\nX-Answer"), 200,
                         "same", b"hello", False),
    "http-1.0": (_SAME.replace(b"HTTP/1.1", b"HTTP/1.0"), 200, "same", b"hello", False),
}


@pytest.mark.parametrize("variant", list(_VARIANTS))
async def test_an_answer_one_byte_apart_is_parsed_afresh(proxy: Any, variant: str) -> None:
    """What was at stake: an answer differing from the kept one in one byte (the status,
    a field's value, Content-Length, the body, a `Connection: close`, HTTP/1.0) must be
    parsed by llhttp, not taken for the kept one. Had it been, a user saw the previous
    answer's status, field or body, a body cut or run on into the next answer (RFC 9112
    §6.3), or a connection the origin closes reused (§9.3, §9.6: a 502 on the next
    request); and after an HTTP/1.0 answer, the kept HTTP/1.1 one must clear the pool's
    HTTP/1.0 note for that origin again (RFC 9112 §6.1: no chunked request to an origin
    not known to speak HTTP/1.1) and be marked `Via: 1.1` (RFC 9110 §7.6.3).
    Severity: high, were it broken."""
    changed, status, field, body, kept_alive = _VARIANTS[variant]
    connections: list[int] = []
    answers: list[bytes | list[bytes | None]] = [_SAME, _SAME, changed, _SAME, _SAME]
    async with raw_origin(_in_turn(answers), connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        pool, origin = client.app_proxy.exchange.pool, Origin("http", "127.0.0.1", port)
        for _ in range(2):
            got_status, headers, got_body = await _get(client)
            assert (got_status, headers["X-Answer"], got_body) == (200, "same", b"hello")
        got_status, headers, got_body = await _get(client)
        assert (got_status, headers["X-Answer"], got_body) == (status, field, body)
        if variant == "http-1.0":
            assert pool.speaks_http10(origin)
            assert headers["Via"].startswith("1.0 ")
        for _ in range(2):
            got_status, headers, got_body = await _get(client)
            assert (got_status, headers["X-Answer"], got_body) == (200, "same", b"hello")
            assert headers["Via"].startswith("1.1 ")
        assert not pool.speaks_http10(origin)
        assert len(connections) == (1 if kept_alive else 2)


async def test_the_same_bytes_in_two_reads_or_with_an_empty_line_after(proxy: Any) -> None:
    """What was at stake: only a first read that holds the kept bytes whole is taken
    again; the same answer split over two reads (TCP may split it anywhere) is llhttp's
    to parse, its body waited for. And llhttp skips a CR LF after an answer (as before
    a message, RFC 9112 §2.2): such a read is kept, and its body is not its last bytes.
    Had a read holding a part been compared as the whole, or the body been taken as
    the read's tail, a user saw a truncated or shifted body, or a 502.
    Severity: high, were it broken."""
    connections: list[int] = []
    answers: list[bytes | list[bytes | None]] = [
        _SAME, _SAME, [_SAME[:30], _SAME[30:]], [_SAME[:-2], _SAME[-2:]], _SAME,
        *[_SAME + b"\r\n"] * 3, _SAME]
    async with raw_origin(_in_turn(answers), connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        for _ in range(9):
            status, headers, body = await _get(client)
            assert (status, headers["X-Answer"], body) == (200, "same", b"hello")
        assert len(connections) == 1


@pytest.mark.parametrize("late", [False, True], ids=["same-read", "next-read"])
async def test_the_same_bytes_then_extra_bytes(proxy: Any, late: bool) -> None:
    """What was at stake: bytes past the end of an answer (RFC 9112 §6.3) mean the
    origin's framing is off: the connection is closed, never reused (the extra bytes
    could be read as the next request's answer: a smuggled response, README's
    extra-bytes origin). In the same read, the read is not the kept bytes; in a later
    read, they follow an answer taken from the kept one, and must close its connection
    as they close one whose answer llhttp parsed. Had either been missed, a user saw
    the next request answered with "evil". Severity: critical, were it broken."""
    connections: list[int] = []
    extra: bytes | list[bytes | None] = [_SAME, _EXTRA] if late else _SAME + _EXTRA
    answers: list[bytes | list[bytes | None]] = [_SAME, extra, _SAME]
    async with raw_origin(_in_turn(answers), connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        for _ in range(2):
            status, _, body = await _get(client)
            assert (status, body) == (200, b"hello")
        if late:  # (the extra bytes come 0.05 s after the answer: the close after them)
            pool = client.app_proxy.exchange.pool
            origin = Origin("http", "127.0.0.1", port)
            assert await until(lambda: not pool._idle.get(origin))
        status, _, body = await _get(client)
        assert (status, body) == (200, b"hello")
        assert len(connections) == 2  # not reused after its extra bytes


async def test_the_same_bytes_as_the_answer_to_head(proxy: Any) -> None:
    """What was at stake: an answer to HEAD ends with its head (RFC 9110 §9.3.2, RFC 9112
    §6.3 rule 1); the kept bytes sent to a HEAD carry content past that end, which nginx
    takes as the origin's framing being off: the connection is closed. Had the kept
    answer been taken for a HEAD, its body would be queued as a GET's and the connection
    pooled, and the HEAD client's next request could get those bytes. Here the HEAD gets
    the head alone and the next request a new connection. Severity: high, were it
    broken."""
    connections: list[int] = []
    answers: list[bytes | list[bytes | None]] = [_SAME, _SAME, _SAME, _SAME]
    async with raw_origin(_in_turn(answers), connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        assert (await _get(client))[2] == b"hello"
        assert (await _get(client))[2] == b"hello"
        status, headers, body = await _get(client, method="HEAD")
        assert (status, headers["X-Answer"], body) == (200, "same", b"")
        assert (await _get(client))[2] == b"hello"
        assert len(connections) == 2


async def test_a_304_kept_then_a_200_with_the_same_fields(proxy: Any) -> None:
    """What was at stake: a stored `no-cache` response is revalidated on every request;
    the origin's 304 repeats to the byte and is taken again, until the origin sends a
    200 with the same fields and a new body: that one must be parsed, relayed and
    stored (RFC 9111 §4.3.3: a full response replaces the stored one). Had the kept 304
    been taken for it, a user saw the old body after the resource changed.
    Severity: high, were it broken."""
    fields = b"Cache-Control: no-cache\r\nETag: \"v\"\r\n"
    full = b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 3\r\n\r\n"
    not_modified = b"HTTP/1.1 304 Not Modified\r\n" + fields + b"\r\n"
    connections: list[int] = []
    answers: list[bytes | list[bytes | None]] = [full + b"one", not_modified, not_modified,
                                                 not_modified, full + b"two", not_modified]
    async with raw_origin(_in_turn(answers), connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        bodies = [(await _get(client, "/r"))[::2] for _ in range(6)]
        assert bodies == [(200, b"one")] * 4 + [(200, b"two")] * 2
        assert len(connections) == 1


async def test_the_kept_fields_are_never_changed_downstream(proxy: Any) -> None:
    """What was at stake: the FieldList an answer taken again gets is the one its first
    parse made, handed to every exchange with the same bytes: the driver, the flow's
    rules (a 304's merge, §3.2; Date added, RFC 9110 §6.6.1), the store and the client's
    head all read it. Had any of them changed it in place (a field appended, a value
    replaced, its index edited), every later answer with those bytes would carry the
    change: a user saw one response's fields on another. The review found none that
    does (they make new lists); this pins it for a mix of answers: a stored one and its
    304s (with and without Date), a pass-through, one with Set-Cookie, one to HEAD.
    Severity: high, were it broken."""
    stored = (b"HTTP/1.1 200 OK\r\nCache-Control: no-cache\r\nETag: \"s\"\r\n"
              b"Vary: Accept-Encoding\r\nContent-Length: 2\r\n\r\nok")
    with_date = (b"HTTP/1.1 304 Not Modified\r\nDate: Sat, 05 Dec 2026 10:00:00 GMT\r\n"
                 b"Cache-Control: no-cache\r\nETag: \"s\"\r\n\r\n")
    without_date = b"HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=0\r\nETag: \"s\"\r\n\r\n"
    cookie = (b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nCache-Control: max-age=60\r\n"
              b"Content-Length: 2\r\n\r\nck")

    def answer(head: bytes) -> bytes:
        target = head.split(b" ", 2)[1]
        if target == b"/s":
            return with_date if b"if-none-match" in head.lower() else stored
        if target == b"/n":
            return without_date if b"if-none-match" in head.lower() else stored
        return cookie if target == b"/c" else _SAME

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        pool = client.app_proxy.exchange.pool
        seen: dict[int, tuple[Any, ...]] = {}  # (the FieldList held: no id reused)
        taken = 0
        for path, method in [("/s", "GET"), ("/p", "GET"), ("/s", "GET"), ("/n", "GET"),
                             ("/c", "GET"), ("/p", "HEAD"), ("/p", "GET"), ("/s", "GET")] * 2:
            for _ in range(3):  # (an answer is kept once seen twice in a row)
                status, _, _ = await _get(client, path, method)
                assert status == 200
                kept = pool._again
                if kept is None:
                    continue
                fields = kept[5]
                now = (list(fields), {k: list(v) for k, v in fields.by_name.items()})
                if id(fields) in seen:
                    taken += 1
                    assert seen[id(fields)][1] == now, path
                else:
                    seen[id(fields)] = (fields, now)
        assert taken > 10


async def test_an_nginx_shaped_304_with_connection_kept_then_closed(proxy: Any) -> None:
    """What was at stake: nginx's 304 carries `Connection: keep-alive` (Server, Date,
    Last-Modified, Connection, ETag); such an answer is kept too, llhttp having judged
    its Connection field on the first parse. The same answer with `Connection: close`
    instead (RFC 9112 §9.6) is other bytes: parsed afresh, and its connection is not
    reused. Had the kept verdict stood for it, the next request went on a connection
    the origin closes: a user saw a 502, or a retry. Severity: high, were it broken."""
    head = (b"Server: nginx\r\nDate: Sat, 05 Dec 2026 10:00:00 GMT\r\n"
            b"Last-Modified: Fri, 04 Dec 2026 10:00:00 GMT\r\n")
    full = (b"HTTP/1.1 200 OK\r\n" + head + b"Connection: keep-alive\r\nETag: \"n\"\r\n"
            b"Cache-Control: no-cache\r\nContent-Length: 5\r\n\r\nnginx")
    alive = (b"HTTP/1.1 304 Not Modified\r\n" + head + b"Connection: keep-alive\r\n"
             b"ETag: \"n\"\r\n\r\n")
    closing = alive.replace(b"keep-alive", b"close")
    connections: list[int] = []
    answers: list[bytes | list[bytes | None]] = [full, alive, alive, closing, closing,
                                                 closing, alive]
    async with raw_origin(_in_turn(answers), connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        pool = client.app_proxy.exchange.pool
        for i in range(7):
            status, headers, body = await _get(client, "/n")
            assert (status, body, headers.get("Connection")) == (200, b"nginx", None)
            if i == 2:
                assert pool._again is not None and pool._again[0] == alive
        assert len(connections) == 4  # a new one after each close


async def test_an_interim_answer_in_the_same_read_is_passed_on_each_time(proxy: Any) -> None:
    """What was at stake: a 103 Early Hints before the final answer, in the same read,
    must reach the client each time (RFC 9110 §15.2: a proxy MUST forward 1xx answers);
    such a read is never kept, as taking it again would skip the interim callback. Had
    it been kept, a browser got the 103 once and then never again: its preloads lost.
    Severity: medium, were it broken (no wrong content, hints lost)."""
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
    async with raw_origin(lambda _head: early + _SAME) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        raw = await Raw.open(client)
        try:
            for _ in range(4):
                await raw.send(request("/hints", ()))
                hint = await raw.reply(head=True)
                assert (hint.status, hint.headers.get("link")) == (103, "</s.css>; rel=preload")
                final = await raw.reply()
                assert (final.status, final.body) == (200, b"hello")
        finally:
            raw.close()
