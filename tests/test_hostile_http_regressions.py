"""Findings of an adversarial review of hostile HTTP/1.1 on both sides of the proxy
(review-smuggle). Each test fails on the code it was written against (dd72ac6) and says
what RFC 9112 / RFC 9110 asks instead. Raw sockets on 127.0.0.1 only: a scripted origin
(one answer per request, recording the bytes it received) and a raw client."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

# The origin's script: request head -> the bytes it answers (keep-alive).
Script = Callable[[bytes], bytes]
OK = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"


class Recorder:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[bytes] = []  # every byte received, per connection
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.received)
        self.received.append(b"")
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.received[index] += head
                lower = head.lower()
                if b"transfer-encoding: chunked" in lower:
                    body = await reader.readuntil(b"0\r\n\r\n")
                    self.received[index] += body
                writer.write(self.script(head))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def recording_origin(script: Script) -> AsyncIterator[Recorder]:
    origin = Recorder(script)
    server = await asyncio.start_server(origin.serve, "127.0.0.1", 0)
    origin.port = server.sockets[0].getsockname()[1]
    try:
        yield origin
    finally:
        server.close()


async def exchange(port: int, *chunks: bytes, idle: float = 0.5) -> bytes:
    """Send chunks (0.1 s apart) on one connection; everything read until the close or
    `idle` seconds without a byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(0.1)
            writer.write(chunk)
            await writer.drain()
        out = b""
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            while data := await asyncio.wait_for(reader.read(65536), idle):
                out += data
        return out
    finally:
        writer.close()


def status_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n", 1)[0]


async def start(proxy: Any, origin: Recorder) -> int:
    client = await proxy(origin.url)
    return int(client.server.port)


# -- transfer codings other than chunked are dropped, not decoded ------------------------


async def test_a_request_transfer_coding_the_proxy_does_not_apply_is_not_dropped(proxy):
    """`Transfer-Encoding: gzip, chunked` on a request: the proxy removes the chunked
    coding and forwards `Transfer-Encoding: chunked` alone, so the origin takes the
    gzip-coded bytes for the content. RFC 9112 §6.1: a server that receives a transfer
    coding it does not understand SHOULD answer 501; RFC 9112 §7: an intermediary that
    removes a coding must decode it (and say so in Transfer-Encoding)."""
    coded = gzip.compress(b"name=value")
    async with recording_origin(lambda head: OK) as origin:
        port = await start(proxy, origin)
        answer = await exchange(port, b"POST /up HTTP/1.1\r\nHost: x\r\n"
                                      b"Transfer-Encoding: gzip, chunked\r\n\r\n"
                                      b"%x\r\n%s\r\n0\r\n\r\n" % (len(coded), coded))
        received = b"".join(origin.received)
        assert coded not in received or b"gzip" in received.lower(), \
            "the origin got gzip-coded bytes framed as plain content"
        assert status_of(answer) == b"HTTP/1.1 501 Not Implemented"


async def test_a_response_transfer_coding_other_than_chunked_is_not_stored_as_content(proxy):
    """An origin's `Transfer-Encoding: gzip, chunked`: the proxy undoes the chunked coding
    only, drops the field, and relays and stores the gzip-coded bytes as the content (a hit
    replays them with `Content-Length` and no coding named): every client gets binary
    garbage for the response's lifetime. RFC 9112 §7: a recipient that removes a transfer
    coding must decode it; one it cannot decode makes the answer unusable (502)."""
    coded = gzip.compress(b"hello world")

    def script(head: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Type: text/plain\r\n"
                b"Transfer-Encoding: gzip, chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                % (len(coded), coded))

    async with recording_origin(script) as origin:
        port = await start(proxy, origin)
        for _ in range(2):  # the miss, then the hit
            answer = await exchange(port, b"GET /gz HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _, body = answer.partition(b"\r\n\r\n")
            coding_named = b"gzip" in head.lower()
            assert coding_named or coded not in body, \
                "gzip-coded bytes relayed as identity content: " + head.split(b"\r\n")[0]


# -- aiohttp's Python parser (after a method llhttp does not know) is laxer than llhttp --


async def test_the_python_parser_refuses_raw_bytes_in_the_target_as_llhttp_does(proxy):
    """server_protocol says the Python parser is as strict as llhttp or stricter on every
    shape but four. A request-target with raw bytes 0x80-0xFF (not a URI, RFC 3986;
    RFC 9112 §3.2: 400) gets llhttp's 400, but once a connection has sent one request with
    an unknown method it is forwarded upstream byte for byte."""
    async with recording_origin(lambda head: OK) as origin:
        port = await start(proxy, origin)
        fresh = await exchange(port, b"GET /a\xffb HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(fresh) == b"HTTP/1.1 400 Bad Request"
        after = await exchange(port, b"FOO /first HTTP/1.1\r\nHost: x\r\n\r\n",
                               b"GET /a\xffb HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"/a\xffb" not in b"".join(origin.received)
        assert b"400 Bad Request" in after


# -- version strings ---------------------------------------------------------------------


async def test_an_http_0_9_request_is_not_answered_with_an_http_0_9_status_line(proxy):
    """llhttp takes `GET /a` (no version: HTTP/0.9) and the proxy answers
    `HTTP/0.9 200 OK` with a header section: no such status line exists (HTTP/0.9
    answers have none; RFC 9112 §2.3, RFC 9110 §6.2: a server answers in the highest
    version it conforms to, or refuses the request: 505)."""
    async with recording_origin(lambda head: OK) as origin:
        port = await start(proxy, origin)
        answer = await exchange(port, b"GET /a\r\n\r\n")
        assert not answer.startswith(b"HTTP/0.9"), status_of(answer)


async def test_an_origin_status_line_saying_http_2_0_is_refused_not_stored(proxy):
    """An origin on an HTTP/1.1 connection answering `HTTP/2.0 200 OK` (llhttp takes it):
    relayed, stored, and `Via: 2.0 cacheproxy` claims HTTP/2 was received. HTTP/2 has no
    such text framing (RFC 9113); it is an invalid HTTP/1.x status line (RFC 9112 §4),
    whose framing cannot be trusted: 502."""
    def script(head: bytes) -> bytes:
        return b"HTTP/2.0 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nhello"

    async with recording_origin(script) as origin:
        port = await start(proxy, origin)
        answer = await exchange(port, b"GET /h2 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(answer) == b"HTTP/1.1 502 Bad Gateway"


@pytest.mark.parametrize("version", [b"1.2", b"1.9"])
async def test_an_origin_status_line_of_a_higher_1_x_minor_is_read_as_1_1(proxy, version):
    """RFC 9110 §2.5: a message of a major version the recipient implements and a higher
    minor version SHOULD be processed as the highest minor it conforms to (1.1); nginx
    relays `HTTP/1.2 200 OK` from its upstream. llhttp refuses it, and the proxy answered
    502. Read as 1.1: relayed, stored (a hit next), its connection kept for the next
    request (two answers on one connection)."""
    def script(head: bytes) -> bytes:
        return (b"HTTP/" + version + b" 200 OK\r\nCache-Control: max-age=60\r\n"
                b"Content-Length: 5\r\n\r\nhello")

    async with recording_origin(script) as origin:
        port = await start(proxy, origin)
        for path in (b"/a", b"/b", b"/a"):
            answer = await exchange(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(answer) == b"HTTP/1.1 200 OK" and answer.endswith(b"hello")
            assert b"\r\nVia: 1.1 " in answer, answer
        assert b"X-Cache: HIT" in answer, answer
        assert len(origin.received) == 1 and origin.received[0].count(b"GET ") == 2


# -- status codes ------------------------------------------------------------------------


@pytest.mark.parametrize("python", [False, True], ids=["llhttp", "python-parser"])
async def test_a_request_target_too_long_is_414(proxy, python):
    """RFC 9112 §3: "A server that receives a request-target longer than any URI it
    wishes to parse MUST respond with a 414 (URI Too Long) status code". The proxy
    answers 400."""
    async with recording_origin(lambda head: OK) as origin:
        port = await start(proxy, origin)
        first = (b"FOO /first HTTP/1.1\r\nHost: x\r\n\r\n",) if python else ()
        answer = await exchange(port, *first,
                                b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"HTTP/1.1 414 " in answer


async def test_a_100_continue_expectation_is_not_forwarded_on_a_request_without_content(
        proxy):
    """RFC 9110 §10.1.1: "A client MUST NOT generate a 100-continue expectation in a
    request that does not include content"; the proxy is the origin's client and passes a
    body-less GET's `Expect: 100-continue` on (as it does an HTTP/1.0 client's, which a
    server MUST ignore)."""
    async with recording_origin(lambda head: OK) as origin:
        port = await start(proxy, origin)
        await exchange(port, b"GET /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n")
        assert b"expect:" not in b"".join(origin.received).lower()
