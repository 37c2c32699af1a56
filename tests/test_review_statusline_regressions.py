"""Findings of review-statusline: an origin's `HTTP/1.2` status line (RFC 9110 §2.5: read
as HTTP/1.1, as nginx does) wherever it begins in the bytes of an upstream connection:
split by TCP at any byte, after interim (1xx) answers in the same or later reads, as the
next answer on a reused keep-alive connection. Real origins (raw sockets scripted per
connection, the pieces of an answer written apart) and the real proxy on 127.0.0.1; and a
property test of the upstream Connection's parsing over random splits. Each defect test
failed on the code it was written against (4ae8f52) with a 502."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_upstream_pool import RawOrigin, raw_origin

# A connection's script: (request head, index of the request on its connection) -> the
# answer's pieces, each written 0.05 s after the one before (reads the proxy gets apart).
Script = Callable[[bytes, int], list[bytes]]


def pieces_origin(script: Script) -> contextlib.AbstractAsyncContextManager[RawOrigin]:
    """An origin that counts its connections; each keep-alive connection answers by the
    script (test_upstream_pool's RawOrigin, which writes a list's pieces apart)."""
    async def run(head: bytes, index: int) -> list[bytes]:
        return script(head, index)

    return raw_origin(run)


async def _raw_get(port: int, path: str) -> bytes:
    """A GET on a connection of its own, read to the close (Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    try:
        return await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()


FINAL = b"HTTP/1.2 200 OK\r\nCache-Control: no-store\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize("cut", range(1, 9), ids=lambda cut: repr(FINAL[:cut].decode()))
async def test_a_http_1_2_status_line_split_by_tcp_is_read_as_1_1(proxy, cut):
    """An origin's `HTTP/1.2 200` status line is read as 1.1 only when the first read
    holds its first 9 bytes; split by TCP before that (`H`|`TTP/1.2 200`, `HTTP/1.`|`2
    200`), llhttp sees `1.2` and the client gets a 502. RFC 9110 §2.5: a recipient SHOULD
    process a higher minor version as the highest it conforms to; nginx parses the status
    line byte by byte and relays it wherever TCP splits it. Severity: low (origins that
    say HTTP/1.2 are rare; a split inside the status line is rarer: a slow or
    write-per-token origin)."""
    async with pieces_origin(lambda head, index: [FINAL[:cut], FINAL[cut:]]) as origin:
        c = await proxy(f"http://127.0.0.1:{origin.port}")
        resp = await c.get("/p")
        assert resp.status == 200 and await resp.read() == b"hello"
        assert resp.version == (1, 1)


@pytest.mark.parametrize("pieces", [
    pytest.param([b"HTTP/1.1 100 Continue\r\n\r\n",
                  b"HTTP/1.2 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.",
                  b"2 200 OK\r\nCache-Control: no-store\r\nContent-Length: 5\r\n\r\nhello"],
                 id="100|103+half|rest"),
    pytest.param([b"HTTP/1.9 100 Continue\r\n\r\nHTTP/1.5 103 Early Hints\r\nLink: </s.css>; "
                  b"rel=preload\r\n\r\nHTTP/1.2 103 Early Hints\r\nLink: </t.js>; rel=preload"
                  b"\r\n\r\nHTTP/1.3 200 OK\r\nCache-Control: no-store\r\n"
                  b"Content-Length: 5\r\n\r\nhello"], id="all-in-one-read"),
    pytest.param([b"HTTP/1.2 103 Early Hints\r\nLink: </s.css>; rel=preload\r",
                  b"\n", b"\r", b"\nH", FINAL[1:]], id="split-in-the-empty-line"),
])
async def test_a_http_1_2_status_line_after_interim_answers_is_read_as_1_1(proxy, pieces):
    """A final `HTTP/1.x` status line (x above 1) after one or several interim answers
    (100, 103), in the same read or a later one, reached llhttp unchanged (only the start
    of an answer's first read was rewritten): 502 instead of the answer, and the 103's
    Link hints were lost. RFC 9110 §2.5 (read as 1.1), §15.2 (a proxy MUST forward 1xx
    answers); nginx takes HTTP/1.2 wherever the status line begins. The 103s reach the
    client as HTTP/1.1, the 100 does not (the proxy answers its own). Severity: low."""
    async with pieces_origin(lambda head, index: pieces) as origin:
        c = await proxy(f"http://127.0.0.1:{origin.port}")
        answer = await _raw_get(c.server.port, "/p")
        assert answer.startswith(b"HTTP/1.1 103 Early Hints\r\n"), answer
        assert b"HTTP/1.1 100" not in answer and b"HTTP/1.2" not in answer, answer
        final = answer[answer.index(b"HTTP/1.1 200 OK\r\n"):]
        assert final.endswith(b"\r\n\r\nhello"), answer


async def test_a_split_http_1_2_answer_on_a_reused_connection_is_read_as_1_1(proxy):
    """The next answer on a kept-alive upstream connection: a status line split after
    `HTTP/1.` got a 502, where the same answer on a fresh connection in one read was
    relayed. The parser carries on from the message before; where the next status line
    begins is known again at each request. Severity: low."""
    def script(head: bytes, index: int) -> list[bytes]:
        if index == 0:
            return [b"HTTP/1.2 200 OK\r\nCache-Control: no-store\r\nContent-Length: 3\r\n\r\none"]
        return [b"HTTP/1.", b"2 103 Early Hints\r\n\r\nHTTP/1.4 200 OK\r\nCache-Control: "
                b"no-store\r\nContent-Length: 3\r\n\r\ntwo"]

    async with pieces_origin(script) as origin:
        c = await proxy(f"http://127.0.0.1:{origin.port}")
        first = await c.get("/1")
        assert first.status == 200 and await first.read() == b"one"
        second = await c.get("/2")
        assert second.status == 200 and await second.read() == b"two"
        assert origin.connections == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_status_line_bytes_in_a_body_or_a_field_value_reach_the_client_unchanged(
        proxy, chunked):
    """The final `HTTP/1.2 200` after a 103 got a 502 (as above); and the fix must not
    go further: status-line bytes inside a field value and inside a body split across
    reads (Content-Length or chunked, each piece beginning with `HTTP/1.2 103`) are no
    status line. RFC 9112 §6 frames the body by its length, and a proxy relays it
    unchanged (RFC 9110 §7.6: it MUST NOT change the content); both answers on one
    kept-alive connection. Severity: low (the 502); the guard is against a high one."""
    inner = b"HTTP/1.2 103 Early Hints\r\n\r\nHTTP/1.9 200 OK\r\n\r\n"
    body = inner * 3
    if chunked:
        framing = b"Transfer-Encoding: chunked\r\n\r\n"
        tail = [b"%x\r\n" % len(inner) + inner + b"\r\n" for _ in range(3)] + [b"0\r\n\r\n"]
    else:
        framing = b"Content-Length: %d\r\n\r\n" % len(body)
        tail = [inner, inner, inner]
    head = (b"HTTP/1.2 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            b"HTTP/1.2 200 OK\r\nCache-Control: no-store\r\nX-Note: HTTP/1.2 103 x\r\n" + framing)
    async with pieces_origin(lambda h, i: [head, *tail]) as origin:
        c = await proxy(f"http://127.0.0.1:{origin.port}")
        for path in ("/a", "/b"):  # (the second on the kept-alive connection)
            resp = await c.get(path)
            assert resp.status == 200 and await resp.read() == body
            assert resp.headers["X-Note"] == "HTTP/1.2 103 x"
        assert origin.connections == 1


# -- the upstream Connection, in process: random splits ---------------------------------------

EOLS = (b"\r\n", b"\n")  # RFC 9112 §2.2: a bare LF taken as a line end (llhttp's leniency)


@st.composite
def _answer(draw: Any, index: int) -> tuple[bytes, list[tuple[int, str]], int, tuple[int, int],
                                               list[tuple[str, str]], bytes]:
    """One exchange's bytes: interim answers at HTTP/1.1..1.9, the final answer at
    HTTP/1.0..1.9, its fields
    (one holding status-line bytes) and a body of status-line bytes (by length or
    chunked); what a client is to see of it: the 103s (status, Link), the status, the
    version, the fields and the body."""
    eol = draw(st.sampled_from(EOLS), label="eol")
    data = b""
    hints: list[tuple[int, str]] = []
    for status in draw(st.lists(st.sampled_from([100, 103]), max_size=3), label="interims"):
        # (1.1 and up: RFC 9110 §15.2, HTTP/1.0 has no 1xx; llhttp takes an HTTP/1.0 one
        # for a message after which the connection closes)
        minor = draw(st.integers(1, 9), label="interim minor")
        data += draw(st.sampled_from([b"", eol]), label="before")  # (llhttp skips CR LF)
        if status == 100:
            data += b"HTTP/1.%d 100 Continue%s%s" % (minor, eol, eol)
        else:
            link = f"</{index}/{len(hints)}.css>; rel=preload"
            data += b"HTTP/1.%d 103 Early Hints%sLink: %s%s%s" % (
                minor, eol, link.encode(), eol, eol)
            hints.append((103, link))
    minor = draw(st.integers(0, 9), label="final minor")
    status = draw(st.sampled_from([200, 404]), label="status")
    inner = draw(st.sampled_from([b"HTTP/1.2 200 OK\r\n\r\n", b"HTTP/1.5 103 x\n\n",
                                  b"\r\nHTTP/1.", b"H"]), label="inner")
    body = inner * draw(st.integers(0, 3), label="times")
    fields = [("X-Note", "HTTP/1.2 103 Early Hints")]
    if minor == 0:
        fields.append(("Connection", "keep-alive"))
    if minor and body and draw(st.booleans(), label="chunked"):  # (not 1.0's: §6.1)
        fields.append(("Transfer-Encoding", "chunked"))
        # (CRLF: llhttp's leniency for a bare LF is the head's, not chunk framing's)
        content = b"".join(b"%x\r\n%s\r\n" % (len(inner), inner)
                           for _ in range(len(body) // len(inner))) + b"0\r\n\r\n"
    else:
        fields.append(("Content-Length", str(len(body))))
        content = body
    data += draw(st.sampled_from([b"", eol]), label="before final")
    data += b"HTTP/1.%d %d Whatever%s" % (minor, status, eol)
    data += b"".join(f"{name}: {value}".encode() + eol for name, value in fields) + eol
    return data + content, hints, status, (1, 0 if minor == 0 else 1), fields, body


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_status_lines_of_higher_minors_are_read_as_1_1_however_the_bytes_are_split(
        data: Any) -> None:
    """pool.Connection against any split of one or two exchanges on one connection: each
    interim answer and final status line at HTTP/1.0..1.9 is read (1.2..1.9 as 1.1), the
    103s go to the interim callback, and the final answer's fields and body come out as
    sent, status-line bytes in them untouched."""
    from cacheproxy.proxy.pool import Connection, Origin, Pool

    loop = asyncio.new_event_loop()
    try:
        pool = Pool(4, 1.0, 30.0)
        pool._loop = loop
        conn = Connection(pool, Origin("http", "127.0.0.1", 1))
        transport = mock.Mock()
        transport.get_extra_info.return_value = None
        transport.is_closing.return_value = False
        transport.get_write_buffer_size.return_value = 0
        conn.connection_made(transport)
        for index in range(data.draw(st.integers(1, 2), label="exchanges")):
            stream, hints, status, version, fields, body = data.draw(_answer(index))
            got_hints: list[tuple[int, str]] = []
            received: list[bool] = []
            conn.send_quick(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False,
                            functools.partial(received.append, True), 5.0,
                            lambda s, r, f, got=got_hints: got.append((s, dict(f)["Link"])))
            cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=6),
                                    label="cuts"))
            for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
                conn.data_received(stream[start:end])
            assert conn._lost is None, (conn._lost, stream)
            assert received == [True] and conn.head_failure() is None
            assert (conn.status, conn.version) == (status, version)
            assert got_hints == hints
            assert list(conn.fields()) == fields
            assert conn.whole and conn.take_body() == body and conn.finished()
            assert conn.reusable
        conn.close()
    finally:
        loop.close()


def test_every_split_of_interims_and_a_final_answer_reads_the_same() -> None:
    """status_line.read_as_1_1 over an exchange cut at every byte, and at every pair of
    bytes inside the status lines: the bytes llhttp gets are the exchange's with each
    status line's minor read as 1, and nothing else changed (the field value and the
    body hold status-line bytes, one body piece begins where a status line would)."""
    from cacheproxy.http.status_line import DONE, START, read_as_1_1

    body = b"HTTP/1.2 103 x\r\n\r\nHTTP/1.3 200 OK\r\n\r\n"
    answer = (b"\r\nHTTP/1.%c 100 Continue\r\n\r\nHTTP/1.%c 103 Early Hints\nLink: </a>\n\r\n"
              b"HTTP/1.%c 103 Early Hints\r\nX: HTTP/1.2 1\r\n\n"
              b"HTTP/1.%c 404 Not Found\r\nX-Note: HTTP/1.2 103\r\nContent-Length: %d\r\n\r\n")
    stream = answer % (*b"2905", len(body)) + body
    want = answer % (*b"1101", len(body)) + body
    lines = [i for i in range(len(stream)) if stream.startswith(b"HTTP/1.", i)][:4]
    cut_sets = [(i,) for i in range(1, len(stream))] + [
        (i, j) for start in lines for i in range(start + 1, start + 13)
        for j in range(i + 1, start + 14)]
    for cuts in cut_sets:
        state, got = START, b""
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            piece, state = read_as_1_1(stream[start:end], state) if state >= 0 \
                else (stream[start:end], state)
            got += piece
        assert (got, state) == (want, DONE), cuts
