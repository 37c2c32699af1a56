"""Review (third2): defects in the merges from 8d7d4e0 on (graceful stop, hit-for-pass
per variant, the Redis selectable read, chunked bodies to HTTP/1.0 origins). Each test
runs real servers on 127.0.0.1: an aiohttp origin and the real proxy."""

from __future__ import annotations

import asyncio
import contextlib
import signal

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


async def test_a_body_still_uploading_at_sigterm_is_read_to_its_end(origin, tmp_path):
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
        writer.write(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 8\r\n\r\nhalf")
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        with contextlib.suppress(ConnectionError):
            writer.write(b"done")
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
