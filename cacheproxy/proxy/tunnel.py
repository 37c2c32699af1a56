"""CONNECT without interception (RFC 9110 §9.3.6): after the 200, bytes go both ways
untouched until either side closes. Each side's reading pauses while the other side's
writing is paused, so a slow reader holds at most one socket buffer of the other's data."""

from __future__ import annotations

import asyncio


class TunnelEnd(asyncio.Protocol):
    """The origin's side of a tunnel; `client` is the client's transport."""

    def __init__(self, client: asyncio.Transport, idle_timeout: float) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.received = 0  # bytes from the origin, sent to the client
        self.sent = 0  # bytes from the client, sent to the origin
        self.idled = False  # closed for forward.tunnel_idle_timeout
        loop = self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._origin_done = self._client_done = False  # each side sent its EOF
        # A tunnel with no byte either way for this long is closed: a client that
        # vanished without a FIN would otherwise hold both sockets for good. One timer,
        # looked at when it fires (no re-arming per read).
        self._idle_timeout = idle_timeout
        self._moved = 0.0  # when a byte last went either way
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._moved = self._loop.time()
        self._timer = self._loop.call_later(self._idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        if self.transport is not None and self.transport.get_protocol() is not self:
            # A Happy Eyeballs loser dropped (destinations._drop): its connection is no
            # tunnel, and the client is the winner's to keep.
            self._timer = None
            return
        left = self._moved + self._idle_timeout - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check_idle)
            return
        self._timer = None
        self.idled = True
        self.client.abort()  # (what either side still holds unsent is of no use now)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self._moved = self._loop.time()
        self.received += len(data)
        if not self.client.is_closing():
            self.client.write(data)

    def eof_received(self) -> bool:
        # The origin finished sending: the client is told (half-close), and the tunnel
        # stays open for what the client still sends, until it finishes too.
        self._origin_done = True
        # Over TLS (a WebSocket's wss origin) the origin's side closes at its end whatever
        # this returns (asyncio warns at True): no half-close, the client's side closes too.
        if self._client_done or self.client.is_closing() or not self.client.can_write_eof() \
                or (self.transport is not None
                    and self.transport.get_extra_info("ssl_object") is not None):
            self.client.close()
            return False
        self.client.write_eof()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.client.is_closing():
            self.client.close()
        if not self.closed.done():
            self.closed.set_result(None)

    # The origin's socket is full: stop reading the client until it drains.
    def pause_writing(self) -> None:
        self.client.pause_reading()

    def resume_writing(self) -> None:
        if not self.client.is_closing():
            self.client.resume_reading()

    # -- called by the client's side ---------------------------------------------------

    def send(self, data: bytes) -> None:
        self._moved = self._loop.time()
        self.sent += len(data)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def client_eof(self) -> bool:
        """The client finished sending; True while the tunnel stays open (half-close)."""
        self._client_done = True
        transport = self.transport
        if self._origin_done or transport is None or transport.is_closing() \
                or not transport.can_write_eof():
            self.client_gone()
            return False
        transport.write_eof()
        return True

    def client_gone(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:  # the client's socket is full
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
