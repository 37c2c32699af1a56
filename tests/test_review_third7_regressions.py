"""Third reading (third7) of this session's merges, where two changes meet: the --workers
channel (relayed forgets, ASK/ANSWER questions, COUNTED broadcast, owed clears) with real
`cacheproxy serve --workers N` processes; the collapse changes (waiters behind a 5xx, a
waiter whose client left) against Range, Vary and streaming; the h2c recovery in the
request parser against pipelining and the head limits; the upstream pool's trailer
allowance against a reused connection's next answer; the `<pid_file>.json` sidecar with
--workers. Origins are aiohttp apps or raw sockets on 127.0.0.1 sending exact bytes."""

from __future__ import annotations

from typing import Any

import pytest
from support import raw_origin


def _chunked_with_trailer(trailer: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n5\r\nhello\r\n0\r\n" + trailer + b"\r\n")


@pytest.mark.parametrize("trailer", [b"Connection: close\r\n",
                                     b"Connection: keep-alive, close\r\n",
                                     b"Proxy-Connection: close\r\n"])
async def test_a_connection_close_in_a_trailer_section_does_not_fail_the_next_request(
        proxy: Any, trailer: bytes) -> None:
    """What was wrong: the fuzz review made the pool drop a connection whose answer had
    Content-Length or Transfer-Encoding in its trailer section, but llhttp also takes
    `Connection: close` (and `Proxy-Connection`) from a trailer into the message's flags:
    the pool kept the connection (the origin kept it open), and the next request sent on
    it, any client's, any URL, was answered 502 "bad framing (Data after `Connection:
    close`)". What a user saw: one origin answer with an odd trailer failed another
    user's next request. RFC 9110 §6.5.1 (a trailer carries no framing or connection
    options; §7.6.1); nginx ignores trailers. Now a trailer naming any field llhttp keeps
    the connection by makes it not reused. Severity: medium (one answer fails another
    request; rare origins)."""
    def answer(head: bytes) -> bytes:
        if head.startswith(b"GET /a "):
            return _chunked_with_trailer(trailer)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        first = await client.get("/a")
        assert first.status == 200 and await first.read() == b"hello"
        second = await client.get("/b")
        assert (second.status, await second.read()) == (200, b"ok")
