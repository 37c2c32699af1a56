"""Review perfread6: a reader of the afternoon's performance merges (88a327c..9084ff8),
looking for what each kept thing depends on and its key or check leaves out, state that
outlives its request, and a path that uses something after it was renewed.

Read: perfreval6 (QuickForward._reply, ClientConnection.send_stored and its process-wide
kept head, Driver.validated_now pooling the connection itself, MemoryStore.touch_held),
perfsend2 (the upstream head kept by Route and Forward identity), perfpass3 (the marks
kept per QuickForward, answered's targeted-fields key), perfpool5 (Connection's
per-exchange state no longer reset, the identity check in data_received), perfobs4
(MissSlot), perfread5 (ClientConnection's slots, the usual read in one branch) and
perfhit4 (quick.hit's kept word on the request's lines).

No defect was found: each memo's key holds every input of what it hands out, checked by
reading and by comparing, while the existing tests ran, every kept value against the one
made afresh (send_stored's head, the upstream head, quick.hit's word on the lines, every
miss line and record of a kept shape) and every connection pooled again against the
defaults its state must have. The two tests below keep the two checks that a later change
could most easily break without an existing test noticing: the kept revalidated head
against the full reply for every kind of request interleaved with it, and a pooled
connection's per-exchange state after each kind of exchange.
"""

from __future__ import annotations

import asyncio
import re
import time
from email.utils import formatdate
from typing import Any

from support import raw_origin, until
from test_client_plane import Raw

_DATE = formatdate(time.time(), usegmt=True)
_SINCE = time.time() - 60


def _validated(head: bytes) -> bytes:
    """An origin of no-cache URLs (RFC 9111 §5.2.2.4: validated on every use) whose 304s
    repeat the stored Date (the kept head's case). /v varies on Accept-Encoding, with a
    gzip variant of its own tag; /s is stale instead (max-age=1, dated a minute ago)."""
    low = head.lower()
    if head.startswith(b"GET /s "):
        date = formatdate(_SINCE, usegmt=True)
        if b'if-none-match: "s1"' in low:
            return (f"HTTP/1.1 304 Not Modified\r\nDate: {date}\r\n"
                    f"Cache-Control: max-age=1\r\nETag: \"s1\"\r\n\r\n").encode()
        return (f"HTTP/1.1 200 OK\r\nDate: {date}\r\nCache-Control: max-age=1\r\n"
                f"ETag: \"s1\"\r\nContent-Length: 5\r\n\r\nstale").encode()
    varies = head.startswith((b"GET /v ", b"HEAD /v "))
    gzip = varies and b"accept-encoding: gzip" in low
    tag = '"g1"' if gzip else '"v1"'
    extra = ("Vary: Accept-Encoding\r\n" if varies else "") + \
        ("Content-Encoding: gzip\r\n" if gzip else "")
    body = "GZGZGZ" if gzip else "body-bytes"
    if f"if-none-match: {tag}".encode() in low:
        return (f"HTTP/1.1 304 Not Modified\r\nDate: {_DATE}\r\nCache-Control: no-cache\r\n"
                f"ETag: {tag}\r\n{extra}\r\n").encode()
    return (f"HTTP/1.1 200 OK\r\nDate: {_DATE}\r\nCache-Control: no-cache\r\nETag: {tag}\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n{body}").encode()


# (method, target, version, fields): each asked between two plain GETs of /r
_KINDS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("GET", "/r", "1.1", ("Origin: http://app.example",)),
    ("GET", "/r", "1.1", ("Origin: http://other.example",)),
    ("GET", "/r", "1.0", ()),
    ("GET", "/r", "1.0", ("Connection: keep-alive",)),
    ("GET", "/r", "1.1", ("Connection: close",)),
    ("GET", "/r", "1.1", ("Cache-Control: max-age=0",)),
    ("GET", "/r", "1.1", ('If-None-Match: "v1"',)),
    ("GET", "/r", "1.1", ('If-None-Match: "zz"',)),
    ("GET", "/r", "1.1", ("If-Modified-Since: Sat, 05 Dec 2099 00:00:00 GMT",)),
    ("GET", "/r", "1.1", ("Range: bytes=0-3",)),
    ("HEAD", "/r", "1.1", ()),
    ("GET", "/v", "1.1", ("Accept-Encoding: gzip",)),
    ("GET", "/v", "1.1", ()),
    ("GET", "/r", "1.1", ("Referer: http://app.example/?sid=secret",)),
    ("PIPELINED", "/r", "1.1", ()),  # three plain GETs of /r in one write
)
_PLAIN = ("GET", "/r", "1.1", ())
# Requests for one stored response whose Cache-Status differs, one after the other:
# forwarded as stale or at the client's request (RFC 9211 §2.2), stored or not (§2.3:
# a no-store request's 304 updates nothing, RFC 9111 §5.2.1.5).
_ASKED = [k for kind in _KINDS for k in (_PLAIN, kind, _PLAIN)] + [
    ("GET", "/s", "1.1", ()), ("GET", "/s", "1.1", ("Cache-Control: no-cache",)),
    ("GET", "/s", "1.1", ()), _PLAIN, ("GET", "/r", "1.1", ("Cache-Control: no-store",)),
    _PLAIN]


def _normal(head: bytes) -> tuple[str, ...]:
    """A response head without what moves from second to second (Date, Age, the ttl of
    Cache-Status): its status line and every field, in order."""
    lines = head.decode("latin-1").split("\r\n")
    return tuple(re.sub(r"(?i)^(date|age): .*", r"\1: -", re.sub(r"ttl=-?\d+", "ttl=-", line))
                 for line in lines)


async def _replies(client: Any) -> list[tuple[tuple[str, ...], bytes]]:
    """_ASKED in order, on keep-alive connections (a new one where the last answer ended
    its connection): each reply's normalised head and its body."""
    seen: list[tuple[tuple[str, ...], bytes]] = []
    conn = await Raw.open(client)
    for method, target, version, fields in _ASKED:
        count = 1
        if method == "PIPELINED":
            method, count = "GET", 3
        lines = [f"{method} {target} HTTP/{version}", "Host: example", *fields]
        await conn.send((("\r\n".join(lines) + "\r\n\r\n") * count).encode())
        for _ in range(count):
            head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
            length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
            body = b""
            if length and method != "HEAD" and b" 304 " not in head[:13]:
                body = await conn.reader.readexactly(int(length[1]))
            seen.append((_normal(head), body))
        if re.search(rb"(?i)\r\nconnection: close", head) or (
                version == "1.0" and not re.search(rb"(?i)\r\nconnection: keep-alive", head)):
            conn.writer.close()
            conn = await Raw.open(client)
    conn.writer.close()
    return seen


async def test_the_kept_revalidated_head_is_the_full_reply_for_every_kind_of_request(
        proxy: Any, monkeypatch: Any) -> None:
    """What is at stake (perfreval6): a revalidated reply answered whole is written from
    a head kept process-wide for the entry, route plan, version, Connection, Age second
    and Cache-Status inputs (client_conn.send_stored), and the requests between such
    replies need their own answers: a CORS grant or its absence (Fetch), HTTP/1.0 with
    and without keep-alive and a 1.1 close (RFC 9112 §9.3, §9.6, Appendix C.2.2), the
    client's own validators (RFC 9111 §4.3.2), a Range (RFC 9110 §14.2), a HEAD (§9.3.2),
    another Vary variant (§4.1), pipelined requests (RFC 9112 §9.3.2); and one stored
    response's replies whose Cache-Status differs one after the other (RFC 9211: fwd
    stale or request, stored or not). Every reply on the way must be byte for byte (but
    Date, Age and the ttl's value) what the full reply writes, as it did before the kept
    head (send_stored declining every request). Were it to fail, a user would see
    another request's Connection, CORS grant, validator, framing or Cache-Status (it
    fails with the key left without Connection, or without fwd, and with send_stored
    not declining an Origin: checked by mutation). Severity, were it broken: high."""
    from cacheproxy.proxy import client_conn

    async with raw_origin(_validated) as port:
        # (collapse off: a stale response's revalidation, which may collapse, is then
        # answered where its 304 is read too, as a no-cache response's always is)
        client = await proxy(f"http://127.0.0.1:{port}", cache={"collapse": False},
                             cors={"allow_origins": ("http://app.example",)})
        await _replies(client)  # (every variant stored: both runs find the same store)
        kept = await _replies(client)
        monkeypatch.setattr(client_conn.ClientConnection, "send_stored",
                            lambda *_: False)
        full = await _replies(client)
    assert sum("fwd-status=304" in " ".join(head) for head, _ in kept) > len(_KINDS) * 2
    assert kept == full


# Larger than what the socket buffers between origin, proxy and a client that does not
# read can hold: the pool's read pauses (64 KiB high-water mark), then resumes.
_BIG = b"b" * (8 << 20)


def _kinds_of_exchange(head: bytes) -> bytes | list[bytes | None]:
    target = head.split(b" ", 2)[1]
    if target == b"/chunked":  # chunk framing and a trailer section in reads of their own
        return [b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc",
                b"\r\n3\r\n", b"def", b"\r\n", b"0\r\nX-Sum: 1\r\n\r\n"]
    if target == b"/big":
        return (b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
                b"Content-Length: %d\r\n\r\n" % len(_BIG)) + _BIG
    if target == b"/early":
        return (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok")
    if target == b"/ws":  # an upgrade the origin declines: an answer as any other
        return (b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\n"
                b"no")
    if head.startswith(b"HEAD "):
        return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 5\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"


async def test_a_connection_pooled_again_has_its_exchange_state_as_new(proxy: Any) -> None:
    """What is at stake (perfpool5): the reset before an exchange no longer sets again
    the state every exchange ending in a reuse must leave as it found it (Connection's
    __init__ lists it). Any kind of exchange that pooled a connection with some of it
    set (reading paused after a body past the high-water mark, a body's waiter, an
    upgrade's state, a trailer's byte count, send_quick's receiver, a stall clock) would
    make a later request on it stall to a 504 or be misread (RFC 9112 §9.3 persistence),
    depending on which request took it. After each kind of exchange (chunked with a
    trailer section, a large body, HEAD, a 1xx then the answer, a declined upgrade), the
    one connection in the pool is checked as it is (it fails with _bare_bytes left after
    a trailer read in parts, or the pause kept once read_chunk resumed reading: checked
    by mutation; the existing behaviour tests pass with either). Severity, were it
    broken: high."""
    async with raw_origin(_kinds_of_exchange) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        pool = client.app_proxy.exchange.pool
        for method, path, body, fields in (
                ("GET", "/chunked", b"abcdef", {}), ("GET", "/big", _BIG, {}),
                ("HEAD", "/plain", b"", {}), ("GET", "/early", b"ok", {}),
                ("GET", "/ws", b"no", {"Connection": "Upgrade", "Upgrade": "websocket"}),
                ("GET", "/plain", b"ok", {})):
            if path == "/big":  # read only once the pool paused reading from the origin
                conn = await Raw.open(client)
                await conn.send(b"GET /big HTTP/1.1\r\nHost: example\r\n\r\n")
                assert await until(lambda: any(c._paused for c in pool._open))
                head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200 ")
                got = await asyncio.wait_for(conn.reader.readexactly(len(_BIG)), 10)
                assert got == _BIG
                conn.writer.close()
            else:
                resp = await client.request(method, path, headers=fields)
                assert (resp.status, await resp.read()) == (200, body), path
            idle = [c for conns in pool._idle.values() for c in conns]
            assert len(idle) == 1, path
            conn = idle[0]
            state = (conn._switching, conn._early, conn._interim, conn._buffered,
                     conn._paused, conn._waiter, conn._until_close, conn._receiver,
                     conn._blocked_since, conn._bare_bytes, bool(conn._chunks))
            assert state == (False, b"", None, 0, False, None, False, None, None, 0,
                             False), path
