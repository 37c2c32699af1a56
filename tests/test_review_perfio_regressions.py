"""Review perfio: the client side's plumbing (proxy/client_conn.py, proxy/server_protocol.py)
made cheaper per request: a read's bookkeeping, the quick hit's write, the gathered send,
the timer after an answer.

The request parser's wrapper now says, in a slot (`_FallbackParser.settled`), that its last
feed was the usual one (one whole request without a body ending the bytes fed, nothing held
or open), and the connection then skips four property calls (in_body, holding, queue_full,
head_begun: about 1,000 instructions each on Python 3.11) and the head-size bookkeeping. The
tests pin what that relies on: `settled` never stands beside a parser that holds bytes, has a
body open or a head begun, however a pipelined stream is split.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web_protocol
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import HttpRequestParserPy
from hypothesis import given, settings
from hypothesis import strategies as st
from test_server_protocol import fallback_parser

needs_c = pytest.mark.skipif(web_protocol.HttpRequestParser is HttpRequestParserPy,
                             reason="aiohttp's C extension is not in use")

_GET = b"GET /g%d HTTP/1.1\r\nHost: a\r\n\r\n"
_POST = b"POST /p%d HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
_CHUNKED = (b"POST /c%d HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n")
_FOO = b"FOO /f%d HTTP/1.1\r\nHost: a\r\n\r\n"  # (llhttp refuses the method: Python parser)
_H2C = b"GET /u%d HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
_SHAPES = (_GET, _GET, _GET, _POST, _CHUNKED, _FOO, _H2C, b"\r\n")


@needs_c
@settings(max_examples=200, deadline=None)
@given(st.data())
def test_settled_parser_holds_nothing_however_the_stream_is_split(data: Any) -> None:
    """What the fast lane of ClientConnection.data_received relies on: whenever the wrapper
    says settled, its in_body, holding, queue_full and head_begun are all False, and the
    feed gave requests, the last without a body; settled is False on the Python parser. A
    wrong `settled` would have a connection skip a pipelined head's size bound or its
    client_header_timeout (RFC 9112 §9.5), or leave requests held in the parser unread.
    Severity: would be high (stalled or unbounded requests); a guard for this review's
    change, which failed no test before it."""
    loop = asyncio.new_event_loop()  # (for the payloads; nothing runs on it)
    parser = fallback_parser(loop)
    count = data.draw(st.integers(1, 40), label="requests")
    stream = b"".join(data.draw(st.sampled_from(_SHAPES)).replace(b"%d", b"%d" % i)
                      for i in range(count))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=6)))
    settled_seen = 0
    try:
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=False):
            for chunk in (stream[start:end], b""):  # (b"": what a full queue kept)
                messages, _, _ = parser.feed_data(chunk)
                if parser.settled:
                    settled_seen += 1
                    assert parser._python is None
                    assert messages and messages[-1][1] is web_protocol.EMPTY_PAYLOAD
                    assert not (parser.in_body or parser.holding or parser.queue_full
                                or parser.head_begun)
                for _ in messages:
                    if data.draw(st.booleans(), label="consumed"):
                        parser.message_consumed()
    except BadHttpMessage:
        pass  # (a refusal ends the connection: nothing is read after it)
    finally:
        loop.close()
    # (The usual read, a GET alone ending the stream, is settled.)
    if stream == _GET.replace(b"%d", b"0") and not cuts:
        assert settled_seen == 1
