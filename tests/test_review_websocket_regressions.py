"""Defects found reviewing WebSocket pass-through (RFC 6455 §4, RFC 9110 §7.8): real
aiohttp origins, raw sockets and the real proxy on 127.0.0.1. Each test failed before its
fix (or is marked xfail, strict, with the reason it stays)."""

from __future__ import annotations

import asyncio
from typing import Any

from support import read_json_log
from test_websocket import echo_app, handshake, read_head


async def test_a_websocket_open_at_a_graceful_stop_is_logged_once(
        proxy: Any, origin: Any, tmp_path: Any) -> None:
    """README: one log line per request; a WebSocket's is written when it ends. A graceful
    stop that ran out of proxy.shutdown_timeout with a WebSocket open wrote two: stop()
    logged the handshake it found still being answered (bytes 0), then the cancelled
    tunnel wrote its own. The stats and /metrics counted two TUNNEL requests for one.
    (A CONNECT tunnel, the same code, clears the request it answers for that reason.)
    Medium: every WebSocket open at each deploy or restart is counted twice."""
    client = await proxy(await origin(echo_app()), log={"path": str(tmp_path / "r.log")})
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(handshake())
    status, _ = await read_head(reader)
    assert status == 101
    writer.write(b"\x81\x80\x00\x00\x00\x00")  # an empty masked text frame
    listener = client.server.runner.server
    listener.pre_shutdown()
    await listener.shutdown(0.2)  # the WebSocket is still open: out of time
    assert listener.observer.stats.by_cache["TUNNEL"] == 1
    lines = [line for line in await read_json_log(client) if line["path"] == "/ws"]
    assert len(lines) == 1, lines
    assert (lines[0]["status"], lines[0]["cache"]) == (101, "TUNNEL")
    assert lines[0]["bytes_in"] == 6  # the tunnel's own line, with its bytes
    writer.close()
