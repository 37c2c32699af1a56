"""Review perfpool5: the upstream pool's exchange (proxy/pool.py), once more.

The review looked at what a pooled connection does per exchange: the reset before it
(`Connection._reset_exchange`), the read that completes the answer (`data_received`, the
llhttp callbacks), and the release. The reset now sets again only what an exchange ending
in a reuse may have changed; the state every such exchange leaves as it found it (the
interim callback, the read's pause, the body's waiter, the request body's stall clock,
send_quick's receiver, an upgrade's state...) is set once, when the connection is made.
The test below pins what that could break and no earlier test pins as a whole: one
upstream connection carrying, one after the other, every kind of exchange that leaves
such state behind, each answer whole and right.
"""

from __future__ import annotations

from typing import Any

from support import raw_origin

_BIG = b"b" * 100_000  # past the pool's 64 KiB high-water mark: reading pauses, then resumes


def _answer(head: bytes) -> bytes | list[bytes | None]:
    target = head.split(b" ", 2)[1]
    if target == b"/big":
        return (b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
                b"Content-Length: %d\r\n\r\n" % len(_BIG)) + _BIG
    if target == b"/early":
        return (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 5\r\n\r\n"
                b"early")
    if target == b"/slow":  # the body in two reads: the proxy waits for its second half
        return [b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 6\r\n\r\n"
                b"sl", b"owly"]
    if head.startswith(b"HEAD "):
        return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 5\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"


async def test_one_upstream_connection_carries_every_kind_of_exchange_in_turn(
        proxy: Any) -> None:
    """What was at stake: the reset before an exchange no longer sets again the state an
    exchange ending in a reuse leaves as it found it. Had one kind of exchange left some
    of it changed (reading paused after a body past the high-water mark, a 1xx's count,
    the waiter of a body read in two parts, an answer to HEAD's parser), a user saw the
    next request on that connection stall to a 504, lose its 103, or get a 502, where
    nginx reuses the connection for each (RFC 9112 §9.3 persistence, RFC 9110 §15.2 1xx,
    §9.3.2 HEAD). Each answer comes whole, and the origin sees one connection.
    Severity: high, were it broken."""
    connections: list[int] = []
    async with raw_origin(_answer, connections) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        for _ in range(2):
            for method, path, body in (("GET", "/plain", b"ok"), ("GET", "/big", _BIG),
                                       ("HEAD", "/plain", b""), ("GET", "/plain", b"ok"),
                                       ("GET", "/early", b"early"),
                                       ("GET", "/slow", b"slowly"),
                                       ("GET", "/plain", b"ok")):
                resp = await client.request(method, path)
                assert resp.status == 200, (method, path)
                assert await resp.read() == body, (method, path)
        assert len(connections) == 1
