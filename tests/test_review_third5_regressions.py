"""Review (third5): a third reader of the merges after 8f4ba5c (WebSocket review fixes,
second5's, the peek's SO_RCVLOWAT, docs3's, exhaust2's), looking for where they meet
badly and the edges each misses. Each test failed on the code it was written against
(266dd8f), or is marked xfail (strict) with the reason it stays; real servers on
127.0.0.1 as elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

from processes import start_serve, stop
from test_review_docs3_regressions import echo_app as echo_app3
from test_review_docs3_regressions import raw_get
from test_websocket import handshake, switching

from cacheproxy.proxy.destinations import _give_up
from cacheproxy.proxy.tunnel import TunnelEnd

# --- a tunnel's client that reads nothing, with less than a high-water mark waiting -------------


async def test_a_websocket_client_reading_nothing_is_closed_below_the_high_water_mark(
        proxy: Any) -> None:
    """e67dab1 closes a tunnel's client that reads nothing at proxy.send_timeout, but
    its timer was armed only when the client's transport paused writing, i.e. when more
    than its high-water mark (64 KB) waited. An origin that sent a message a little
    bigger than the kernel's buffers take (here 50 KB: 37 KB left in the transport) and
    then waited for an answer never made it pause: a client that read nothing and sent
    a byte now and then (keeping websocket_idle_timeout off) held the tunnel, both
    sockets and what waited for it for good, while README says a tunnel's client is
    closed at send_timeout "whatever it sends meanwhile". nginx arms send_timeout on any
    write to the client that did not complete (ngx_http_upstream_process_upgraded),
    whatever its size. Now any bytes left waiting start the timer. Severity: low (up to
    64 KB and two sockets per client, where e67dab1 meant to bound them in time)."""
    ended: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")  # its 101, then one 50,000-byte
            writer.write(switching(head) + b"\x82\x7e\xc3\x50" + bytes(50_000))  # frame
            await writer.drain()
            while await reader.read(65536):  # then waits for the client's answer
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if not ended.done():
                ended.set_result(time.monotonic())
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    client = await proxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                         proxy={"send_timeout": 0.5, "websocket_idle_timeout": 30.0})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (a small window: the
    sock.connect(("127.0.0.1", client.port))  # kernel takes some 16 KB of the 50 KB)
    sock.setblocking(False)
    _, writer = await asyncio.open_connection(sock=sock)
    try:
        for _ in range(100):
            if client.server.runner.server.connections:
                break
            await asyncio.sleep(0.01)
        for conn in client.server.runner.server.connections:
            conn.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        writer.transport.pause_reading()  # it reads nothing from now on
        writer.write(handshake())
        began = time.monotonic()
        for _ in range(20):  # a byte now and then (a masked frame's first byte)
            if ended.done():
                break
            writer.write(b"\x82")
            await writer.drain()
            await asyncio.sleep(0.2)
        assert ended.done(), "the tunnel still open after 4 s, its client reading nothing"
        assert ended.result() - began < 3.0
    finally:
        writer.transport.abort()
        server.close()


# --- behind a trusted TLS front: a path names both schemes' entries -----------------------------


async def test_the_purge_method_reaches_the_entries_a_trusted_front_keyed_https(
        origin: Any, proxy: Any) -> None:
    """ea9e3c6 made the admin API's purge of a path (purge?url=/p, purge?prefix=/a/)
    cover the entries keyed https behind a trusted TLS front (proxy.trust_forwarded),
    since the operator's path names the resource whatever scheme its clients used; the
    PURGE method, which README offers beside it "as in Varnish and Squid", was left out:
    `curl -X PURGE http://proxy:8080/p` (a deploy script talking to the proxy, not
    through the front) purged the http key alone and answered 404, while every https
    client went on getting the old page until it expired. Varnish's PURGE reaches both
    (its hash is the URL and Host, no scheme). Severity: medium, as ea9e3c6's (a purge
    that does not happen for the clients behind the front)."""
    c = await proxy(await origin(echo_app3()), proxy={"trust_forwarded": True})
    https = "X-Forwarded-Proto: https"
    host = f"{c.server.host}:{c.server.port}"
    await raw_get(c, "/p", https, host=host)
    _, fields, _ = await raw_get(c, "/p", https, host=host)
    assert fields["x-cache"] == "HIT"
    r = await c.request("PURGE", "/p")  # the operator's, straight to the proxy
    assert r.status == 200, await r.text()
    _, fields, _ = await raw_get(c, "/p", https, host=host)
    assert fields["x-cache"] == "MISS"


async def test_the_entry_of_a_path_is_found_when_a_trusted_front_keyed_it_https(
        origin: Any, proxy: Any) -> None:
    """96a09ee made entries?prefix=/a/ list both schemes' keys "as a purge of the path
    finds them"; entry?url=/a/one (README: "one URL's variants with their stored
    fields") still looked under the listener's scheme only: behind a trusted TLS front it
    answered 404 "not in the cache" for the page the listing just showed and a purge of
    the same path purges. Severity: low (a wrong answer to the operator, nothing served
    wrongly)."""
    c = await proxy(await origin(echo_app3()), proxy={"trust_forwarded": True})
    host = f"{c.server.host}:{c.server.port}"
    await raw_get(c, "/a/one", "X-Forwarded-Proto: https", host=host)
    r = await c.get("/_cacheproxy/entries", params={"prefix": "/a/"})
    assert [e["key"] for e in (await r.json())["entries"]] == [f"https://{host}/a/one"]
    r = await c.get("/_cacheproxy/entry", params={"url": "/a/one"})
    assert r.status == 200, await r.text()
    assert (await r.json())["key"] == f"https://{host}/a/one"


# --- CONNECT to a server that speaks first ------------------------------------------------------


def greeting_server() -> tuple[socket.socket, int]:
    """A server in a thread of its own (as a real one answers, not in the test's loop) that
    greets each connection at once, as SSH, SMTP, FTP and MySQL servers do."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(100)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            threading.Thread(target=lambda c=conn: (c.recv(100), c.close()),
                             daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


async def test_a_connect_to_a_server_that_speaks_first_gets_its_200_first(
        origin: Any, tmp_path: Path) -> None:
    """A CONNECT tunnel's TunnelEnd wrote what the origin sent to the client as soon as
    it came, from connection_made on, while the 200 Connection Established was written
    only once connect_first had handed the connection back, some loop turns later. A
    server that speaks first (SSH's banner, SMTP's 220, FTP, MySQL's greeting) sends at
    once: on uvloop (`cacheproxy serve`) its greeting reached the client before the 200
    in about half of the CONNECTs here, so the client read `SSH-2.0-...` where it
    expects the proxy's status line (a CONNECT client, `nc -X connect` under ssh's
    ProxyCommand, curl's --proxytunnel, reads the 200 before the tunnel's bytes). RFC
    9110 §9.3.6: the tunnel starts after the 2xx. (A greeting followed at once by the
    origin's close came before the 200 too.) What the origin sends before the client's
    side takes the tunnel now waits for it, the origin's reading paused. Severity:
    medium (server-first protocols through a CONNECT, on ports an operator put in
    forward.connect_ports, fail at random)."""
    listener, port = greeting_server()
    site = await origin(echo_app3())
    config = tmp_path / "cacheproxy.toml"
    config.write_text(f"""
[proxy]
upstream = "http://127.0.0.1:{site.port}"
[log]
format = "off"
[forward]
enabled = true
connect_ports = [{port}]
""")
    proc, proxy_port = await start_serve("--config", str(config), cwd=tmp_path)
    firsts = []
    try:
        for host in ["127.0.0.1", "localhost"] * 20:  # (localhost: Happy Eyeballs too)
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
            writer.write(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
                         .encode())
            firsts.append(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5))
            if firsts[-1].startswith(b"HTTP/1.1 200"):
                assert await asyncio.wait_for(reader.readline(), 5) == b"\r\n"
                assert await asyncio.wait_for(reader.readline(), 5) \
                    == b"SSH-2.0-OpenSSH_9.6\r\n"  # (the greeting, after the 200)
            writer.close()
    finally:
        listener.close()
        code, err = await stop(proc)
    assert [f for f in firsts if not f.startswith(b"HTTP/1.1 200")] == []
    assert (code, "Traceback" in err) == (0, False), err


async def test_an_attempt_given_up_once_connected_leaves_the_winners_client_alone() -> None:
    """c99f649 and 53a09ad keep a Happy Eyeballs loser's TunnelEnd from closing the
    winning tunnel's client when the loser is dropped after it connected (_close_late,
    _drop: its protocol swapped first). One window was left: an attempt given up
    (_give_up: the winner's turn, or MAX_ATTEMPTS's oldest, 0df514a) after its connection
    was made but before create_connection handed it back. The cancel then reaches
    create_connection's `await waiter`, which closes the transport with the TunnelEnd
    still its protocol: its connection_lost closed `client`, the CONNECT's client, as
    the winner's tunnel started (two addresses of a dual-stack name answering in the
    same loop turn). Now a TunnelEnd the client's side never took leaves the client
    alone, however its connection ends. Severity: low (a timing window; a cut tunnel)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client_w = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    attempts: list[asyncio.Task[Any]] = []

    class GivenUpLate(TunnelEnd):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            loop.call_soon(_give_up, attempts[0])  # connected, not yet handed back

    try:
        attempts.append(loop.create_task(loop.create_connection(
            lambda: GivenUpLate(client_w.transport, 30.0), "127.0.0.1", port)))
        with contextlib.suppress(asyncio.CancelledError):
            await attempts[0]
        await asyncio.sleep(0.1)
        assert not client_w.transport.is_closing()  # the winner's client goes on
    finally:
        client_w.close()
        server.close()
