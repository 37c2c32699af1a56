"""Found while testing forward mode in a browser (branch browser-forward): a CONNECT whose
client sends its first bytes and then its FIN before the proxy's 200.

The proxy keeps bytes that come before the 200 (MAX_TAIL) and a tunnel lets each side
finish on its own (half-close), but the two together fail: ClientConnection.eof_received
returns False while the tunnel is not yet up (self._tunnel is None), so asyncio closes
the client's socket at once; the 200 and the origin's answer are never sent, the early
bytes are dropped, and, when create_connection returns, `self.transport is None` makes
_connect return without a log line (the CONNECT is missing from the log and the stats).
`printf 'CONNECT host:port HTTP/1.1\\r\\n\\r\\nhello' | nc -N proxy 8080` is such a client.

Now eof_received keeps such a connection open for writing until its tunnel is up.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from support import echo_server, read_json_log


async def test_a_connect_half_closed_with_its_early_bytes_is_tunnelled_and_logged(
        proxy, origin, tmp_path: Path) -> None:
    server, port = await echo_server(upper=True)
    try:
        client = await proxy(await origin(web.Application()),
                             forward={"enabled": True, "connect_ports": [port]},
                             log={"path": str(tmp_path / "requests.log")})
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"
                     "hello".encode())
        writer.write_eof()  # all this client has to say
        got = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert got == b"HTTP/1.1 200 Connection Established\r\n\r\nHELLO"
        for _ in range(50):
            lines = [r for r in await read_json_log(client) if r["method"] == "CONNECT"]
            if lines:
                break
            await asyncio.sleep(0.05)
        assert [(r["cache"], r["bytes"], r["bytes_in"]) for r in lines] == [("TUNNEL", 5, 5)]
    finally:
        server.close()


async def test_early_bytes_past_max_tail_wait_for_the_tunnel_and_none_is_dropped(
        proxy, origin) -> None:
    """More than MAX_TAIL (64 KiB) sent right behind the CONNECT, before its 200: the
    client is no longer read until the tunnel takes them, and every byte goes through
    (the bytes past 64 KiB used to be dropped, the tunnel carrying a stream cut short)."""
    server, port = await echo_server()
    try:
        client = await proxy(await origin(web.Application()),
                             forward={"enabled": True, "connect_ports": [port]})
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        sent = bytes(range(256)) * 1600  # 400 KiB
        writer.write(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"
                     .encode() + sent)
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert got == b"HTTP/1.1 200 Connection Established\r\n\r\n" + sent
    finally:
        server.close()


async def test_a_tunnel_still_open_when_a_stop_runs_out_of_time_is_logged(
        proxy, origin) -> None:
    """A tunnel is one line, written when it closes: also when a graceful stop closes it
    (shutdown_timeout passed), before the application's cleanup closes the log. The task
    waiting on the tunnel used to be cancelled without a line, after the log had closed."""
    server, port = await echo_server()
    try:
        client = await proxy(await origin(web.Application()),
                             forward={"enabled": True, "connect_ports": [port]})
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"
                     "hello".encode())
        assert await asyncio.wait_for(reader.readexactly(44), 5) \
            == b"HTTP/1.1 200 Connection Established\r\n\r\nhello"
        listener = client.server.runner.server
        listener.pre_shutdown()
        await listener.shutdown(0.2)  # the tunnel is still open: out of time
        stats = listener.observer.stats
        assert stats.by_cache["TUNNEL"] == 1
        writer.close()
    finally:
        server.close()
