"""Review perfpass3: a pass-through's answer from the pool to the client's write
(quick_forward._arrived and _pass_on, Driver.decided, the flow's remembered Pass, the
marks, client_conn's begin_relayed and send_whole). A quick forward now keeps the marks it
made last (Via, Cache-Status, X-Cache) with what they were made from, and takes that list
again for the next answer of its client connection; and the flow's remembered Pass keys
the route's targeted fields by one check when the answer has none of them. These tests
pin that each answer on one keep-alive connection still gets its own marks, against the
real proxy in front of an origin on 127.0.0.1 that sends bytes of the test's choosing."""

from __future__ import annotations

import asyncio
import re

from support import raw_origin
from test_review_perfpass2_regressions import _exchange


def _answer(request: bytes) -> bytes:
    """The same fixed Date and fields for every target but the Cache-Control its name
    asks for (/no-store, /private) and, for /old, an HTTP/1.0 status line."""
    target = re.search(rb"GET /(\w+)", request)
    name = target.group(1) if target else b"no-store"
    version = b"1.0 200 OK\r\nConnection: keep-alive" if name == b"old" else b"1.1 200 OK"
    directive = b"private" if name == b"private" else b"no-store"
    return (b"HTTP/" + version + b"\r\nDate: Sat, 05 Dec 2026 12:00:00 GMT\r\n"
            b"Cache-Control: " + directive + b"\r\nContent-Length: 2\r\n\r\nok")


async def test_each_pass_through_on_a_connection_gets_its_own_cache_status(proxy) -> None:
    """The marks a quick forward made for its connection's last pass-through are taken
    again when the Via version, the cache's name, the Cache-Status member and X-Cache are
    all the same: an answer passed on for another reason (private after no-store: RFC 9211
    §2.8 detail) must show its own Cache-Status, and one from an HTTP/1.0 origin its own
    Via (RFC 9110 §7.6.3; the second of two such answers is passed on by callback), then
    the next answer the marks of its own again, never those kept from the answer before.
    Severity: would be medium (a Cache-Status or Via that
    misreports what the cache did, to people and tools reading them)."""
    async with raw_origin(_answer) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        reader, writer = await asyncio.open_connection(c.server.host, c.server.port)
        try:
            got = [await _exchange(reader, writer, f"/{name}") for name in (
                "no-store", "no-store", "no-store", "private", "private", "no-store", "old",
                "old", "no-store", "no-store")]
        finally:
            writer.close()
    for status, _, body in got:
        assert (status, body) == ("HTTP/1.1 200 OK", b"ok")
    status_of = [fields["Cache-Status"] for _, fields, _ in got]
    assert all("detail=no-store" in s for s in status_of[:3] + status_of[5:])
    assert all("detail=private" in s for s in status_of[3:5])
    assert [fields["Via"] for _, fields, _ in got] == ["1.1 cacheproxy"] * 6 + [
        "1.0 cacheproxy"] * 2 + ["1.1 cacheproxy"] * 2
    assert {fields["X-Cache"] for _, fields, _ in got} == {"MISS"}
