"""A second reader's probes of the session after 52869a2, kept as tests: the 414/431
split (long field values, lines read in pieces), a pipelined 501/505, the 501 to a client
still sending its body, a 304 or HEAD answer naming a transfer coding; and, as guards,
chunked in other cases and the head timer on both send paths."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import pytest
from test_hostile_http_regressions import OK, exchange, recording_origin, start, status_of


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(method target, status) of every access-log record."""
    import cacheproxy.proxy.listener as listener_mod
    seen: list[tuple[str, int]] = []
    real = listener_mod.Listener.record

    def record(self: Any, request: Any, status: int, sent: int, started: float) -> None:
        seen.append((f"{request.method} {request.path}", status))
        return real(self, request, status, sent, started)

    monkeypatch.setattr(listener_mod.Listener, "record", record)
    return seen


BEARER = b"Bearer " + b"x" * 9000


@pytest.mark.parametrize("field", [
    b"Authorization: " + BEARER,
    b"Referer: https://example.com/" + b"p" * 9000,
    b"Accept: */*;" + b"q" * 9000,
    b"Cookie: a=" + b"c" * 9000,
], ids=["bearer", "referer", "accept", "cookie"])
async def test_a_long_field_value_is_431_not_414(proxy, field):
    async with recording_origin(lambda head: OK) as origin:
        port = await start(proxy, origin)
        answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + field + b"\r\n\r\n")
        assert status_of(answer).startswith(b"HTTP/1.1 431 "), status_of(answer)


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET http://x/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: x\r\nReferer: https://x/" + b"p" * 9000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Path: /" + b"p" * 9000 + b"\r\n\r\n", 431),
], ids=["origin-form", "absolute-form", "referer", "slash-value"])
async def test_a_line_too_long_read_in_pieces_is_told_apart(proxy, head, status):
    """Over a real network a 9 KB line comes in many reads (1,400 bytes here): the line
    is still told by where it began in what was read of the head."""
    async with recording_origin(lambda head: OK) as origin:
        port = await start(proxy, origin)
        pieces = [head[i:i + 1400] for i in range(0, len(head), 1400)]
        answer = await exchange(port, *pieces)
        assert status_of(answer).startswith(b"HTTP/1.1 %d " % status), status_of(answer)


GZ_POST = (b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
           b"2\r\nhi\r\n0\r\n\r\n")
V09 = b"GET /b\r\n\r\n"


@pytest.mark.parametrize("second", [GZ_POST, V09], ids=["501", "505"])
@pytest.mark.parametrize("together", [True, False], ids=["one-write", "two-writes"])
async def test_a_pipelined_refusal_answers_the_one_before_then_itself(proxy, logged, second,
                                                                     together):
    async with recording_origin(lambda head: OK) as origin:
        port = await start(proxy, origin)
        first = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        chunks = (first + second,) if together else (first, second)
        answer = await exchange(port, *chunks)
        statuses = re.findall(rb"HTTP/1\.1 \d{3}[^\r]*", answer)
        code = 501 if second is GZ_POST else 505
        assert statuses[:1] == [b"HTTP/1.1 200 OK"], answer
        assert len(statuses) == 2 and statuses[1].startswith(b"HTTP/1.1 %d" % code), answer
        assert [s for _, s in logged] == [200, code], logged


@pytest.mark.parametrize("te", [b"CHUNKED", b"Chunked", b"\tchunked"])
async def test_chunked_in_another_case_or_with_whitespace_is_taken(proxy, te):
    async with recording_origin(lambda head: OK) as origin:
        port = await start(proxy, origin)
        answer = await exchange(port, b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                                + te + b"\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
        assert status_of(answer) == b"HTTP/1.1 200 OK", answer


GZ_CHUNKED_HEAD = b"Transfer-Encoding: gzip, chunked\r\n"


async def test_a_304_naming_the_transfer_coding_the_200_would_have_is_taken(proxy):
    """RFC 9112 §6.1: a server MAY send Transfer-Encoding in a 304 (the coding the 200
    would have had); it has no content, so nothing needs decoding."""
    def script(head: bytes) -> bytes:
        if b"if-none-match" in head.lower():
            return b"HTTP/1.1 304 Not Modified\r\nETag: \"v\"\r\nCache-Control: max-age=0\r\n" \
                   + GZ_CHUNKED_HEAD + b"\r\n"
        return (b"HTTP/1.1 200 OK\r\nETag: \"v\"\r\nCache-Control: max-age=0\r\n"
                b"Content-Length: 5\r\n\r\nhello")

    async with recording_origin(script) as origin:
        port = await start(proxy, origin)
        first = await exchange(port, b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(first) == b"HTTP/1.1 200 OK"
        again = await exchange(port, b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"if-none-match" in b"".join(origin.received).lower()
        assert status_of(again) == b"HTTP/1.1 200 OK", again


async def test_a_head_answer_naming_the_transfer_coding_a_get_would_have_is_taken(proxy):
    """RFC 9110 §9.3.2: a HEAD answer's fields are those a GET would have; it has no
    content."""
    def script(head: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n" + GZ_CHUNKED_HEAD
                + b"\r\n")

    async with recording_origin(script) as origin:
        port = await start(proxy, origin)
        # (no-store: forwarded as HEAD, not turned into a GET that fills the cache)
        answer = await exchange(port, b"HEAD /h HTTP/1.1\r\nHost: x\r\n"
                                      b"Cache-Control: no-store\r\n\r\n")
        assert b"".join(origin.received).startswith(b"HEAD ")
        assert status_of(answer) == b"HTTP/1.1 200 OK", answer


from test_upload_fault_regressions import scripted_origin  # noqa: E402

FINAL = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nhi"


@pytest.mark.parametrize("quick", [True, False], ids=["send_quick", "send"])
@pytest.mark.parametrize("interims", [0, 3])
async def test_head_timer_moves_with_reads_and_still_fires_on_silence(proxy, forward_switch,
                                                                      quick, interims):
    """read_timeout 0.5: interim answers 0.3 s apart keep it alive; then silence: 504
    within about read_timeout of the last read, and the connection is not reused."""
    seen: list[bytes] = []

    async def handler(reader, writer, head) -> bool:
        seen.append(head)
        if len(seen) <= 2:  # /silent, answered (no-store: known not stored), then /ok
            writer.write(FINAL)
            await writer.drain()
            return True
        for _ in range(interims):
            await asyncio.sleep(0.3)
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
            await writer.drain()
        if b"/silent" in head:
            await asyncio.sleep(5)
            return False
        writer.write(FINAL)
        await writer.drain()
        return True

    forward_switch(quick)
    async with scripted_origin(handler) as upstream:
        c = await proxy(upstream, proxy={"read_timeout": 0.5})
        for path in ("/silent", "/ok"):  # (and an idle connection to send on)
            resp = await c.get(path)
            assert resp.status == 200, await resp.text()
        forward_switch.state["sent"] = 0
        started = time.monotonic()
        resp = await c.get("/silent")
        took = time.monotonic() - started
        assert resp.status == 504
        assert 0.3 * interims + 0.4 < took < 0.3 * interims + 1.2, took
    if quick:
        assert forward_switch.state["sent"] >= 1


async def test_a_501_reaches_a_client_still_sending_its_body(proxy):
    """The refused upload goes on arriving after the 501: closed with unread bytes, the
    socket resets, and the client may lose the answer before reading it."""
    async with recording_origin(lambda head: OK) as origin:
        port = await start(proxy, origin)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"z" * 0x10000 + b"\r\n"
        got = b""
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                writer.write(chunk)
                await asyncio.sleep(0.005)
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            while data := await asyncio.wait_for(reader.read(65536), 1.0):
                got += data
        writer.close()
        assert b" 501 " in got[:40], got[:80]
