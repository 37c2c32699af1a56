"""What an origin's answer may hold that llhttp accepts and the proxy must not pass on as
it is: a status outside 1xx-5xx, a 1xx with content, an endless trailer section, a
reason phrase split over reads or holding control characters; and what the log says
when a body breaks off. Each test failed before its fix. Origins are raw sockets on
127.0.0.1 sending exact bytes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from test_client_plane import Raw
from test_pool_review_regressions import Scripted
from test_quick_hits import request
from test_upstream_pool import OK, raw_origin, url, warnings_of

# An answer hidden in a body: sent on as a body without its framing, it would be read as
# the answer to the client's next request.
EVIL = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Smuggled: yes\r\n\r\nSMUGGLED"


def _path(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]


# -- RFC 9110 §15: a status is 1xx to 5xx; RFC 9110 §15.2: a 1xx has no content ------------

@pytest.mark.parametrize("quick", [False, True], ids=["full-path", "quick-forward"])
@pytest.mark.parametrize(("status_line", "framing", "cause"), [
    (b"099 Whatever", b"Content-Length: %d" % len(EVIL), "status 99 is below 100"),
    (b"000 Zero", b"Content-Length: %d" % len(EVIL), "status 0 is below 100"),
    (b"150 Interim", b"Content-Length: %d" % len(EVIL), "a 150 answer with content"),
    (b"199 Interim", b"Transfer-Encoding: chunked", "a 199 answer with content"),
], ids=["099", "000", "150-length", "199-chunked"])
async def test_a_status_below_100_or_a_1xx_with_content_is_refused(
        proxy: Any, caplog: Any, forward_switch: Any, status_line: bytes, framing: bytes,
        cause: str, quick: bool) -> None:
    """llhttp takes "099" with a Content-Length and reads the body; the proxy
    took a status below 200 as bodiless, wrote the body unframed and kept the client's
    connection: the body was the answer to the client's next request. And after a 1xx
    other than 100, 102 and 103 llhttp reads a body, taken for the final answer's.
    Either is bad framing: 502 with one WARNING, nothing stored, the upstream connection
    closed, the client's next request answered as it should be."""
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(EVIL), EVIL) if b"chunked" in framing else EVIL

    asked: list[bytes] = []

    async def script(head: bytes, index: int) -> bytes | None:
        asked.append(_path(head))
        if asked[-1] == b"/bad" and asked.count(b"/bad") > 1:  # (the first: no-store,
            # so that the key is hit-for-pass: not collapsed, sent by callback)
            return (b"HTTP/1.1 " + status_line + b"\r\nCache-Control: max-age=60\r\n"
                    + framing + b"\r\n\r\n" + body
                    + b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5"
                      b"\r\n\r\nfinal")
        return OK

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        forward_switch(quick)
        # The key (Host "example", as request() sends) is hit-for-pass: sent by callback.
        assert await (await c.get("/bad", headers={"Host": "example"})).read() == b"hi"
        for _ in range(2):
            assert await (await c.get("/warm")).read() == b"hi"  # an idle connection
            caplog.clear()
            connections = origin.connections
            raw = await Raw.open(c)
            sent = forward_switch.state["sent"]
            await raw.send(request("/bad", ()))
            bad = await raw.reply()
            assert bad.status == 502 and b"SMUGGLED" not in bad.body, bad
            assert forward_switch.state["sent"] == sent + quick  # the path under test
            await raw.send(request("/next", ()))
            following = await raw.reply()
            assert (following.status, following.body) == (200, b"hi"), following
            assert "x-smuggled" not in following.headers
            raw.writer.close()
            [line] = warnings_of(caplog)
            assert line == (f"upstream {url(origin)} failed for GET /bad: bad framing "
                            f"({cause}); answered 502")
            # The connection /bad came on was closed: /next needed a new one.
            assert origin.connections == connections + 1
        # Asked each time: nothing was stored.
        assert asked.count(b"/bad") == 3


@pytest.mark.parametrize("quick", [False, True], ids=["full-path", "quick-forward"])
async def test_interim_answers_are_forwarded_before_the_final_one(
        proxy: Any, forward_switch: Any, quick: bool) -> None:
    """RFC 9110 §15.2: a proxy MUST forward 1xx answers (103 Early Hints, RFC 8297), with
    their end-to-end fields and Via, no Content-Length (§8.6); but the 100 Continue it
    answered itself, and to an HTTP/1.0 client none (it knows no 1xx)."""
    async def script(head: bytes, index: int) -> bytes | None:
        return (b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n"
                b"Connection: X-Hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 5\r\n\r\n"
                b"final")

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        forward_switch(quick)
        assert await (await c.get("/i", headers={"Host": "example"})).read() == b"final"
        for version, hints in (("1.1", True), ("1.0", False), ("1.1", True)):
            raw = await Raw.open(c)
            sent = forward_switch.state["sent"]
            await raw.send(request("/i", (), version=version))
            if hints:
                early = await raw.reply(head=True)
                assert early.status == 103, early
                assert early.headers["link"] == "</s.css>; rel=preload"
                assert "cacheproxy" in early.headers["via"]
                assert not {"content-length", "x-hop", "connection"} & set(early.headers)
            final = await raw.reply()
            assert (final.status, final.body) == (200, b"final"), final
            assert forward_switch.state["sent"] == sent + quick  # the path under test
            raw.writer.close()
        assert origin.connections == 1


async def test_only_the_first_eight_interim_answers_are_passed_on(proxy: Any) -> None:
    """An origin that sends 1xx answers without end would fill the buffer of a client that
    does not read them: the first 8 go on, the rest are read and dropped."""
    async def script(head: bytes, index: int) -> bytes | None:
        return (b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" * 50
                + b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok")

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        raw = await Raw.open(c)
        await raw.send(request("/i", ()))
        statuses = []
        while not statuses or statuses[-1] == 103:
            statuses.append((await raw.reply(head=True)).status)
        assert statuses == [103] * 8 + [200]
        assert await asyncio.wait_for(raw.reader.readexactly(2), 5) == b"ok"
        raw.writer.close()


@pytest.mark.parametrize("quick", [False, True], ids=["full-path", "quick-forward"])
async def test_an_origins_101_is_not_passed_on_as_an_interim_answer(
        proxy: Any, forward_switch: Any, quick: bool) -> None:
    """A 101 is an upgrade the proxy refuses (502), not an interim answer to forward: a
    client sent "101 Switching Protocols" before the 502 would take what follows for the
    new protocol's bytes."""
    async def script(head: bytes, index: int) -> bytes | None:
        return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\n"
                b"Connection: upgrade\r\n\r\nnot http")

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        forward_switch(quick)
        raw = await Raw.open(c)
        await raw.send(request("/up", ()))
        reply = await raw.reply()
        assert reply.status == 502, reply
        raw.writer.close()


@pytest.mark.parametrize("status", [600, 999])
async def test_a_status_from_600_to_999_is_relayed_as_it_is(proxy: Any, status: int) -> None:
    """RFC 9110 §15: invalid, but in use (the public cache test suite sends 999), and to
    be processed as a 5xx: framed as any final answer, relayed, the connection reused."""
    async def script(head: bytes, index: int) -> bytes | None:
        return (b"HTTP/1.1 %d Custom\r\nCache-Control: no-store\r\nContent-Length: 5\r\n"
                b"\r\nodd 1" % status)

    async with raw_origin(script) as origin:
        c = await proxy(url(origin))
        for _ in range(2):
            resp = await c.get("/odd")
            assert (resp.status, await resp.read()) == (status, b"odd 1")
        assert origin.connections == 1


# -- RFC 9112 §7.1.2, RFC 9110 §5.4: the trailer section is bounded as the head is -----------

@pytest.mark.parametrize("quick", [False, True], ids=["full-path", "quick-forward"])
async def test_an_endless_trailer_section_breaks_the_body_off(
        proxy: Any, caplog: Any, forward_switch: Any, quick: bool) -> None:
    """Once the head was in, nothing bounded the trailer section of a chunked answer, and
    llhttp builds a field's value by bytes += (quadratic): 96 MiB of one trailer field
    took 180 MiB and stalled the loop for 6 s. Past the head's bound, the body broke
    off: the client's message ends abnormally, nothing is stored, the connection is
    closed (the origin cannot send the rest), one WARNING line."""
    total = 16 * 1024 * 1024
    sent: list[int] = []
    asked: list[bytes] = []

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                asked.append(_path(head))
                if asked[-1] != b"/t" or asked.count(b"/t") == 1:  # (the first /t:
                    writer.write(OK)  # no-store, so that the next are sent by callback)
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Trailer: ")
                block = b"a" * 65536
                while done < total:
                    writer.write(block)
                    await writer.drain()
                    done += len(block)
                writer.write(b"\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            sent.append(done)
            writer.close()

    server = await asyncio.start_server(endless, "127.0.0.1", 0)
    upstream = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        c = await proxy(upstream, proxy={"read_timeout": 30.0})
        forward_switch(quick)
        assert await (await c.get("/t")).read() == b"hi"
        for first in (True, False):
            assert await (await c.get("/warm")).read() == b"hi"  # an idle connection
            caplog.clear()
            before = forward_switch.state["sent"]
            resp = await c.get("/t")
            # (The second goes the full path: a storable answer ended hit-for-pass.)
            assert resp.status == 200
            assert forward_switch.state["sent"] == before + (quick and first)
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
            assert warnings_of(caplog) == [
                f"upstream {upstream} body for GET /t broke off: bad framing "
                "(trailer section too large)"]
        # Asked each time (nothing stored); read no further than the bound and a few
        # socket buffers.
        assert asked.count(b"/t") == 3 and len(sent) >= 2, (asked, sent)
        assert all(done < total // 2 for done in sent[:2]), sent
        assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    finally:
        server.close()


# -- the reason phrase (RFC 9112 §4) -----------------------------------------------------------

def _reason_origin(parts: list[bytes | float]) -> Any:
    """An origin answering /r with parts (bytes, or a pause between writes), others OK."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for part in parts if _path(head) == b"/r" else [OK]:
                    if isinstance(part, float):
                        await asyncio.sleep(part)
                    else:
                        writer.write(part)
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    return script


async def _status_lines(proxy: Any, forward_switch: Any, quick: bool,
                        parts: list[bytes | float]) -> list[tuple[bytes, bytes]]:
    """The status line and body each of three GET /r get, on one client connection (the
    first primes hit-for-pass: the next are sent by callback when quick)."""
    server = await asyncio.start_server(_reason_origin(parts), "127.0.0.1", 0)
    try:
        c = await proxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        forward_switch(quick)
        raw = await Raw.open(c)
        got = []
        for i in range(3):
            sent = forward_switch.state["sent"]
            await raw.send(request("/r", ()))
            line = await asyncio.wait_for(raw.reader.readline(), 5)
            assert line, "connection closed before a response"
            head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
            while line.startswith(b"HTTP/1.1 1"):  # an interim answer, passed on: the next
                line = await asyncio.wait_for(raw.reader.readline(), 5)
                head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            got.append((line, await raw.reader.readexactly(length)))
            assert forward_switch.state["sent"] == sent + (quick and i > 0)
        raw.writer.close()
        return got
    finally:
        server.close()


@pytest.mark.parametrize("quick", [False, True], ids=["full-path", "quick-forward"])
async def test_a_reason_phrase_in_two_reads_reaches_the_client_whole(
        proxy: Any, forward_switch: Any, quick: bool) -> None:
    """llhttp calls on_status once per read the phrase spans: each call replaced the
    last, and "404 Not " + "Found" reached the client as "404 Found". An interim answer's
    phrase is not the final one's."""
    parts: list[bytes | float] = [
        b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 404 Not Re", 0.05,
        b"ally Found\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nno"]
    got = await _status_lines(proxy, forward_switch, quick, parts)
    assert got == [(b"HTTP/1.1 404 Not Really Found\r\n", b"no")] * 3


@pytest.mark.parametrize("quick", [False, True], ids=["full-path", "quick-forward"])
@pytest.mark.parametrize(("sent", "relayed"), [
    (b"200 O\x01K", b"200 OK"),
    (b"200 bad\x7f", b"200 OK"),
    (b"404 Not\x1bFound", b"404 Not Found"),
    # no standard phrase: none (not a 5xx: an origin's error marks no hit-for-pass, which
    # primes the quick forward here)
    (b"299 \x00", b"299 "),
    (b"200 O\tK fine", b"200 O\tK fine"),  # HTAB and SP are allowed
], ids=["SOH", "DEL", "ESC", "no-phrase", "HTAB"])
async def test_a_reason_phrase_with_a_control_character_is_replaced_by_the_standard_one(
        proxy: Any, forward_switch: Any, caplog: Any, quick: bool, sent: bytes,
        relayed: bytes) -> None:
    """llhttp takes "200 O\\x01K"; the client side's serialiser refused it after the head
    was marked started: the client's connection closed with no answer and an ERROR
    traceback, on both paths. RFC 9112 §4: reason-phrase = *( HTAB / SP / VCHAR /
    obs-text ), and a client SHOULD ignore it: the standard phrase is sent instead."""
    parts: list[bytes | float] = [
        b"HTTP/1.1 " + sent + b"\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"]
    got = await _status_lines(proxy, forward_switch, quick, parts)
    assert got == [(b"HTTP/1.1 " + relayed + b"\r\n", b"ok")] * 3
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


# -- the WARNING for a body that broke off ---------------------------------------------------

def _cut_short(head: bytes, index: int) -> bytes:
    """An answer whose body stops at 400 of its 1000 bytes (the origin then closes)."""
    return (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
            b"Content-Length: 1000\r\n\r\n" + b"a" * 400)


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
async def test_a_body_that_breaks_off_is_one_warning_naming_the_upstream_and_target(
        proxy: Any, caplog: Any, reset: bool) -> None:
    """The line said "upstream body for GET /doc broke off: connection reset": no
    upstream (with routes, which origin failed was unknowable), the path without its
    query, and "reset" for an origin that closed (FIN) mid-body. It names them as the
    line for a failure before the head does, and says which way the connection ended."""
    async with Scripted(_cut_short, reset=reset) as origin:
        c = await proxy(origin.url)
        resp = await c.get("/doc?x=1")
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        cause = "connection reset" if reset else "connection closed"
        assert warnings_of(caplog) == [
            f"upstream {origin.url} body for GET /doc?x=1 broke off: {cause}"]


async def test_a_body_stored_first_that_breaks_off_is_a_502_and_one_warning(
        proxy: Any, caplog: Any) -> None:
    """A Range miss asks for the whole representation to store it, and cuts one range
    from it as it streams (RFC 9110 §14.2): when that body breaks off before the range
    was sent, the client's 206 ends abnormally, with the one WARNING line every broken
    body has, naming the upstream, the request and the cause. (Several ranges are cut
    from the stored whole: that one's break is a 502.)"""
    async with Scripted(_cut_short, reset=False) as origin:
        c = await proxy(origin.url)
        resp = await c.get("/doc?x=1", headers={"Range": "bytes=500-509"})
        assert resp.status == 206
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        assert warnings_of(caplog) == [
            f"upstream {origin.url} body for GET /doc?x=1 broke off: connection closed"]
        resp = await c.get("/doc?x=2", headers={"Range": "bytes=0-1,500-509"})
        assert resp.status == 502
        assert warnings_of(caplog)[-1] == \
            f"upstream {origin.url} failed for GET /doc?x=2: connection closed; answered 502"


async def test_a_warning_line_shows_secret_parameters_redacted(proxy: Any, caplog: Any
                                                               ) -> None:
    """The WARNING lines name the request as the request log does: the values of
    referer.strip_params (token, sid, ...) REDACTED, not in stderr's logs."""
    async with Scripted(_cut_short, reset=False) as origin:
        c = await proxy(origin.url)
        resp = await c.get("/doc?token=s3cret&x=1")
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        assert (await c.get("/doc?token=s3cret&y=1", headers={"Range": "bytes=0-9,20-29"})
                ).status == 502
    lines = warnings_of(caplog)
    assert len(lines) == 2 and not any("s3cret" in line for line in lines), lines
    assert all("token=REDACTED" in line for line in lines), lines


# -- forward mode: one idle list per origin ever used ----------------------------------------

async def test_the_pool_forgets_an_origin_whose_connections_all_closed() -> None:
    """In forward mode every site visited is an origin; Pool._idle kept a key (an empty
    list) for each one after its connections closed, so it grew for ever. Connections
    end by the keep-alive timeout, by the origin closing an idle one, or closed while in
    use: once none is left, the origin's entry goes."""
    from cacheproxy.proxy.pool import Origin, Pool

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    async with Scripted(lambda h, i: ok, keep=True) as kept, \
            Scripted(lambda h, i: ok, keep=False) as closing, \
            Scripted(lambda h, i: ok, keep=True) as held:
        pool = Pool(10, 1.0, 0.2)
        origins = [Origin("http", "127.0.0.1", s.port) for s in (kept, closing, held)]
        try:
            for origin in origins:
                for _ in range(2):  # the second reuses the first's connection (kept)
                    conn = await pool.acquire(origin)
                    await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, False, 1.0)
                    while await conn.read_chunk(1.0):
                        pass
                    pool.release(conn)
                    await asyncio.sleep(0.02)  # (closing: its close arrives)
            in_use = pool.idle(origins[2])  # taken from its idle list, then closed
            assert in_use is not None
            assert set(pool._idle) <= set(origins) and origins[1] not in pool._idle
            in_use.close()
            await asyncio.sleep(0.5)  # past the keep-alive timeout of the kept one
            assert pool._idle == {} and pool.in_use == 0
        finally:
            pool.close()
            await asyncio.sleep(0.05)  # (the origins see their connections end)


def test_a_reason_phrase_with_obs_text_is_encoded_as_received() -> None:
    """RFC 9112 §4 allows obs-text in a reason phrase; pool.py decodes it with
    surrogateescape, and the head goes back with the byte (aiohttp's serialiser, the fast
    path for ASCII heads, would drop it)."""
    from multidict import CIMultiDict

    from cacheproxy.proxy.wire import encode_head

    line = "HTTP/1.1 200 " + b"Ok\xe9".decode("utf-8", "surrogateescape")
    assert encode_head(line, CIMultiDict({"A": "b"})) == b"HTTP/1.1 200 Ok\xe9\r\nA: b\r\n\r\n"
    with pytest.raises(ValueError):
        encode_head("HTTP/1.1 200 Ok\xe9", CIMultiDict({"A": "b\r\nInjected: 1"}))
