"""The trailers review (review-trailers): the two parser limits once left as strict xfails,
fixed since.

Upstream: an origin's chunked answer whose trailer section names framing fields that
llhttp refuses there (`Content-Length` twice, or one that is not a number: RFC 9110
§6.5.1 says to ignore them, as nginx does), with the trailer section whole in one read,
split across reads, never ended, too large, followed by bytes past the message, and the
connection after it (never reused). A property test drives llhttp and the recovery
(http/trailer_section.py, proxy/trailer_skip.py) over random bodies that hold the very
bytes the recovery looks for, random trailers and random read splits.

Client side: a connection moved to aiohttp's Python parser (a method llhttp does not
know) whose read holds requests, then one with `Connection: close` (or a malformed one),
then more bytes: the requests up to the close are answered (before the malformed one's
400), nothing after it is read (RFC 9112 §9.6), and a body that hides a request is not
read as one (smuggling).

Real proxy in front of origins on 127.0.0.1 (raw sockets sending exact bytes, aiohttp
apps). Each test of a defect failed before its fix (on 8dd581e)."""

from __future__ import annotations

import itertools
from typing import Any
from unittest import mock

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import cache_status, raw_origin
from test_review_h2cpipe_regressions import _get, answered_then_closed

from cacheproxy.http.trailer_section import refused_trailer_framing, section_bytes
from cacheproxy.proxy.server_protocol import _StrictPythonParser
from cacheproxy.proxy.trailer_skip import TrailerSkip

_HEAD = (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n")


def _chunked(trailer: bytes, body: bytes = b"hello") -> bytes:
    return _HEAD + b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, trailer)


def _plain(head: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok"


# -- upstream: framing fields in a trailer section ---------------------------------------

async def test_a_refused_trailer_content_length_is_stored_and_its_connection_not_reused(
        proxy: Any) -> None:
    """What was wrong: a chunked answer whose trailer section held `Content-Length`
    twice was cut after its last data chunk ("bad framing (Duplicate Content-Length)").
    What a user saw: a whole answer relayed as broken (no last chunk), never stored.
    RFC 9110 §6.5.1 (framing fields in trailers are ignored; nginx relays and caches
    such an answer). The connection must not be reused after it: the next request goes
    on a new one. Severity: low."""
    accepted: list[int] = []

    def answer(head: bytes) -> bytes:
        if head.startswith(b"GET /a "):
            return _chunked(b"Content-Length: 1\r\nX-Sum: 9\r\nContent-Length: 2\r\n")
        return _plain(head)

    async with raw_origin(answer, accepted) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        first = await client.get("/a")
        assert first.status == 200 and await first.read() == b"hello"
        again = await client.get("/a")
        assert await again.read() == b"hello" and "hit" in cache_status(again)
        other = await client.get("/b")
        assert other.status == 200 and await other.read() == b"ok"
    assert len(accepted) == 2  # /b did not go on /a's connection


@pytest.mark.parametrize("trailer", [
    b"Content-Length: abc\r\n",                       # not a number, as the first field
    b"Content-Length:\r\n",                           # empty
    b"Content-Length: 99999999999999999999999\r\n",   # overflow
    b"X-A: 1\ncontent-length: 1\ncontent-length: 1\n",  # bare LF line ends, same value
])
async def test_other_content_lengths_llhttp_refuses_in_trailers_are_ignored(
        proxy: Any, trailer: bytes) -> None:
    """The neighbours of the duplicate: every Content-Length llhttp refuses in a trailer
    section (its reasons: "Invalid character in", "Empty", "overflow", "Duplicate") cut
    the answer short the same way before the fix. RFC 9110 §6.5.1. Severity: low."""
    async with raw_origin(lambda head: _chunked(trailer)) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        first = await client.get("/a")
        assert first.status == 200 and await first.read() == b"hello"
        again = await client.get("/a")
        assert "hit" in cache_status(again)


async def test_a_refused_trailer_section_split_across_reads_ends_where_it_ends(
        proxy: Any) -> None:
    """The trailer section in three reads, the refused line cut in its name and the
    empty line cut in two: the answer is whole once its empty line is in, and stored.
    (Failed before the fix: the body broke off at the duplicate.) Severity: low."""
    whole = _chunked(b"Content-Length: 1\r\nContent-Length: 2\r\n")
    cut = whole.index(b"gth: 2")
    pieces = [whole[:cut], whole[cut:-1], whole[-1:]]
    async with raw_origin(lambda head: pieces) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        first = await client.get("/a")
        assert await first.read() == b"hello"
        assert "hit" in cache_status(await client.get("/a"))


async def test_a_refused_trailer_section_that_never_ends_is_a_broken_body(
        proxy: Any) -> None:
    """An origin that closes inside the trailer section (after the refused field, before
    its empty line): the body broke off (RFC 9112 §7.1: a chunked message ends with its
    trailer section's empty line), as for any other cut: nothing is stored, and the next
    request is a miss answered whole. Guards the fix (no answer taken as whole too
    early). Severity: low."""
    calls: list[bytes] = []

    def answer(head: bytes) -> list[bytes | None]:
        calls.append(head)
        if len(calls) == 1:
            return [_chunked(b"Content-Length: 1\r\nContent-Length: 2\r\n")[:-2], None]
        return [_plain(head)]

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        first = await client.get("/a")
        assert first.status == 200
        with pytest.raises(Exception):  # noqa: B017  # (aiohttp's payload error)
            await first.read()
        again = await client.get("/a")
        assert await again.read() == b"ok" and "hit" not in cache_status(again)


async def test_bytes_past_a_refused_trailer_section_leave_the_answer_whole(
        proxy: Any) -> None:
    """Bytes after the trailer section's empty line (an origin's junk): the answer is
    whole (stored), its connection closed; the next request goes on a new connection and
    is answered (RFC 9112 §6.3, as after any message). Guards the fix. Severity: low."""
    accepted: list[int] = []

    def answer(head: bytes) -> bytes:
        if head.startswith(b"GET /a "):
            return _chunked(b"Content-Length: 1\r\nContent-Length: 2\r\n") + b"junk"
        return _plain(head)

    async with raw_origin(answer, accepted) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        first = await client.get("/a")
        assert await first.read() == b"hello"
        assert "hit" in cache_status(await client.get("/a"))
        other = await client.get("/b")
        assert await other.read() == b"ok"
    assert len(accepted) == 2


async def test_a_trailer_section_too_large_after_a_refused_field_is_a_broken_body(
        proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Past the refused field, the trailer section is still bounded as the header
    section is (RFC 9110 §5.4): an origin that sends field lines without end has its
    body broken off, not read for ever. Guards the fix. Severity: low."""
    endless = b"Content-Length: 1\r\nContent-Length: 2\r\n" + b"X-Pad: " + b"p" * 400_000
    async with raw_origin(lambda head: _chunked(endless)[:-4]) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        first = await client.get("/a")
        with pytest.raises(Exception):  # noqa: B017  # (aiohttp's payload error)
            await first.read()
    assert "trailer section too large" in caplog.text  # (not proxy.read_timeout)


async def test_a_malformed_trailer_field_that_is_no_framing_field_still_breaks_the_body(
        proxy: Any) -> None:
    """Only what RFC 9110 §6.5.1 says to ignore is ignored: a trailer field with a
    control character in its value stays bad framing (the body broke off, nothing
    stored), as before. Guards the fix. Severity: low."""
    async with raw_origin(lambda head: _chunked(b"X-A: \x01\r\n")) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        first = await client.get("/a")
        with pytest.raises(Exception):  # noqa: B017  # (aiohttp's payload error)
            await first.read()


class _Answer:
    """What the pool takes from llhttp, and the recovery of pool.Connection._skip_trailer."""

    def __init__(self) -> None:
        self.parser: Any = httptools.HttpResponseParser(self)
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self.body = bytearray()
        self.complete = self.past = self.failed = False

    def on_headers_complete(self) -> None:
        self.parser.set_dangerous_leniencies(lenient_chunked_length=True)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def read(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.complete:
                self.past = True
            elif refused_trailer_framing(str(exc)):
                self.parser = TrailerSkip(self, 200, "1.1")
                try:
                    self.parser.feed_data(section_bytes(data))
                except httptools.HttpParserError:
                    self.past = True
            else:
                self.failed = True


_BYTES = st.lists(st.sampled_from([b"a", b"\r\n", b"\n", b"\r\n\r\n", b"\n\n", b"0\r\n",
                                   b"\ncontent-length: 1\r\n", b"Content-Length: 2"]),
                  max_size=8).map(b"".join)
_FIELD = st.sampled_from([b"Content-Length: 1", b"Content-Length: x", b"content-length:",
                          b"X-A: b", b"Transfer-Encoding: gzip", b"CONTENT-LENGTH: 2"])


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(_BYTES.filter(bool), max_size=4),
       fields=st.lists(_FIELD, min_size=1, max_size=5),
       eol=st.sampled_from([b"\r\n", b"\n"]),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=4))
def test_the_trailer_recovery_ends_the_message_exactly_at_its_end(
        chunks: list[bytes], fields: list[bytes], eol: bytes, cuts: list[int]) -> None:
    """Property: whatever the body holds (empty lines, `\\ncontent-length` lines), the
    trailer fields (refused by llhttp or not) and where the reads are cut, the body
    delivered is the body sent, and the message is complete once its last byte is read
    and not one byte before."""
    message = _HEAD + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" \
        + b"".join(f + eol for f in fields) + eol
    at = sorted({min(c, len(message)) for c in cuts} | {0, len(message)})
    reads = [message[a:b] for a, b in itertools.pairwise(at) if b > a]
    answer = _Answer()
    for i, data in enumerate(reads):
        if i == len(reads) - 1 and len(data) > 1:
            answer.read(data[:-1])  # all but the last byte: not complete yet
            assert not answer.complete
            data = data[-1:]
        answer.read(data)
    assert (answer.complete, answer.past, answer.failed) == (True, False, False)
    assert bytes(answer.body) == b"".join(chunks)


# -- client side: Connection: close on aiohttp's Python parser -----------------------------

async def test_requests_up_to_close_on_the_python_parser_are_answered_and_none_after(
        origin: Any, proxy: Any) -> None:
    """What was wrong: on a connection moved to aiohttp's Python parser (a method llhttp
    does not know), a read holding requests, one with `Connection: close`, then more
    bytes got one 400 for all (aiohttp's "Data after `Connection: close`" loses the
    requests parsed in the feed). What a user saw: requests a client pipelined were
    refused. RFC 9112 §9.6: the close request is answered, nothing after it processed
    (as llhttp's path did, _FallbackParser._until_close). Severity: low."""
    (first, second), seen = await answered_then_closed(
        origin, proxy, _get("/zero", method="PURGEX") + _get("/one", "Connection: close")
        + _get("/two"), 2)
    assert (first.status, first.body) == (200, b"PURGEX /zero")
    assert (second.body, second.headers.get("connection")) == (b"GET /one", "close")
    assert seen == ["PURGEX /zero", "GET /one"]


async def test_bodies_up_to_close_on_the_python_parser_are_read_as_bodies(
        origin: Any, proxy: Any) -> None:
    """Smuggling guard for the fix: requests with Content-Length bodies that hold a
    request's bytes (and the close request with a body too) are read again by their
    lengths: the origin gets each body as a body, never the request inside it, and
    nothing after the close. Severity of what it guards: high (request smuggling)."""
    hidden = _get("/smuggled")
    (first, second), seen = await answered_then_closed(
        origin, proxy,
        _get("/zero", f"Content-Length: {len(hidden)}", method="PURGEX", body=hidden)
        + _get("/one", "Content-Length: 2", "Connection: close", method="POST", body=b"hi")
        + _get("/two"), 2)
    assert first.status == 200 and second.headers.get("connection") == "close"
    assert seen == [f"PURGEX /zero {hidden.decode()}".strip(), "POST /one hi"]


async def test_a_chunked_request_before_close_on_the_python_parser_still_gets_400(
        origin: Any, proxy: Any) -> None:
    """Where the walk cannot be sure (a chunked body before the close), the read still
    gets one 400 and the connection closes, as the README's Limits say for llhttp's
    path; nothing of it reaches the origin. Guards the fix. Severity: low."""
    (first,), seen = await answered_then_closed(
        origin, proxy, _get("/zero", method="PURGEX")
        + _get("/one", "Transfer-Encoding: chunked", "Connection: close", method="POST",
               body=b"2\r\nhi\r\n0\r\n\r\n")
        + _get("/two"), 1)
    assert first.status == 400
    assert "GET /two" not in seen


async def test_the_python_parser_walk_takes_a_head_begun_in_an_earlier_feed() -> None:
    """The parser alone (as with AIOHTTP_NO_EXTENSIONS=1, where no llhttp is in front):
    a request line begun in one feed, whole with a close request and more in the next:
    both requests come back, the bytes after the close are not parsed, and the parser
    still counts the two as in flight (its pipelining limit). Guards the fix."""
    import asyncio

    parser = _StrictPythonParser(mock.Mock(), asyncio.get_running_loop(), 2**16,
                                 max_msg_queue_size=8)
    assert parser.feed_data(b"PURGEX /a HT")[0] == []
    messages, upgraded, tail = parser.feed_data(
        b"TP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [m.path for m, _ in messages] == ["/a", "/b"] and not upgraded and tail == b""
    assert messages[1][0].should_close and parser._msg_in_flight == 2


async def test_requests_before_a_malformed_one_on_the_python_parser_are_answered(
        origin: Any, proxy: Any) -> None:
    """What was wrong: on a connection moved to aiohttp's Python parser, a read holding
    a request and then a malformed one (two Content-Lengths) got one 400 for all: the
    parser refuses the whole feed. What a user saw: the request before the bad one
    unanswered. llhttp's path answers it, then the 400 (README, Limits); so does this
    one now, and nothing after the malformed request reaches the origin. RFC 9112
    §9.3.2 (pipelined requests are answered in order). Severity: low."""
    (first, second), seen = await answered_then_closed(
        origin, proxy, _get("/zero", method="PURGEX")
        + _get("/bad", "Content-Length: 1", "Content-Length: 2") + _get("/two"), 2)
    assert (first.status, first.body) == (200, b"PURGEX /zero")
    assert second.status == 400 and second.headers.get("connection") == "close"
    assert seen == ["PURGEX /zero"]


async def test_the_python_parser_walk_hands_back_an_error_only_where_it_is_taken() -> None:
    """The parser alone: with answers_first (ClientConnection's) the request before a
    malformed one comes back, then the malformed one as its error, and nothing is read
    after; without it (aiohttp's RequestHandler, which takes no error among requests)
    the feed is refused as before. Guards the fix."""
    import asyncio

    from aiohttp.http_exceptions import BadHttpMessage

    feed = (b"PURGEX /a HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    loop = asyncio.get_running_loop()
    taking = _StrictPythonParser(mock.Mock(), loop, 2**16, max_msg_queue_size=8)
    taking.answers_first = True
    messages, _, _ = taking.feed_data(feed)
    assert messages[0][0].path == "/a" and isinstance(messages[1][0], BadHttpMessage)
    assert taking.feed_data(b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n") == ([], False, b"")
    refusing = _StrictPythonParser(mock.Mock(), loop, 2**16, max_msg_queue_size=8)
    with pytest.raises(BadHttpMessage):
        refusing.feed_data(feed)
