"""Review (third2): defects in the merges from 8d7d4e0 on (graceful stop, hit-for-pass
per variant, the Redis selectable read, chunked bodies to HTTP/1.0 origins). Each test
runs real servers on 127.0.0.1: an aiohttp origin and the real proxy."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal

import pytest
from aiohttp import web
from processes import clean_env, start_serve, stop


async def _echo_origin(origin: object) -> str:
    """/echo answers with the length of the body it read (never stored)."""

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(text=f"read {len(body)}", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_route("*", "/{name}", answer)
    server = await origin(app)  # type: ignore[operator]
    return str(server.make_url("")).rstrip("/")


async def _answer(reader: asyncio.StreamReader) -> tuple[dict[str, str], bytes]:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
    status, *lines = head.strip().split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    fields[":status"] = status.split()[1]
    body = await asyncio.wait_for(reader.readexactly(int(fields["content-length"])), 10)
    return fields, body


async def test_a_body_arriving_after_sigterm_is_read_for_the_request_the_stop_waits_for(
        origin, tmp_path):
    """A POST whose head was arriving at SIGTERM is now awaited (98aaa7e), but once its
    head is in, the connection is `closing` and data_received no longer feeds the parser:
    the body that follows (a separate segment, as any upload larger than the head's packet
    is) is never read. The origin waits for a body that never comes; at
    proxy.shutdown_timeout the client gets no answer (or a 5xx) for a request whose head
    the stop promised to answer. nginx (`nginx -s quit`) reads the request body of a
    request it answers. RFC 9112 §9.3.1: the client cannot tell this from a processed
    request. Severity: medium (every upload in the stop's first moment; the same for an
    upload whose head was in before SIGTERM, below)."""
    up = await _echo_origin(origin)
    env = clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="3")
    proc, port = await start_serve("--upstream", up, cwd=tmp_path, env=env)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await asyncio.sleep(0.2)  # (half a head read by the proxy)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        writer.write(b"Content-Length: 4\r\n\r\n")  # the head is whole
        await asyncio.sleep(0.2)
        with contextlib.suppress(ConnectionError):
            writer.write(b"body")  # its body, a moment later
        try:
            fields, body = await _answer(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            fields, body = {":status": "none: closed without an answer"}, b""
        assert (fields[":status"], body) == ("200", b"read 4")
        assert fields.get("connection") == "close"
        writer.close()
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_still_uploading_at_sigterm_is_read_to_its_end(
        origin, tmp_path, framing):
    """A POST whose head was in before SIGTERM and whose body is still on its way: the
    stop (close_idle) marks the connection closing, and data_received then feeds the
    parser nothing more, so the rest of the body is never read; the upload stalls until
    proxy.shutdown_timeout cuts it. The README promises requests in flight
    proxy.shutdown_timeout to finish; nginx -s quit reads the body of a request under way.
    Severity: medium (any upload in flight at a rolling restart fails)."""
    up = await _echo_origin(origin)
    env = clean_env(CACHEPROXY_PROXY_SHUTDOWN_TIMEOUT="3")
    proc, port = await start_serve("--upstream", up, cwd=tmp_path, env=env)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if framing == "chunked":
            first, rest = b"Transfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n", \
                b"4\r\ndone\r\n0\r\n\r\n"
        else:
            first, rest = b"Content-Length: 8\r\n\r\nhalf", b"done"
        writer.write(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n" + first)
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        with contextlib.suppress(ConnectionError):
            writer.write(rest)
        try:
            fields, body = await _answer(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            fields, body = {":status": "none: closed without an answer"}, b""
        assert (fields[":status"], body) == ("200", b"read 8")
        assert fields.get("connection") == "close"
        writer.close()
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err


async def test_a_url_passed_on_every_request_keeps_its_hit_for_pass_mark(origin, proxy):
    """eee3fac refreshes a hit-for-pass mark in place (its time moves, not its place in the
    order), and the marks are bounded (2 MiB of keys, 10,000 marks) by dropping the one
    marked first. So the URL passed on every request, marked first and refreshed a
    moment ago, is the first mark dropped once other unstorable URLs (a few hundred long
    ones: tracking queries) fill the bound, while marks nobody asked for again stay.
    Its concurrent requests then collapse behind one another again: served in waves, the
    very thing the marks exist to prevent (Varnish's hit-for-pass objects are LRU, and
    before eee3fac a mark marked again moved to the end). Severity: low (a hot uncacheable
    URL loses its mark for one wave whenever 2 MiB of other marks were made since it was
    first marked)."""
    delay = {"hot": 0.0}
    inflight = {"now": 0, "most": 0}

    async def answer(request: web.Request) -> web.Response:
        if request.match_info["name"] == "hot":
            inflight["now"] += 1
            inflight["most"] = max(inflight["most"], inflight["now"])
            await asyncio.sleep(delay["hot"])
            inflight["now"] -= 1
        return web.Response(text="x", headers={"Cache-Control": "private"})

    app = web.Application()
    app.router.add_route("GET", "/{name}", answer)
    client = await proxy(await origin(app))
    assert (await client.get("/hot")).status == 200  # marked (private: not storable)
    hot = next(iter(client.app_proxy.driver.collapser._pass))
    long = "q" * 7000
    for i in range(400):  # 400 unstorable 7 KB URLs: 2.8 MB of marks, past the 2 MiB bound
        assert (await client.get(f"/filler?{i}={long}")).status == 200
        if hot not in client.app_proxy.driver.collapser._pass:
            break  # (the moment its mark went: a burst now shows what that costs)
        if i % 10 == 0:
            assert (await client.get("/hot")).status == 200  # the hot URL, passed again
    delay["hot"] = 0.4
    inflight["most"] = 0
    answers = await asyncio.gather(*(client.get("/hot") for _ in range(4)))
    assert [r.status for r in answers] == [200] * 4
    assert inflight["most"] == 4, \
        f"the hot URL's requests collapsed ({inflight['most']} at the origin at once)"


async def _raw_exchange(port: int, data: bytes, wait: float = 1.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), wait):
            out += chunk
    writer.close()
    return out


_GOOD = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
_CHUNKED = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhe\nlo\r\n0\r\n\r\n")


@pytest.mark.parametrize("data, statuses", [
    (_GOOD + b"G\x01T /b HTTP/1.1\r\nHost: x\r\n\r\n", [b"200", b"400"]),
    (_GOOD * 2 + b"G\x01T /b HTTP/1.1\r\nHost: x\r\n\r\n", [b"200", b"200", b"400"]),
    (_GOOD + b"\r\n\r\nGET /b HTTP/1.x\r\nHost: x\r\n\r\n", [b"200", b"400"]),
    (_CHUNKED + b"GET /b HTTP/9.0\r\nHost: x\r\n\r\n", [b"200"]),
    (_CHUNKED + b"G\x01T /b HTTP/1.1\r\nHost: x\r\n\r\n", [b"200"]),
], ids=["method-byte", "two-then-method-byte", "empty-lines-between", "chunked-then-version",
        "chunked-then-method-byte"])
async def test_requests_pipelined_before_a_refused_request_line_are_answered(
        origin, tmp_path, data, statuses):
    """a528de3 answers the requests pipelined before one whose request line llhttp refuses
    for its version, and its comment says "a byte in the method" too; the README says of
    every refused request that "requests pipelined before it are answered first". But
    (1) a byte in a later request's method is taken for a method llhttp lacks: the whole
    read goes to the Python parser, whose error drops the good requests before it, so the
    client's first request gets the 400; (2) two empty lines between requests (RFC 9112
    §2.2: ignored) make the requests before the refused one unanswerable; (3) a chunked
    request before it, the last request its connection reads (README), is not answered
    at all: its client gets a 400 it takes for its POST's. nginx answers the requests
    before a malformed one. Severity: low (pipelining clients and a malformed request in
    one segment)."""
    up = await _echo_origin(origin)
    proc, port = await start_serve("--upstream", up, cwd=tmp_path)
    try:
        out = await _raw_exchange(port, data)
        got = re.findall(rb"HTTP/1\.1 (\d{3}) ", out)
        assert got == statuses, out.decode("latin-1")
        if data.startswith(b"POST"):
            assert b"read 5" in out  # the whole chunked body reached the origin
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err


async def test_posts_to_long_urls_do_not_stop_other_urls_being_stored(origin, proxy):
    """6a9d55f bounds the §4.4 invalidation marks in characters (2 MiB of keys) as well as
    in count, and a mark pushed out raises the floor: every fill whose request was sent
    before that mark is then refused, whatever its URL. A client chooses how long the URLs
    it POSTs to are: at 16 KB a key, 128 POSTs now push a mark out (10,000 before), so one
    client POSTing to long URLs keeps the floor a fraction of a second behind now, and no
    answer that takes longer than that is stored for anyone: the cache is off for slow
    URLs, a denial of service of the cache the README's "a rare fill refused" does not
    foresee. Severity: medium (one client, a few hundred small requests a second)."""
    async def answer(request: web.Request) -> web.Response:
        if request.method == "POST":
            return web.Response(text="ok", headers={"Cache-Control": "no-store"})
        await asyncio.sleep(1.0)
        return web.Response(text="slow", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_route("*", "/{name}", answer)
    client = await proxy(await origin(app))
    fill = asyncio.ensure_future(client.get("/slow"))
    await asyncio.sleep(0.2)  # (its request is at the origin)
    long = "p" * 7000
    for i in range(400):  # another client's POSTs: 400 invalidations of 7 KB URLs
        assert (await client.post(f"/post?{i}={long}", data=b"x")).status == 200
    assert (await fill).status == 200
    again = await client.get("/slow")
    assert "hit" in again.headers.get("Cache-Status", ""), \
        "the slow URL's answer was not stored: other URLs' invalidations refused it"
