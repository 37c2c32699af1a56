"""The lean data plane's client side (proxy/client_conn.py, listener.py), over raw sockets:
client timeouts, the connection limit, pipelining, HTTP/1.0 keep-alive, Expect, chunked
both ways, upgrades, unread bodies, and the control plane on the same connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from support import proxy_config, read_json_log, until

from cacheproxy.proxy.client_conn import ClientConnection
from cacheproxy.proxy.quick_forward import QuickForward
from cacheproxy.proxy.server import (
    OBSERVER,
    reconfigure,  # what SIGHUP runs
)

ORIGIN_SEEN: list[str] = []


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, client) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", client.port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, head: bool = False) -> Reply:
        return await asyncio.wait_for(self._reply(head), 5)

    async def _reply(self, head: bool) -> Reply:
        line = await self.reader.readline()
        assert line, "connection closed before a response"
        headers: dict[str, str] = {}
        while (field := await self.reader.readline()) not in (b"\r\n", b""):
            name, value = field.decode("latin-1").split(":", 1)
            headers[name.strip().lower()] = value.strip()
        status = int(line.split()[1])
        if head or status in (100, 204, 304):
            return Reply(status, headers, b"")
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while (size := int((await self.reader.readline()).strip(), 16)) > 0:
                body += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
            assert await self.reader.readline() == b"\r\n"
            return Reply(status, headers, body)
        if "content-length" in headers:
            return Reply(status, headers,
                         await self.reader.readexactly(int(headers["content-length"])))
        return Reply(status, headers, await self.reader.read())  # to the close

    async def closed_within(self, seconds: float) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(), seconds) == b""
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()


def get(path: str, *fields: str, method: str = "GET", version: str = "1.1",
        body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: example", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def start(proxy, origin, log_path=None, **proxy_settings):
    async def anything(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        ORIGIN_SEEN.append(f"{request.method} {request.path_qs} {body!r}")
        if request.path == "/stream":  # no length: chunked to an HTTP/1.1 client
            resp = web.StreamResponse(headers={"Cache-Control": "no-store"})
            await resp.prepare(request)
            for part in (b"one,", b"two,", b"three"):
                await resp.write(part)
            await resp.write_eof()
            return resp
        return web.Response(body=f"{request.method} {request.path} {len(body)}".encode(),
                            headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    ORIGIN_SEEN.clear()
    sections = {"log": {"path": str(log_path)}} if log_path is not None else {}
    return await proxy(await origin(app), proxy=proxy_settings, **sections)


async def test_a_head_sent_too_slowly_is_cut_at_client_header_timeout(proxy, origin):
    client = await start(proxy, origin, client_header_timeout=0.5)
    conn = await Raw.open(client)
    began = time.monotonic()
    closed = False
    for part in (b"GET / HTTP/1.1\r\n", b"Host: example\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"):
        await conn.send(part)  # trickled: each byte resets nothing
        if await conn.closed_within(0.2):
            closed = True
            break
    closed = closed or await conn.closed_within(1.0)
    assert closed and time.monotonic() - began < 1.5
    assert ORIGIN_SEEN == []


async def test_a_connection_that_sends_nothing_is_closed_at_client_header_timeout(
        proxy, origin):
    client = await start(proxy, origin, client_header_timeout=0.3, keepalive_timeout=30)
    conn = await Raw.open(client)
    assert await conn.closed_within(1.5)


async def test_keepalive_timeout_closes_an_idle_connection_and_not_a_busy_one(proxy, origin):
    client = await start(proxy, origin, keepalive_timeout=0.6, client_header_timeout=30)
    conn = await Raw.open(client)
    for _ in range(4):  # requests 0.3 s apart: never idle for 0.6 s
        await conn.send(get("/a"))
        assert (await conn.reply()).status == 200
        assert not await conn.closed_within(0.3)
    assert await conn.closed_within(1.5)


async def test_max_client_connections_closes_the_connection_past_the_limit(
        proxy, origin, caplog):
    client = await start(proxy, origin, max_client_connections=2)
    first, second = await Raw.open(client), await Raw.open(client)
    for conn in (first, second):
        await conn.send(get("/a"))
        assert (await conn.reply()).status == 200
    third = await Raw.open(client)
    assert await third.closed_within(2)
    extra = await Raw.open(client)  # said once, not once per connection
    assert await extra.closed_within(2)
    said = [r.getMessage() for r in caplog.records if "max_client_connections" in r.getMessage()]
    assert said == ["1 client connection(s) closed as they arrived: 2 are open, the most "
                    "proxy.max_client_connections allows"]
    first.close()
    await asyncio.sleep(0.2)
    fourth = await Raw.open(client)  # room again
    await fourth.send(get("/a"))
    assert (await fourth.reply()).status == 200


async def test_pipelined_requests_are_answered_in_order(proxy, origin):
    client = await start(proxy, origin)
    conn = await Raw.open(client)
    await conn.send(get("/one") + get("/two", "Content-Length: 3", method="POST", body=b"abc")
                    + get("/three", method="HEAD"))
    one, two, three = await conn.reply(), await conn.reply(), await conn.reply(head=True)
    assert one.body == b"GET /one 0"
    assert two.body == b"POST /two 3"
    assert three.status == 200 and three.headers["content-length"] == str(len(b"GET /three 0"))
    await conn.send(get("/four"))  # and the connection goes on
    assert (await conn.reply()).body == b"GET /four 0"


async def test_http_1_0_keep_alive_is_kept_when_asked_and_closed_otherwise(proxy, origin):
    client = await start(proxy, origin)
    conn = await Raw.open(client)
    await conn.send(get("/a", "Connection: keep-alive", version="1.0"))
    reply = await conn.reply()
    assert reply.status == 200 and reply.headers.get("connection") == "keep-alive"
    await conn.send(get("/a", version="1.0"))  # no keep-alive: closed after the answer
    assert (await conn.reply()).status == 200
    assert await conn.closed_within(2)


async def test_expect_100_continue_gets_100_before_the_body_is_sent(proxy, origin):
    client = await start(proxy, origin)
    conn = await Raw.open(client)
    await conn.send(get("/up", "Content-Length: 5", "Expect: 100-continue", method="PUT"))
    interim = await conn.reply()
    assert interim.status == 100
    await conn.send(b"hello")
    reply = await conn.reply()
    assert reply.body == b"PUT /up 5"
    await conn.send(get("/up", "Expect: teleport", method="GET"))
    assert (await conn.reply()).status == 417  # RFC 9110 §10.1.1
    assert await conn.closed_within(2)


async def test_chunked_both_ways(proxy, origin):
    client = await start(proxy, origin)
    conn = await Raw.open(client)
    await conn.send(get("/in", "Transfer-Encoding: chunked", method="POST",
                        body=b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"))
    reply = await conn.reply()
    assert reply.body == b"POST /in 5"
    assert reply.headers["connection"] == "close"  # a chunked request is the last one read
    assert await conn.closed_within(2)
    conn = await Raw.open(client)
    await conn.send(get("/stream"))
    reply = await conn.reply()
    assert reply.headers["transfer-encoding"] == "chunked"
    assert reply.body == b"one,two,three"
    await conn.send(get("/stream", version="1.0"))  # no chunked for HTTP/1.0: to the close
    reply = await conn.reply()
    assert "transfer-encoding" not in reply.headers and reply.body == b"one,two,three"


@pytest.mark.parametrize("together", [True, False], ids=["one-send", "two-sends"])
async def test_a_trailer_field_never_reaches_the_next_request(proxy, origin, together):
    """aiohttp's C parser adds a chunked body's last trailer field to the next message on
    the connection: the chunked request is the last one read (client_conn._read_last)."""
    seen: list[tuple[str, str | None]] = []

    async def record(request: web.Request) -> web.Response:
        await request.read()
        seen.append((request.path, request.headers.get("Cookie")))
        return web.Response(text="ok", headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    client = await proxy(await origin(app))
    conn = await Raw.open(client)
    upload = get("/upload", "Transfer-Encoding: chunked", method="POST",
                 body=b"5\r\nhello\r\n0\r\nCookie: session=planted\r\n\r\n")
    if together:
        await conn.send(upload + get("/account"))
    else:
        await conn.send(upload)
        await asyncio.sleep(0.2)  # (its answer may be under way: the next is read later)
        await conn.send(get("/account"))
    reply = await conn.reply()
    closed = await conn.closed_within(2)  # (or a second answer came, without the fix)
    again = await Raw.open(client)
    await again.send(get("/account"))
    assert (await again.reply()).status == 200
    assert all(cookie is None for _, cookie in seen), seen  # the trailer went nowhere
    # How: the chunked request is answered with a close, and /account after it not read.
    assert reply.status == 200 and reply.headers["connection"] == "close" and closed
    assert seen == [("/upload", None), ("/account", None)]


@pytest.mark.parametrize("first", [
    get("/a", "Connection: close"),
    get("/a", version="1.0"),
    get("/a", "Connection: close", "Content-Length: 3", method="POST", body=b"abc"),
    get("/x") + get("/a", "Connection: close"),
], ids=["close", "http-1.0", "close-with-body", "second-of-two"])
async def test_what_follows_a_close_in_the_same_packet_is_not_read(proxy, origin, first):
    """RFC 9112 §9.6: the request that says close is answered, then the connection
    closes, and nothing after it is processed. llhttp refuses the whole packet ("Data
    after Connection: close"), dropping the requests it had completed: they were a 400."""
    client = await start(proxy, origin)
    conn = await Raw.open(client)
    await conn.send(first + get("/b") + get("/c", version="1.0"))
    replies = [await conn.reply() for _ in range(first.count(b" HTTP/"))]
    assert [r.status for r in replies] == [200] * len(replies)
    assert replies[-1].body.startswith((b"GET /a", b"POST /a 3"))
    assert replies[-1].headers.get("connection", "close") == "close"
    assert await conn.closed_within(2)
    assert not any(" /b " in seen or " /c " in seen for seen in ORIGIN_SEEN), ORIGIN_SEEN


@pytest.mark.parametrize("bad", [
    get("/bad", "Content-Length: 1", "Content-Length: 2"),
    get("/bad", "Transfer-Encoding: chunked", "Content-Length: 3") + b"abc",
    b"GET /bad HTTP/1.1\r\nHost: example\r\nX: a\x00b\r\n\r\n",
], ids=["two-lengths", "te-and-cl", "nul"])
async def test_requests_before_a_malformed_one_in_the_same_packet_are_answered(
        proxy, origin, bad, tmp_path):
    """llhttp refuses the packet at the malformed request and drops the ones it had
    completed before it: they got no answer and no log line, where sent apart they are
    answered. Now they are, in order, then the malformed one's 400 and the close; what
    comes after it is not read."""
    client = await start(proxy, origin, tmp_path / "log")
    conn = await Raw.open(client)
    await conn.send(get("/one") + get("/two", "Content-Length: 2", method="POST", body=b"hi")
                    + bad + get("/after"))
    await conn.send(get("/later"))  # (fed while they are answered: not read either)
    replies = [await conn.reply() for _ in range(3)]
    assert [(r.status, r.body) for r in replies[:2]] == [(200, b"GET /one 0"),
                                                          (200, b"POST /two 2")]
    assert replies[2].status == 400 and replies[2].headers["connection"] == "close"
    assert await conn.closed_within(2)
    assert not any(path in seen for seen in ORIGIN_SEEN for path in ("/bad", "/after",
                                                                      "/later")), ORIGIN_SEEN
    lines = [(r["path"], r["status"]) for r in await read_json_log(client)]
    assert lines[:2] == [("/one", 200), ("/two", 200)] and [r[1] for r in lines[2:]] == [400]


async def test_requests_up_to_a_close_at_the_pipelining_limit_are_all_answered(
        proxy, origin):
    """31 requests and one saying close, then one more, in one packet: llhttp hands back
    32 (its queue's limit, the close's included) and meets the one after later. Those 32
    are answered, the one after is not read (it was a 400 that cut the queue short)."""
    client = await start(proxy, origin)
    conn = await Raw.open(client)
    pipeline = b"".join(get(f"/p{i}", "Cache-Control: no-cache") for i in range(31))
    await conn.send(pipeline + get("/a", "Connection: close") + get("/after"))
    replies = [await conn.reply() for _ in range(32)]
    assert [r.status for r in replies] == [200] * 32
    assert replies[-1].body == b"GET /a 0" and replies[-1].headers["connection"] == "close"
    assert await conn.closed_within(2)
    assert not any("/after" in seen for seen in ORIGIN_SEEN)


async def test_nothing_after_a_close_whose_body_ends_in_a_later_packet_is_read(
        proxy, origin):
    client = await start(proxy, origin)
    conn = await Raw.open(client)
    await conn.send(get("/a", "Connection: close", "Content-Length: 10", method="POST")
                    + b"12345")
    await asyncio.sleep(0.2)
    await conn.send(b"67890" + get("/after", "Connection: close"))
    reply = await conn.reply()
    assert (reply.status, reply.body) == (200, b"POST /a 10")
    assert await conn.closed_within(2)
    assert not any("/after" in seen for seen in ORIGIN_SEEN)


async def test_a_request_above_http_1_1_is_answered_as_http_1_1(proxy, origin):
    """RFC 9110 §6.2: the highest version this server conforms to, not the request's
    echoed ("HTTP/2.0 200 OK" in HTTP/1.1 syntax): on a miss, a hit and an error."""
    client = await start(proxy, origin)
    for request in (get("/v", version="2.0"), get("/v", version="2.0"),
                    get("/v", "Expect: something-else", version="2.0")):
        conn = await Raw.open(client)  # (llhttp reads 2.0 as not persistent by default)
        await conn.send(request)
        line = await asyncio.wait_for(conn.reader.readline(), 5)
        assert line.startswith(b"HTTP/1.1 "), (request, line)
        while (field := await conn.reader.readline()) not in (b"\r\n", b""):
            if field.lower().startswith(b"content-length:"):
                length = int(field.split(b":")[1])
        await conn.reader.readexactly(length)
        conn.close()
    assert ORIGIN_SEEN == ["GET /v b''"]  # the second was a hit


async def test_a_stored_body_is_sent_not_copied_on_the_full_path(proxy, origin, monkeypatch):
    """A hit the full path answers (a CORS request: its grant is made per request) hands
    the transport the stored body itself after the head, not the two joined: clients
    slow to read it do not hold a copy each (150 of them, an 8 MB body: 1.1 GB of RSS
    when it was copied, on uvloop, whose transports keep the buffers they are given)."""
    big = b"z" * (1024 * 1024)

    async def stored(request: web.Request) -> web.Response:
        return web.Response(body=big, headers={"Cache-Control": "max-age=600"})

    app = web.Application()
    app.router.add_get("/big", stored)
    client = await proxy(await origin(app))
    conn = await Raw.open(client)
    await conn.send(get("/big"))  # stored
    assert (await conn.reply()).body == big
    written: list[bytes] = []
    write = ClientConnection._write

    def recorded(self: ClientConnection, data: bytes, more: bytes = b"") -> None:
        written.extend((data, more))
        write(self, data, more)

    monkeypatch.setattr(ClientConnection, "_write", recorded)
    for _ in range(3):
        await conn.send(get("/big", "Origin: http://elsewhere.example"))
        assert (await conn.reply()).body == big
    conn.close()
    stats = client.server.app[OBSERVER].stats
    assert stats.by_cache["HIT"] == 3, stats.by_cache  # from storage, on the full path
    bodies = [data for data in written if len(data) >= len(big)]
    assert len(bodies) == 3 and all(body is bodies[0] for body in bodies)  # one object


async def test_a_client_leaving_mid_upload_ends_the_upload_upstream_at_once(proxy, origin):
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def upload(request: web.Request) -> web.Response:
        try:
            await request.read()
            ended.set_result("whole")
        except BaseException as exc:  # the proxy closed its connection: the body broke
            ended.set_result(type(exc).__name__)  # off (aiohttp may cancel the handler)
            raise
        return web.Response()

    app = web.Application()
    app.router.add_post("/up", upload)
    client = await proxy(await origin(app), proxy={"read_timeout": 30})
    conn = await Raw.open(client)
    await conn.send(get("/up", "Content-Length: 100000", method="POST", body=b"x" * 1000))
    await asyncio.sleep(0.2)
    conn.writer.transport.abort()  # gone, 99,000 bytes short
    began = time.monotonic()
    assert await asyncio.wait_for(ended, 5) != "whole"
    assert time.monotonic() - began < 2  # not read_timeout (30 s) later


async def test_a_failure_after_the_head_went_out_ends_the_connection_not_a_second_answer(
        proxy, origin, monkeypatch, caplog):
    client = await start(proxy, origin)

    async def broken_put(entry):  # a bug of ours once the body was streamed
        raise RuntimeError("store broke")

    monkeypatch.setattr(client.app_proxy.exchange.store, "put", broken_put)
    conn = await Raw.open(client)
    await conn.send(get("/a") + get("/b"))
    reply = await conn.reply()
    assert (reply.status, reply.body) == (200, b"GET /a 0")
    assert await conn.closed_within(2)  # and no "HTTP/1.1 500" after the body
    assert "internal error on GET /a" in caplog.text


async def test_any_method_token_is_forwarded(proxy, origin):
    client = await start(proxy, origin)
    conn = await Raw.open(client)
    await conn.send(get("/x", method="FOO") + get("/y", method="M-SEARCH"))
    assert (await conn.reply()).body == b"FOO /x 0"
    assert (await conn.reply()).body == b"M-SEARCH /y 0"


async def test_an_upgrade_request_is_answered_then_the_connection_closes(proxy, origin):
    client = await start(proxy, origin)
    conn = await Raw.open(client)
    await conn.send(get("/ws", "Connection: Upgrade", "Upgrade: websocket")
                    + b"\x81\x05hello")  # what a client sends after an upgrade
    reply = await conn.reply()
    assert reply.status == 200 and reply.headers.get("connection") == "close"
    assert await conn.closed_within(2)
    assert ORIGIN_SEEN == ["GET /ws b''"]  # the frame bytes were never read as a request


async def test_an_upgrade_request_with_a_body_sends_that_body_and_no_more(proxy, origin):
    """The body of an upgrade request is its body (Content-Length), never read as further
    requests, and goes upstream whole (no wait for bytes the origin would never get). The
    request after it is the next request (RFC 9112 §9.3.2), answered on the same
    connection: an h2c upgrade is not switched to, and HTTP/1.1 goes on (RFC 9110 §7.8)."""
    client = await start(proxy, origin, read_timeout=3)
    head = get("/ws", "Connection: Upgrade", "Upgrade: h2c", "Content-Length: 5",
               method="POST")
    for n, parts in enumerate(([head + b"hello" + get("/next0")],  # one segment
                               [head + b"he", b"llo" + get("/next1")])):  # the body split
        ORIGIN_SEEN.clear()
        conn = await Raw.open(client)
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(0.1)
            await conn.send(part)
        began = time.monotonic()
        reply = await conn.reply()
        assert time.monotonic() - began < 2
        assert reply.body == b"POST /ws 5" and "connection" not in reply.headers
        assert (await conn.reply()).body == f"GET /next{n} 0".encode()
        expected = ["POST /ws b'hello'", f"GET /next{n} b''"]
        assert expected == ORIGIN_SEEN
        conn.close()


async def test_smuggling_shapes_are_refused_with_400_and_a_close(proxy, origin):
    client = await start(proxy, origin)
    for fields in (("Content-Length: 3", "Content-Length: 4"),
                   ("Content-Length: 3", "Transfer-Encoding: chunked"),
                   ("Transfer-Encoding: chunked, chunked",),
                   ("Content-Length: +3",)):
        conn = await Raw.open(client)
        await conn.send(get("/s", *fields, method="POST", body=b"abc") + get("/after"))
        reply = await conn.reply()
        assert reply.status == 400, fields
        assert await conn.closed_within(2), fields
        conn.close()
    assert ORIGIN_SEEN == []


async def test_a_refused_request_is_logged_with_the_bytes_sent_and_what_was_read(
        proxy, origin, tmp_path):
    """The parser's 400 and the Expect rule's 417 send a short body; their lines said
    bytes 0, and both (whose request lines were read whole) UNKNOWN /."""
    client, _ = await _upload_origin(proxy, origin, log={"path": str(tmp_path / "log")})
    sizes = []
    for request in (get("/s", "Content-Length: 3", "Content-Length: 4", method="POST",
                        body=b"abc"),
                    get("/up", "Expect: teleport", method="PUT")):
        conn = await Raw.open(client)
        await conn.send(request)
        sizes.append(len((await conn.reply()).body))
        conn.close()
    lines = [(line["method"], line["path"], line["status"], line["cache"], line["bytes"])
             for line in await read_json_log(client)]
    assert lines == [("POST", "/s", 400, "ERROR", sizes[0]),
                     ("PUT", "/up", 417, "ERROR", sizes[1])]
    assert all(sizes)


async def test_an_unread_body_is_drained_and_the_connection_goes_on(proxy, origin):
    client = await start(proxy, origin)
    conn = await Raw.open(client)
    # Max-Forwards: 0 — the proxy answers OPTIONS itself and never reads the body.
    await conn.send(get("/x", "Max-Forwards: 0", "Content-Length: 4", method="OPTIONS",
                        body=b"abcd") + get("/next"))
    assert (await conn.reply()).status == 200
    assert (await conn.reply()).body == b"GET /next 0"


async def test_a_close_while_the_client_still_sends_its_body_lingers(proxy, origin,
                                                                      monkeypatch):
    """RFC 9112 §9.6: answered without its body read (here the proxy answers OPTIONS
    itself) and closing (Connection: close) while the client still uploads, the proxy
    half-closes and reads on: a close with bytes unread sends a reset, and the client
    lost the answer to it ("connection reset"). The lingering ends when the client
    closes, or after CLOSE_LINGER_SECONDS."""
    from cacheproxy.proxy import client_conn

    monkeypatch.setattr(client_conn, "CLOSE_LINGER_SECONDS", 0.5)
    client = await start(proxy, origin)
    size = 64 << 20
    for stops in (True, False):
        conn = await Raw.open(client)
        await conn.send(get("/x", "Max-Forwards: 0", f"Content-Length: {size}",
                            "Connection: close", method="OPTIONS"))

        async def upload(conn: Raw = conn) -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(size // 65536):
                    conn.writer.write(b"a" * 65536)
                    await conn.writer.drain()

        sending = asyncio.create_task(upload())
        await asyncio.sleep(0.2)  # (well into the upload when the answer comes)
        reply = await conn.reply()
        assert reply.status == 200 and reply.headers["connection"] == "close"
        if stops:  # the client stops and closes its side: so does the proxy
            sending.cancel()
            conn.writer.write_eof()
        assert await conn.closed_within(3)  # else at CLOSE_LINGER_SECONDS, uploading still
        sending.cancel()
        conn.close()


async def test_a_stop_out_of_time_resets_a_body_delimited_by_the_close(proxy, origin):
    """RFC 9112 §6.3, §8: an HTTP/1.0 client's body without Content-Length ends with the
    connection; a graceful stop out of time closed it with a FIN, so the client took the
    part it had for the whole body. It ends with a reset, as abort() ends one."""
    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Cache-Control": "no-store"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"x" * 1000)
            await asyncio.sleep(0.05)
        return response

    app = web.Application()
    app.router.add_get("/slow", slow)
    client = await proxy(await origin(app))
    conn = await Raw.open(client)
    await conn.send(get("/slow", version="1.0"))
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
    assert b"Content-Length" not in head and b"chunked" not in head
    await asyncio.sleep(0.2)
    listener = client.server.runner.server
    listener.pre_shutdown()
    await listener.shutdown(0.1)
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(5):
            while await conn.reader.read(65536):
                pass
    conn.close()


async def test_the_control_plane_shares_a_keep_alive_connection(proxy, origin):
    client = await start(proxy, origin)
    conn = await Raw.open(client)
    await conn.send(get("/a") + get("/_cacheproxy/healthz") + get("/a"))
    first, health, again = await conn.reply(), await conn.reply(), await conn.reply()
    assert first.body == again.body == b"GET /a 0"
    assert again.headers["x-cache"] == "HIT"
    assert health.status == 200 and b"alive" in health.body


async def test_gathered_answers_go_out_before_the_control_planes(proxy, origin):
    """Answers are gathered and sent at the end of the loop iteration, but the aiohttp
    application writes to the socket itself: what was gathered before its answer goes
    first."""
    client = await start(proxy, origin)
    conn = await Raw.open(client)
    await conn.send(get("/a"))
    assert (await conn.reply()).body == b"GET /a 0"
    for _ in range(3):
        await conn.send(get("/b") + get("/a") + get("/_cacheproxy/healthz") + get("/a")
                        + get("/_cacheproxy/healthz"))
        replies = [await conn.reply() for _ in range(5)]
        assert [r.body for r in replies] == [b"GET /b 0", b"GET /a 0", replies[2].body,
                                             b"GET /a 0", replies[4].body]
        assert b"alive" in replies[2].body and b"alive" in replies[4].body
        assert replies[1].headers["x-cache"] == replies[3].headers["x-cache"] == "HIT"


async def test_a_reload_applies_client_timeouts_to_new_connections(proxy, origin):
    client = await start(proxy, origin, client_header_timeout=30)
    old = await Raw.open(client)
    url = client.app_proxy.default_upstream
    reconfigure(client.server.app, proxy_config(url, proxy={"client_header_timeout": 0.3}))
    new = await Raw.open(client)
    assert await new.closed_within(1.5)  # the new setting
    assert not await old.closed_within(0.2)  # the old connection keeps its own


async def test_send_timeout_is_restart_only_on_the_lean_plane_too(proxy, origin):
    """A reload says proxy.send_timeout takes effect at the next restart (RESTART_ONLY);
    new connections used to take the new value anyway, while the WARNING line named the
    old one (the exchange's)."""
    client = await start(proxy, origin, send_timeout=60)
    url = client.app_proxy.default_upstream
    reconfigure(client.server.app, proxy_config(url, proxy={"send_timeout": 0.5}))
    listener = client.server.runner.server
    assert listener.timeouts.send == 60 == client.app_proxy.exchange.send_timeout


async def test_a_streamed_head_is_not_held_back_waiting_for_the_body(proxy, origin):
    """The head is corked only while body bytes are already at hand: an origin that sends
    its head and then thinks has the head reach the client at once."""
    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Cache-Control": "no-store"})
        resp.content_length = 4
        await resp.prepare(request)
        await asyncio.sleep(1.0)
        await resp.write(b"late")
        return resp

    app = web.Application()
    app.router.add_get("/slow", slow)
    client = await proxy(await origin(app))
    conn = await Raw.open(client)
    began = time.monotonic()
    await conn.send(get("/slow"))
    line = await asyncio.wait_for(conn.reader.readline(), 5)
    assert line.startswith(b"HTTP/1.1 200") and time.monotonic() - began < 0.5
    reply_rest = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
    assert b"Content-Length: 4" in reply_rest
    assert await asyncio.wait_for(conn.reader.readexactly(4), 5) == b"late"
    conn.close()


# -- clients that read slowly, or not at all -------------------------------------------------

BLOB = bytes(range(256)) * 256  # 64 KiB


async def _blob_proxy(proxy, origin, **proxy_settings):
    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=BLOB, headers={"Cache-Control": "max-age=600"})

    app = web.Application()
    app.router.add_get("/blob", blob)
    client = await proxy(await origin(app), proxy=proxy_settings)
    await (await client.get("/blob")).read()  # stored
    return client


async def _small_window_socket(client, rcvbuf: int) -> tuple[socket.socket, Callable[[], list]]:
    """A non-blocking client socket with a small receive buffer (it reads what the test
    lets it read), and what finds its connection on the proxy's listener."""
    listener = client.server.runner.server
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", client.port))
    name = sock.getsockname()
    return sock, lambda: [c for c in listener.connections if tuple(c.peername) == name]


async def test_a_client_that_reads_none_of_its_pipelined_hits_gets_no_more_than_it_reads(
        proxy, origin, caplog):
    """Pipelined hits are answered no faster than the client reads them: one that sends
    request after request and reads nothing makes the proxy stop reading it (its answers
    do not pile up in memory), and it is closed at proxy.send_timeout."""
    client = await _blob_proxy(proxy, origin, send_timeout=1.0)
    sock, ours = await _small_window_socket(client, 4096)
    burst = get("/blob") * 100
    sent, held = 0, 0
    try:
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline and sent < 20_000:
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(burst) // len(get("/blob"))
            await asyncio.sleep(0.005)
            for conn in ours():
                if conn.transport is not None:
                    held = max(held, conn.transport.get_write_buffer_size()
                               + getattr(conn, "_out_bytes", 0))
        assert sent > 200  # thousands of answers (64 KiB each) asked for, unread
        assert held < 2 * 1024 * 1024, held  # a pause's worth, not sent * 64 KiB
        # Closed at send_timeout: the proxy drops its unread answers.
        assert await until(lambda: not ours(), timeout=3.0)
        assert "read nothing for 1s: connection closed" in caplog.text
    finally:
        sock.close()


async def _stored_big(proxy, origin, blocks: int, send_timeout: float
                      ) -> tuple[Any, bytes]:
    """A proxy with send_timeout, and /big (blocks of 256 bytes) stored in it."""
    big = bytes(range(256)) * blocks

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=big, headers={"Cache-Control": "max-age=600"})

    app = web.Application()
    app.router.add_get("/big", large)
    client = await proxy(await origin(app), proxy={"send_timeout": send_timeout},
                         cache={"max_object_bytes": 8 * 1024 * 1024})
    primer = await Raw.open(client)
    await primer.send(get("/big"))
    assert (await primer.reply()).body == big  # stored
    primer.close()
    return client, big


async def test_a_client_that_reads_nothing_of_an_answer_before_a_close_is_dropped(
        proxy, origin, caplog):
    """Connection: close, a large answer, and nothing read: the close waited for the
    client to read it, for as long as the client kept its socket (send_timeout was not
    armed on a closing connection). It is closed at send_timeout, as a keep-alive one."""
    client, _ = await _stored_big(proxy, origin, 16 * 1024, send_timeout=0.5)  # 4 MiB
    sock, ours = await _small_window_socket(client, 4096)
    try:
        await asyncio.get_running_loop().sock_sendall(sock, get("/big", "Connection: close"))
        assert await until(lambda: bool(ours()))
        assert await until(lambda: not ours(), timeout=3.0)
        assert "read nothing for 0.5s: connection closed" in caplog.text
    finally:
        sock.close()


async def test_pipelined_hits_to_a_slow_reader_all_arrive_in_order(proxy, origin):
    """Reading stops while the client's answers wait, and starts again as it reads: every
    pipelined request is answered, in order."""
    client = await _blob_proxy(proxy, origin)
    raw = await Raw.open(client)
    n = 150
    requests = [get(f"/blob?n={i}" if i % 50 == 7 else "/blob") for i in range(n)]
    await raw.send(b"".join(requests[:100]))
    await asyncio.sleep(0.3)  # the proxy fills what it can, and stops reading
    await raw.send(b"".join(requests[100:]))  # read only once the client reads again
    for i in range(n):
        reply = await raw.reply()
        assert reply.status == 200 and reply.body == BLOB, i
        if i % 10 == 0:
            await asyncio.sleep(0.01)  # a slow reader
    raw.close()


async def test_a_slow_but_steady_reader_gets_a_whole_large_hit(proxy, origin):
    """send_timeout bounds the time a client reads nothing (nginx's), not a whole answer:
    a client that keeps reading large hits slowly gets all of them, however long it takes."""
    client, big = await _stored_big(proxy, origin, 8 * 1024, send_timeout=1.0)  # 2 MiB
    loop = asyncio.get_running_loop()
    sock, ours = await _small_window_socket(client, 16384)
    assert await until(lambda: bool(ours()))
    for conn in ours():  # small kernel buffers: the proxy sees the progress
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    await loop.sock_sendall(sock, get("/big") + get("/big"))  # two: the second one waits
    got, began, whole = b"", time.monotonic(), None
    try:
        while whole is None and time.monotonic() - began < 20:
            try:
                chunk = sock.recv(16384)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                break
            got += chunk or b""
            first, _, rest = got.partition(b"\r\n\r\n")
            second, _, body = rest[len(big):].partition(b"\r\n\r\n")
            if len(body) >= len(big):
                whole = (first, rest[:len(big)], second, body)
            await asyncio.sleep(0.01)  # at most 1.6 MB/s: the pair takes seconds
    finally:
        sock.close()
    assert whole is not None, f"{len(got)} bytes of {2 * len(big)} and two heads"
    assert time.monotonic() - began > 2.0  # much longer than send_timeout
    first, body1, second, body2 = whole
    assert b"X-Cache: HIT" in first and body1 == big
    assert second.startswith(b"HTTP/1.1 200") and body2 == big


async def test_expect_100_continue_to_the_control_plane_gets_one_interim_answer(
        proxy, origin):
    """The control plane's handler (aiohttp's) sends its own 100 Continue: the proxy adds
    none, which would arrive after the answer."""
    client = await start(proxy, origin)
    conn = await Raw.open(client)
    await conn.send(get("/_cacheproxy/healthz", "Content-Length: 5", "Expect: 100-continue"))
    assert (await conn.reply()).status == 100
    await conn.send(b"hello" + get("/a"))
    health, after = await conn.reply(), await conn.reply()
    assert health.status == 200 and b"alive" in health.body
    assert after.status == 200 and after.body == b"GET /a 0"


# -- proxy.client_body_timeout (nginx's client_body_timeout) --------------------------------


async def _upload_origin(proxy, origin, log: dict[str, str] | None = None, **proxy_settings):
    """A proxy in front of an origin whose /up reads the whole body; ended holds how each
    upload ended there ("whole <n>", or the exception that broke it off)."""
    ended: list[str] = []

    async def upload(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except BaseException as exc:  # the proxy closed its connection mid-body
            ended.append(type(exc).__name__)
            raise
        ended.append(f"whole {len(body)}")
        return web.Response(text=f"{request.method} {len(body)}",
                            headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_route("*", "/up", upload)
    sections = {"proxy": proxy_settings} if log is None else {"proxy": proxy_settings, "log": log}
    client = await proxy(await origin(app), **sections)
    return client, ended


async def test_a_stalled_small_body_of_an_idempotent_request_gets_408(proxy, origin, caplog):
    """A PUT (GET, DELETE, OPTIONS) body up to 64 KiB is read whole before it is sent (it
    may be sent twice): a client that stops sending it gets 408 (RFC 9110 §15.5.9) at
    client_body_timeout, and the connection closes (the rest is not waited for), where it
    was held open for as long as the client liked, whatever the timeouts."""
    client, ended = await _upload_origin(proxy, origin, client_body_timeout=0.5,
                                         read_timeout=30)
    for method in ("PUT", "GET", "DELETE"):
        conn = await Raw.open(client)
        began = time.monotonic()
        await conn.send(get("/up", "Content-Length: 1000", method=method, body=b"a" * 10))
        reply = await conn.reply()
        assert reply.status == 408 and reply.headers["connection"] == "close"
        assert 0.4 < time.monotonic() - began < 3
        assert await conn.closed_within(2)
        assert f"client 127.0.0.1 sent nothing of the body of {method} /up for 0.5s" \
            in caplog.text
    assert ended == []  # nothing went upstream: the body was never whole
    assert "upstream" not in caplog.text


async def test_a_stalled_streamed_body_gets_408_not_the_origins_504(proxy, origin, caplog):
    """A POST (or a large PUT) streams its body upstream: when the client stops sending it,
    it is the client's timeout (408), not a 504 blaming the origin at read_timeout; the
    upstream exchange is abandoned, its connection closed (the origin holds a partial
    body, it cannot be reused)."""
    client, ended = await _upload_origin(proxy, origin, client_body_timeout=0.8,
                                         read_timeout=0.3)
    for done, (method, length) in enumerate((("POST", 1000), ("PUT", 100_000)), 1):
        conn = await Raw.open(client)
        await conn.send(get("/up", f"Content-Length: {length}", method=method,
                            body=b"a" * 100))
        reply = await conn.reply()
        assert reply.status == 408 and reply.headers["connection"] == "close"
        assert await conn.closed_within(2)
        assert await until(lambda done=done: len(ended) == done)  # the upload ended there
    assert len(ended) == 2 and "whole" not in " ".join(ended)  # both broke off upstream
    assert "upstream" not in caplog.text and "504" not in caplog.text
    conn = await Raw.open(client)  # and the next upload goes through (a new connection)
    await conn.send(get("/up", "Content-Length: 3", method="POST", body=b"abc"))
    assert (await conn.reply()).body == b"POST 3"


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_a_chunked_body_that_breaks_its_framing_gets_400_at_once(
        proxy, origin, caplog, method):
    """A chunk size that is no number, mid-body: no more of the body can come, so the
    client gets 400 now (nginx's answer), not a 408 at client_body_timeout, nor a 502
    blaming the origin; the upload upstream is abandoned (streamed, POST) or never sent
    (read first, PUT), and the connection closes."""
    caplog.set_level(logging.INFO, logger="cacheproxy")
    client, ended = await _upload_origin(proxy, origin, client_body_timeout=30,
                                         read_timeout=30)
    conn = await Raw.open(client)
    began = time.monotonic()
    await conn.send(get("/up", "Transfer-Encoding: chunked", method=method,
                        body=b"5\r\nhello\r\n"))
    await asyncio.sleep(0.2)
    await conn.send(b"ZZ\r\nbroken\r\n")
    reply = await conn.reply()
    assert reply.status == 400 and reply.headers["connection"] == "close"
    assert time.monotonic() - began < 3
    assert await conn.closed_within(2)
    assert "whole" not in " ".join(ended)
    assert "upstream" not in caplog.text and "ERROR" not in caplog.text
    assert f"client 127.0.0.1 sent a body that broke its framing in {method} /up: 400" \
        in caplog.text


async def test_client_body_timeout_is_between_reads_not_for_the_whole_body(proxy, origin):
    """A slow but steady upload takes as long as it takes (nginx's client_body_timeout)."""
    client, ended = await _upload_origin(proxy, origin, client_body_timeout=0.5)
    for method in ("PUT", "POST"):
        conn = await Raw.open(client)
        await conn.send(get("/up", "Content-Length: 60", method=method))
        for _ in range(6):  # 1.2 s in all, 0.2 s between parts
            await asyncio.sleep(0.2)
            await conn.send(b"x" * 10)
        reply = await conn.reply()
        assert (reply.status, reply.body) == (200, f"{method} 60".encode())
    assert ended == ["whole 60", "whole 60"]


async def test_a_reload_applies_client_body_timeout_to_new_connections(proxy, origin):
    client, _ = await _upload_origin(proxy, origin, client_body_timeout=30)
    old = await Raw.open(client)
    url = client.app_proxy.default_upstream
    reconfigure(client.server.app, proxy_config(url, proxy={"client_body_timeout": 0.3}))
    new = await Raw.open(client)
    for conn in (old, new):
        await conn.send(get("/up", "Content-Length: 10", method="PUT", body=b"a"))
    assert (await new.reply()).status == 408  # the new setting
    assert not await old.closed_within(0.3)  # the old connection keeps its own


async def test_a_client_leaving_mid_upload_is_a_client_abort_499_not_an_error(
        proxy, origin, caplog, tmp_path):
    """A client that disconnects mid-body: no internal error (it was one, with a
    traceback and a 500, for a small idempotent body read whole first), no WARNING that
    blames the origin (it was one, with a 502, for a streamed body); the request log says
    499, nginx's "client closed request", and the upload upstream ends."""
    client, ended = await _upload_origin(proxy, origin, log={"path": str(tmp_path / "log")})
    for method, length in (("PUT", 1000), ("POST", 1000), ("PUT", 100_000)):
        conn = await Raw.open(client)
        await conn.send(get("/up", f"Content-Length: {length}", method=method,
                            body=b"a" * 10))
        await asyncio.sleep(0.2)
        conn.writer.transport.abort()  # gone, mid-body
    await asyncio.sleep(0.3)
    lines = [(line["method"], line["status"]) for line in await read_json_log(client)]
    assert lines == [("PUT", 499), ("POST", 499), ("PUT", 499)]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "whole" not in " ".join(ended)  # what reached the origin broke off there
    assert client.app_proxy.exchange.pool.in_use == 0  # and no connection is kept for it


# -- a relayed body that breaks off (RFC 9112 §8) --------------------------------------------


@contextlib.asynccontextmanager
async def _breaking_origin():
    """An origin whose /doc answer (chunked, no length) breaks off after 400 bytes: the
    connection is reset mid-body. Anything else: a whole "ok". Yields its URL."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if b" /doc " not in head:
                    writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
                                 b"Content-Length: 2\r\n\r\nok")
                    await writer.drain()
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n190\r\n" + b"a" * 400 + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.transport.abort()  # the origin dies mid-body
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def _fetch_to_the_end(client, request: bytes) -> tuple[bytes, str]:
    """What a client gets for request until the connection ends, and how it ended."""
    conn = await Raw.open(client)
    await conn.send(request)
    data = b""
    try:
        while chunk := await asyncio.wait_for(conn.reader.read(65536), 5):
            data += chunk
    except ConnectionResetError:
        return data, "reset"
    finally:
        conn.close()
    return data, "close"


async def test_a_body_that_breaks_off_ends_a_close_delimited_answer_with_a_reset(
        proxy, monkeypatch):
    """To an HTTP/1.0 client an answer without Content-Length is delimited by the close
    (RFC 9112 §6.3): a FIN after 400 bytes of a broken body looked like its whole end.
    It ends with a reset (§8: the client must be able to tell it is incomplete), on the
    full path and on a quick forward handed to it alike. An HTTP/1.1 client's chunked
    answer lacks its last chunk: a close says enough, as before."""
    quick: list[bytes] = []
    start = QuickForward.start

    def counted(self: QuickForward, head: bytes) -> None:
        quick.append(head)
        start(self, head)

    monkeypatch.setattr(QuickForward, "start", counted)
    async with _breaking_origin() as url:
        client = await proxy(url)
        data, end = await _fetch_to_the_end(client, get("/doc", version="1.0"))
        assert quick == []  # no idle connection to the origin yet: the full path
        assert data.startswith(b"HTTP/1.1 200") and b"Content-Length" not in data
        assert end == "reset"
        assert (await _fetch_to_the_end(client, get("/ok", "Connection: close")))[0] \
            .endswith(b"ok")  # a connection to the origin left idle in the pool
        data, end = await _fetch_to_the_end(client, get("/doc", version="1.0"))
        assert len(quick) == 1  # sent by callback (proxy/quick_forward.py), then relayed
        assert data.startswith(b"HTTP/1.1 200") and end == "reset"
        data, end = await _fetch_to_the_end(client, get("/doc"))
        assert data.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in data
        assert not data.endswith(b"0\r\n\r\n") and end == "close"  # no last chunk
