"""A review of where one upstream message ends and the next begins in the pool's parser
(proxy/pool.py, llhttp through httptools): interim (1xx) answers before the final one,
one of them saying `Connection: close`, split across reads anywhere; the final answer to
a HEAD, chunked; and the messages after which a connection must not carry another one
(bytes past a message, a 204 announcing content). Each test failed before its fix, or
says it guards a behaviour the fix must keep; against the real proxy and raw origins on
127.0.0.1 that send bytes of the test's choosing."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from support import until
from test_client_plane import Raw
from test_quick_hits import request
from test_upstream_pool import OK, raw_origin, url

HINTS = b"HTTP/1.1 103 Early Hints\r\nConnection: close\r\nLink: </s.css>; rel=preload\r\n\r\n"
FINAL = (b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 5\r\n\r\nfinal")
CHUNKED = (b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n"
           b"\r\n3\r\nfin\r\n2\r\nal\r\n0\r\n\r\n")


async def _twice(c: Any, origin: Any, path: str) -> None:
    """Two GETs in turn: each gets the final answer, each on a connection of its own (the
    close the interim answer asked for held after the final one)."""
    for n in (1, 2):
        resp = await c.get(path)
        assert (resp.status, await resp.read()) == (200, b"final"), resp
        assert origin.connections == n


@pytest.mark.parametrize("quick", [False, True], ids=["full-path", "quick-forward"])
@pytest.mark.parametrize("interims", [
    pytest.param(HINTS, id="103-close"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n" + HINTS, id="100,103-close"),
    pytest.param(HINTS + b"HTTP/1.1 103 Early Hints\r\nLink: </t.js>; rel=preload\r\n\r\n",
                 id="103-close,103"),
    pytest.param(b"HTTP/1.1 102 Processing\r\nConnection: close\r\n\r\n"
                 b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
                 id="102-close,103"),
    pytest.param(HINTS.replace(b"HTTP/1.1", b"HTTP/1.0").replace(b"Connection: close\r\n", b""),
                 id="103-http1.0"),
    pytest.param(HINTS.replace(b"\r\n", b"\n"), id="103-close-bare-LF"),  # RFC 9112 §2.2
])
async def test_interim_answers_saying_close_let_the_final_one_through(
        proxy: Any, forward_switch: Any, quick: bool, interims: bytes) -> None:
    """What was wrong: llhttp (httptools) refuses every byte after a message whose
    connection is to close (`Connection: close`, or HTTP/1.0 without keep-alive), an
    interim (1xx) answer's too; the final answer after it was refused as "Data after
    `Connection: close`". What a user saw: the 103, then 502 "bad framing" for an
    answer the origin sent whole. RFC 9110 §15.2: a 1xx ends with its
    header section, and the final answer follows; §7.6.1: the close comes after that.
    nginx and Squid read a 1xx's fields, then the final answer. Now the final answer is
    read and relayed, the 103 before it (without its Connection field, hop-by-hop), and
    the connection is not kept after it. Severity: low (an unusual origin; a 502, no
    wrong content)."""
    async def script(head: bytes, index: int) -> bytes:
        return OK if origin.requests == 1 else interims + FINAL

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        forward_switch(quick)
        # A kept-alive connection first, and the key known as not stored: the quick path
        # takes only an idle connection, and a request no other waits behind.
        assert await (await c.get("/hints", headers={"Host": "example"})).read() == b"hi"
        pool = c.app_proxy.exchange.pool
        assert await until(lambda: any(pool._idle.values()))
        raw = await Raw.open(c)
        await raw.send(request("/hints", ()))
        for _ in range(interims.count(b" 103 ") + interims.count(b" 102 ")):
            early = await raw.reply(head=True)
            assert early.status in (102, 103) and "connection" not in early.headers, early
        final = await raw.reply()
        assert (final.status, final.body) == (200, b"final"), final
        raw.close()
        assert forward_switch.state["sent"] == int(quick)  # the path under test
        resp = await c.get("/again")  # on a connection of its own
        assert (resp.status, await resp.read()) == (200, b"final")
        assert origin.connections == 2


_WHOLE = HINTS + FINAL
_END = len(HINTS)


@pytest.mark.parametrize("cuts", [
    pytest.param((_END - 3,), id="in-the-1xx-empty-line-after-CR"),
    pytest.param((_END - 2,), id="in-the-1xx-empty-line-after-CRLF"),
    pytest.param((_END - 1,), id="in-the-1xx-empty-line-before-LF"),
    pytest.param((_END,), id="at-the-1xx-end"),
    pytest.param((_END + 7,), id="in-the-final-status-line"),
    pytest.param((_END + 40,), id="in-the-final-fields"),
    pytest.param((len(_WHOLE) - 7,), id="in-the-final-empty-line"),
    pytest.param((len(HINTS) - 1, _END + 1, _END + 9), id="three-cuts"),
    pytest.param(tuple(range(_END - 4, _END + 10)), id="byte-by-byte-across-the-boundary"),
])
async def test_interim_close_and_final_answer_split_across_reads(
        proxy: Any, cuts: tuple[int, ...]) -> None:
    """What was wrong: as above (a 502 for the final answer after a 103 saying close),
    wherever TCP splits the bytes: inside the 1xx's empty line, at its end, inside the
    final answer's status line, fields or empty line. RFC 9112 §2.2 (a line ends with
    CRLF), RFC 9110 §15.2. Each piece is a read of its own. Severity: low."""
    bounds = (0, *cuts, len(_WHOLE))
    pieces = [_WHOLE[a:b] for a, b in pairwise(bounds)]

    async def script(head: bytes, index: int) -> list[bytes]:
        return pieces

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        await _twice(c, origin, "/split")


async def test_an_interim_close_before_a_chunked_final_answer(proxy: Any) -> None:
    """What was wrong: as above, for a final answer framed by chunked (RFC 9112 §7.1): a
    502. Its chunks are read and relayed whole, the connection not kept. Severity: low."""
    async def script(head: bytes, index: int) -> list[bytes]:
        return [HINTS + CHUNKED[:60], CHUNKED[60:]]

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        await _twice(c, origin, "/chunked")


async def test_an_interim_close_before_the_final_answer_to_a_head(proxy: Any) -> None:
    """What was wrong: as above, for HEAD (RFC 9110 §9.3.2: the final answer has no
    content, whatever its Content-Length): a 502. The 103 and the final head are relayed;
    the connection is not kept (an answer to HEAD never keeps it: llhttp cannot be told it
    has no content). Severity: low."""
    async def script(head: bytes, index: int) -> bytes:
        return HINTS + FINAL[:-5]

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        for n in (1, 2):
            resp = await c.head("/head")
            assert resp.status == 200 and resp.headers["Content-Length"] == "5"
            assert await resp.read() == b""
            assert origin.connections == n


@pytest.mark.parametrize("after", [
    pytest.param(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nfinal",
                 id="close"),
    pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nfinal", id="http1.0"),
])
async def test_bytes_after_a_final_answer_saying_close_are_still_refused(
        proxy: Any, after: bytes) -> None:
    """Guards the fix above (llhttp now parses on after a message saying close): bytes
    after a final answer whose connection is to close (a second answer in the same read,
    one no request asked for) are never taken for the next request's answer, and the
    connection is not kept. RFC 9112 §9.6 (close after it), §6.3 (bytes past the end of a
    message); nginx closes an upstream connection that sent more than its answer. Passed
    before the fix; it must still."""
    smuggled = (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n"
                b"\r\nEVIL!")

    async def script(head: bytes, index: int) -> bytes:
        return after + smuggled if b"/first" in head else OK

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        resp = await c.get("/first")
        assert (resp.status, await resp.read()) == (200, b"final")
        resp = await c.get("/second")
        assert (resp.status, await resp.read()) == (200, b"hi")
        assert origin.connections == 2


@pytest.mark.parametrize("announced", [
    pytest.param(b"Content-Length: 5\r\n", id="content-length"),
    pytest.param(b"Transfer-Encoding: chunked\r\n", id="chunked"),
])
async def test_a_204_announcing_content_does_not_keep_its_connection(
        proxy: Any, announced: bytes) -> None:
    """What was wrong: a 204 has no content whatever its fields say (RFC 9112 §6.3), and a
    server MUST NOT send it Content-Length or Transfer-Encoding (RFC 9110 §8.6, RFC 9112
    §6.1). An origin that does (a framework writing the body it was given) sends that
    body after the head; the pool kept the connection, and when those bytes came after
    the next request went out on it, they were read as the start of its answer. What a
    user saw: the 204 itself fine, then a 502 "bad framing" for the next request, an
    innocent one (not retried: bytes of "its" answer had come). The connection is now
    closed after such a 204, as after an HTTP/1.0 answer with Transfer-Encoding (RFC 9112
    §6.1: the sender may have held part of a message back). (nginx keeps it: this is
    stricter, for origins that break a MUST NOT.) Severity: low-medium (a stranger's
    request fails for another's answer)."""
    late = b"12345" if announced.startswith(b"Content") else b"5\r\n12345\r\n0\r\n\r\n"

    async def script(head: bytes, index: int) -> bytes:
        if b"/empty" in head:
            return (b"HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\n" + announced
                    + b"\r\n")
        # The 204's content comes only now, once a request is sent on its connection.
        return (late if index else b"") + OK

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        resp = await c.get("/empty")
        assert resp.status == 204 and await resp.read() == b""
        pool = c.app_proxy.exchange.pool
        assert await until(lambda: not pool._open or any(pool._idle.values()))
        resp = await c.get("/next")
        assert (resp.status, await resp.read()) == (200, b"hi")
        assert origin.connections == 2
