"""Review (exhaust2): resource exhaustion in the day's new code (WebSocket pass-through,
the peek of an intercepted CONNECT, Happy Eyeballs, Via loops, a trusted front's scheme,
the status-line scanner): CPU, memory, descriptors or time a client can make the proxy
spend without bound. Each test failed on the code it was written against (0d960eb), or is
marked xfail (strict) with the reason it stays; real servers on 127.0.0.1 as elsewhere.
The bounds asserted are counts, or times with a wide margin (ten times) either way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from support import dns_reply, dropping_syns, until
from test_review_peek_regressions import connected, raw
from test_websocket import handshake, read_head, switching

from cacheproxy.http.front_scheme import forwarded_proto


def scheme_app() -> web.Application:
    """An origin that answers with the X-Forwarded-Proto it was sent."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("X-Forwarded-Proto", "-"))

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return app


# --- a trusted front's Forwarded: proto= ---------------------------------------------------------


async def test_a_long_forwarded_element_costs_no_quadratic_time(proxy: Any, origin: Any) -> None:
    """With proxy.trust_forwarded, every request's scheme is read from its Forwarded field
    when it has no X-Forwarded-Proto (http/front_scheme.py), with a regular expression
    searched (finditer) through the last element: a run of token characters with no `=`
    made it try each start position and scan to the end from each, O(n²). One field line
    of 8,000 bytes (under the 8,190 a line may have) cost about 1.4 s of CPU, during which
    the event loop served no other client: a handful of such requests a second, from
    anyone who can reach the front, keeps the proxy from answering at all. The element's
    pairs are now split once (RFC 7239 §4: forwarded-pair *( ";" forwarded-pair )) and
    each read by itself. Severity: medium (trust_forwarded only, and only behind a front
    that leaves a client's Forwarded as it came, which nginx and HAProxy do by default)."""
    for value in ("a" * 8000, '"' + "a" * 8000, "proto=x;" * 1000 + "a" * 1000,
                  "a=" + "\"x;" * 2600):
        began = time.perf_counter()
        assert forwarded_proto([value]) is None
        assert time.perf_counter() - began < 0.05, value[:20]
    assert forwarded_proto(['for=1.2.3.4;proto="HTTPS";by=x']) == "https"
    assert forwarded_proto(["proto=https, for=x;proto=http"]) == "http"
    assert forwarded_proto(['proto="https";for="a;b"']) == "https"
    assert forwarded_proto(['for="a;proto=https"']) is None  # (inside a quoted-string)

    client = await proxy(await origin(scheme_app()), proxy={"trust_forwarded": True})
    began = time.perf_counter()
    resp = await client.get("/a", headers={"Forwarded": '"' + "a" * 8100})
    took = time.perf_counter() - began
    assert resp.status == 200 and await resp.text() == "http"
    assert took < 0.3, f"{took:.2f} s for one request"
    resp = await client.get("/b", headers={"Forwarded": "for=x;proto=https"})
    assert await resp.text() == "https"


# --- a tunnel whose client reads nothing ---------------------------------------------------------


@contextlib.asynccontextmanager
async def flooding_origin() -> AsyncIterator[tuple[int, asyncio.Future[float]]]:
    """An origin that answers a WebSocket handshake with its 101, then sends without end
    (as fast as it is read) and reads what comes; yields its port and a future set to the
    time its connection ended."""
    ended: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def drain_reader() -> None:
            while await reader.read(65536):
                pass
        reading: asyncio.Task[None] | None = None
        try:
            writer.write(switching(await reader.readuntil(b"\r\n\r\n")))
            reading = asyncio.ensure_future(drain_reader())
            while not reading.done():
                writer.write(b"\x82\x7e\xff\xff" + bytes(65535))  # binary frames
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if not ended.done():
                ended.set_result(time.monotonic())
            if reading is not None:
                reading.cancel()
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], ended
    finally:
        server.close()


async def test_a_websocket_whose_client_reads_nothing_is_closed_at_send_timeout(
        proxy: Any, caplog: Any) -> None:
    """A WebSocket (or CONNECT) tunnel whose client stops reading while the origin has
    more to send: the proxy holds what it read for it (up to a read plus the transport's
    high-water mark, some 300 KB per tunnel), the origin waits, and the tunnel was closed
    only when no byte moved either way for proxy.websocket_idle_timeout (600 s), which
    any byte from the client, one every few minutes, kept off for good. So a client
    holds proxy memory and both sockets for as long as it likes, reading nothing:
    10,000 such clients (proxy.max_client_connections) hold some 3 GB. An HTTP answer's
    client that reads nothing is closed at proxy.send_timeout (60 s without progress);
    nginx closes an upgraded connection the same way (ngx_http_upstream_process_upgraded
    arms send_timeout on a stalled write to the client). Now the tunnel does too: its
    client has send_timeout to read some of what waits, whatever it sends meanwhile.
    Severity: medium (memory and descriptors held without bound by any client that can
    open a WebSocket, which needs no credentials behind most applications' handshake)."""
    async with flooding_origin() as (port, ended):
        client = await proxy(f"http://127.0.0.1:{port}",
                             proxy={"send_timeout": 0.5, "websocket_idle_timeout": 30.0})
        reader, writer = await raw(client.port, handshake())
        status, _ = await read_head(reader)
        assert status == 101
        began = time.monotonic()
        with caplog.at_level(logging.INFO, logger="cacheproxy"):
            for _ in range(20):  # a byte now and then (a masked frame's first byte), read none
                if ended.done():
                    break
                writer.write(b"\x82")
                await writer.drain()
                await asyncio.sleep(0.2)
        writer.close()
        assert ended.done(), "the tunnel still open after 4 s, its client reading nothing"
        assert ended.result() - began < 3.0
    assert "read nothing" in caplog.text


async def test_a_websocket_whose_client_reads_slowly_stays_open(proxy: Any) -> None:
    """The other side of the above: send_timeout is time without progress (nginx's), so
    a client that reads, however slowly, keeps its WebSocket."""
    async with flooding_origin() as (port, ended):
        client = await proxy(f"http://127.0.0.1:{port}",
                             proxy={"send_timeout": 0.5, "websocket_idle_timeout": 30.0})
        reader, writer = await raw(client.port, handshake())
        status, _ = await read_head(reader)
        assert status == 101
        got = 0
        for _ in range(20):  # 2 s, four times send_timeout: 512 KB each 0.1 s (the
            await asyncio.sleep(0.1)  # kernel's buffers, megabytes, are taken first)
            for _ in range(8):
                got += len(await asyncio.wait_for(reader.read(65536), 5))
        assert not ended.done() and got > 0
        writer.close()


async def test_a_connect_tunnel_whose_client_reads_nothing_is_closed_at_send_timeout(
        proxy: Any, origin: Any) -> None:
    """The same for a CONNECT tunnel (forward mode), which forward.tunnel_idle_timeout
    (600 s) alone closed, and only once neither side sent a byte. Severity: medium, as
    above."""
    async with flooding_origin() as (port, ended):
        client = await proxy(await origin(scheme_app()),
                             proxy={"send_timeout": 0.5},
                             forward={"enabled": True, "connect_ports": [port]})
        _, writer = await connected(client.port, port)
        writer.write(handshake())  # (the far end's cue to send without end)
        began = time.monotonic()
        for _ in range(20):
            if ended.done():
                break
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.2)
        writer.close()
        assert ended.done(), "the tunnel still open after 4 s, its client reading nothing"
        assert ended.result() - began < 3.0


# --- Happy Eyeballs: a name with many addresses, none answering ---------------------------------


class ManyAddresses(asyncio.DatagramProtocol):
    """A DNS server on 127.0.0.1 (RFC 1035 over UDP) answering every name with the A
    records of addresses (AAAA: none)."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        _, reply = dns_reply(data, a=tuple(self.addresses))
        self.transport.sendto(reply, addr)  # type: ignore[attr-defined]


def connecting_to(port: int) -> int:
    """How many sockets of this machine are connecting to port (SYN sent, no answer)."""
    out = subprocess.run(["ss", "-Htn", "state", "syn-sent", f"dport = :{port}"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


async def test_a_name_with_many_silent_addresses_gets_a_bounded_number_of_attempts(
        proxy: Any, origin: Any) -> None:
    """Happy Eyeballs (connect_first, RFC 8305 §5) started the next of a name's addresses
    every 250 ms and kept every attempt before it going: a name whose 25 addresses take
    no connection (hosts that are down, a firewall that drops, or a DNS answer made for
    it: any client in forward mode names the host) held twelve sockets for one CONNECT
    over a 3 s proxy.connect_timeout, twenty over the default 5 s, a SYN sent to each
    address and resent. Descriptors and the kernel's half-open connections grow with
    the number of addresses times the clients (10,000 per process), and the proxy
    sprays SYNs at addresses a client chose. curl caps its concurrent attempts at 6
    (cf-ip-happy, closing the oldest first); Squid bounds the attempts per request
    (forward_max_tries 25) and offers happy_eyeballs_connect_limit. Now at most 6
    attempts are under way at once: the oldest is given up for the next. Severity: low
    (forward mode; bounded per request by connect_timeout, but 20 times what one
    connection should cost)."""
    addresses = [f"127.1.0.{i}" for i in range(1, 26)]
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: ManyAddresses(addresses), local_addr=("127.0.0.1", 0))
    dns = transport.get_extra_info("sockname")[1]
    try:
        with dropping_syns() as port:
            client = await proxy(await origin(scheme_app()), proxy={"connect_timeout": 3.0},
                                 forward={"enabled": True, "connect_ports": [port],
                                          "resolver": [f"127.0.0.1:{dns}"],
                                          "allow_hosts": ["many.example"]})
            before = connecting_to(port)  # (the filler the queue had no room for)
            reader, writer = await raw(client.port, f"CONNECT many.example:{port} HTTP/1.1"
                                       f"\r\nHost: many.example:{port}\r\n\r\n".encode())
            answered = asyncio.ensure_future(read_head(reader))
            most = 0
            while not answered.done():
                most = max(most, connecting_to(port) - before)
                await asyncio.sleep(0.05)
            status, _ = answered.result()
            writer.close()
            assert await until(lambda: connecting_to(port) == before)  # (none left)
    finally:
        transport.close()
    assert status == 504
    assert most >= 4  # (the attempts overlap: Happy Eyeballs is still there)
    assert most <= 6, f"{most} attempts at once for one CONNECT"
