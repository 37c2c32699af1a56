"""A small asyncio TCP relay that injects network faults, for tests.

Put it between the proxy and an origin on 127.0.0.1::

    async with faulty_relay("127.0.0.1", origin_port) as relay:
        relay.mode = "reset_after"
        relay.reset_after_bytes = 1000
        ...  # point the proxy at 127.0.0.1:relay.port

Modes (``relay.mode``, read when a connection is accepted):

* ``pass``             relay both ways (the default)
* ``reset_on_connect`` accept, then RST (SO_LINGER 0 and close)
* ``refuse``           stop listening, so connects are refused; setting any other
                       mode listens again on the same port
* ``blackhole``        accept, read and discard, never answer, never close
* ``reset_after``      relay ``reset_after_bytes`` upstream->client bytes, then RST both sides
* ``close_after``      the same, but a clean FIN close of both sides

``latency`` (seconds, before each upstream->client chunk, so also before the first byte)
and ``throttle_bps`` (upstream->client bytes per second) are read for every chunk, so
they also apply to live connections. ``connections`` counts accepted client connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Coroutine
from typing import Any

MODES = frozenset({"pass", "reset_on_connect", "refuse", "blackhole", "reset_after", "close_after"})
_CHUNK = 65536


def _rst(transport: asyncio.BaseTransport) -> None:
    """Close with SO_LINGER 0, so the peer sees a RST rather than a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()


class FaultyRelay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.latency = 0.0
        self.throttle_bps: int | None = None
        self.reset_after_bytes = 0
        self.connections = 0
        self._mode = "pass"
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}")
        self._mode = value
        if value == "refuse":
            self._stop_listening()
        elif self._started and self._sock is None:
            self._listen()

    async def start(self) -> int:
        self._started = True
        self._listen()
        if self._mode == "refuse":
            self._stop_listening()
        return self.port

    async def close(self) -> None:
        self._started = False
        self._stop_listening()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- listening ------------------------------------------------------------------------

    def _listen(self) -> None:
        # Bound and listening synchronously: a connect right after `mode = "pass"` succeeds.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop(sock))

    def _stop_listening(self) -> None:
        if self._sock is None:
            return
        if self._accept_task is not None:
            self._accept_task.cancel()
            self._accept_task = None
        # Drop the selector registration now, before the fd number can be reused.
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            self.connections += 1
            self._spawn(self._handle(conn, self._mode))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one connection -------------------------------------------------------------------

    async def _handle(self, conn: socket.socket, mode: str) -> None:
        if mode == "reset_on_connect":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        creader, cwriter = await asyncio.open_connection(sock=conn)
        if mode == "blackhole":
            try:
                while await creader.read(_CHUNK):
                    pass
            except OSError:
                pass
            finally:
                cwriter.transport.abort()
            return
        try:
            ureader, uwriter = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _rst(cwriter.transport)
            return
        limit = self.reset_after_bytes if mode in ("reset_after", "close_after") else None
        upward = asyncio.get_running_loop().create_task(self._copy_up(creader, uwriter))
        clean = False
        try:
            if await self._copy_down(ureader, cwriter, limit) and mode == "reset_after":
                # Let the asyncio buffer empty first, so the client gets exactly `limit` bytes.
                cwriter.transport.set_write_buffer_limits(high=0)
                await cwriter.drain()
                _rst(cwriter.transport)
                _rst(uwriter.transport)
            clean = True
        except OSError:
            pass
        finally:
            upward.cancel()
            await asyncio.gather(upward, return_exceptions=True)
            for writer in (cwriter, uwriter):
                if clean:
                    writer.close()  # flushes what is buffered, then FIN
                else:
                    writer.transport.abort()

    async def _copy_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            writer.transport.abort()  # the client is gone: make the downstream copy end too

    async def _copy_down(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None
    ) -> bool:
        """Copy upstream->client; return True if it stopped because `limit` was reached."""
        sent = 0
        while data := await reader.read(_CHUNK):
            if limit is not None:
                data = data[: limit - sent]
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            while data:
                bps = self.throttle_bps
                piece = data[: max(1, bps // 50)] if bps else data  # ~20 ms slices
                if bps:
                    await asyncio.sleep(len(piece) / bps)
                writer.write(piece)
                await writer.drain()
                sent += len(piece)
                data = data[len(piece) :]
            if limit is not None and sent >= limit:
                return True
        return False


@contextlib.asynccontextmanager
async def faulty_relay(target_host: str, target_port: int) -> AsyncIterator[FaultyRelay]:
    relay = FaultyRelay(target_host, target_port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()
