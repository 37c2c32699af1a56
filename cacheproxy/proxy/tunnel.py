"""CONNECT without interception (RFC 9110 §9.3.6): after the 200, bytes go both ways
untouched until either side closes. Each side's reading pauses while the other side's
writing is paused, so a slow reader holds at most one socket buffer of the other's data;
a client that reads none of it for send_timeout is closed (as nginx closes an upgraded
connection at send_timeout), however many bytes it sends meanwhile; an origin that takes
none of what the client sent for send_timeout too (nginx's proxy_send_timeout)."""

from __future__ import annotations

import asyncio


class TunnelEnd(asyncio.Protocol):
    """The origin's side of a tunnel; `client` is the client's transport."""

    def __init__(self, client: asyncio.Transport, idle_timeout: float,
                 send_timeout: float | None = None,
                 below: asyncio.Transport | None = None) -> None:
        self.client = client
        # Under an intercepted TLS client (a wss:// WebSocket), the TCP transport TLS
        # writes into (proxy/under_tls.py): what waits there has not gone either.
        self._below = below
        self.transport: asyncio.Transport | None = None
        self.received = 0  # bytes from the origin, sent to the client
        # Of those, what the client never got: left in its transport when the tunnel
        # aborted it (a timeout); the line gives the bytes that went, as an HTTP
        # answer's cut short does (client_conn's _log_gone, nginx's $bytes_sent).
        self.dropped = 0
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
        # Bytes waiting for the client (its socket full): it has send_timeout to read
        # some of them. Its own bytes keep the idle timer off, so without this a client
        # that reads nothing held what was read for it (a read and a high-water mark,
        # some 300 KB) and both sockets for as long as it sent a byte now and then.
        self._send_timeout = send_timeout
        self._gone = 0  # bytes the client's transport had handed on at the last look
        self._stall_timer: asyncio.TimerHandle | None = None
        self.stalled_out = False  # closed for send_timeout
        # The client's side takes the tunnel (take) once its answer is written (a
        # CONNECT's 200, a WebSocket's 101): what the origin sends before (a server-first
        # protocol's greeting: SSH, SMTP) waits until then, its reading paused, or it
        # would reach the client before that answer. An attempt never taken (a Happy
        # Eyeballs loser, however it ends) leaves the client alone.
        self._taken = False
        self._early: list[bytes] = []
        self._client_full = False  # the client's transport paused writing (pause, resume)
        # The same for the origin's side: what the client sent waits for it (_watch_origin).
        self._drain_timer: asyncio.TimerHandle | None = None
        self._undrained = 0  # bytes the origin's transport had handed on at the last look
        self.origin_stalled = False  # closed for send_timeout, the origin reading nothing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._moved = self._loop.time()
        self._timer = self._loop.call_later(self._idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        if not self._taken or (self.transport is not None
                               and self.transport.get_protocol() is not self):
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
        self._abort_client()  # (what either side still holds unsent is of no use now)
        if self.transport is not None:
            self.transport.abort()

    def cut(self) -> None:
        """A graceful stop out of time: what the client's transport still holds never goes
        (the process ends), so it is dropped now and not counted as sent."""
        self.dropped = self._client_unsent()
        self.client.abort()

    def _abort_client(self) -> None:
        if not self.client.is_closing():
            self.dropped = self._client_unsent()
        self.client.abort()

    def stand_down(self) -> None:
        """A Happy Eyeballs loser (destinations._drop): its connection is no tunnel. Its
        timers go now, not at tunnel_idle_timeout, so the loop no longer holds it (and the
        client's transport, the winner's) once the tunnel ends."""
        for timer in (self._timer, self._stall_timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._stall_timer = self._drain_timer = None

    def data_received(self, data: bytes) -> None:
        self._moved = self._loop.time()
        self.received += len(data)
        if not self._taken:  # (before the client's answer: kept for take)
            self._early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self._to_client(data)

    def _to_client(self, data: bytes) -> None:
        client = self.client
        if not client.is_closing():
            client.write(data)
            # Some of it waits (the client's socket is full): send_timeout runs from now,
            # below the high-water mark too (nginx arms it on any write to the client that
            # did not complete), or a client reading nothing held up to 64 KB for good.
            if self._stall_timer is None and self._send_timeout is not None \
                    and self._client_unsent():
                self._watch_client(self._send_timeout)

    def eof_received(self) -> bool:
        # The origin finished sending: the client is told (half-close), and the tunnel
        # stays open for what the client still sends, until it finishes too.
        self._origin_done = True
        if not self._taken:
            return True  # (the client is told at take, after its answer)
        return self._origin_eof()

    def _origin_eof(self) -> bool:
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
        for timer in (self._timer, self._stall_timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._stall_timer = self._drain_timer = None
        if self._taken and not self.client.is_closing():
            self.client.close()  # (not taken: the client's side closes it, or the winner's)
        if not self.closed.done():
            self.closed.set_result(None)

    # The origin's socket is full: stop reading the client until it drains.
    def pause_writing(self) -> None:
        self.client.pause_reading()
        self._watch_origin()

    def resume_writing(self) -> None:
        if not self.client.is_closing():
            self.client.resume_reading()

    # -- called by the client's side ---------------------------------------------------

    def take(self) -> None:
        """The client's answer is written: the tunnel carries bytes both ways from now
        on, what the origin sent meanwhile first (and its end, if it came)."""
        self._taken = True
        early, self._early = self._early, []
        for data in early:
            self._to_client(data)
        transport = self.transport
        if self._origin_done and not self.closed.done():
            if not self._origin_eof() and transport is not None:
                transport.close()
        elif early and transport is not None and not transport.is_closing() \
                and not self._client_full:
            # (Early bytes past the client's high-water mark paused it, and the origin's
            # reading with it: resumed now, the origin's bytes would pile up for the
            # client without bound, its transport paused already. resume() does it.)
            transport.resume_reading()

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
        transport = self.transport
        if transport is None:
            return
        pending = self._origin_buffered()
        transport.close()  # (what the client sent last still goes first)
        if pending:
            self._watch_origin()

    def pause(self) -> None:  # the client's socket is full
        self._client_full = True
        if self.transport is not None:
            self.transport.pause_reading()
        if self._send_timeout is not None and self._stall_timer is None:
            self._watch_client(self._send_timeout)

    def resume(self) -> None:
        self._client_full = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _watch_client(self, send_timeout: float) -> None:
        """Bytes wait for the client: it has send_timeout to read some of them."""
        self._gone = self._handed_on()
        self._stall_timer = self._loop.call_later(send_timeout, self._check_stalled)

    def _handed_on(self) -> int:
        """Bytes for the client its transport has handed to the kernel (read, or on
        their way): what progress is measured by, as client_conn's send_timeout does."""
        return self.received - self._client_unsent()

    def _client_unsent(self) -> int:
        """Bytes for the client in its transport's buffer, and in the TCP one under it."""
        unsent = self.client.get_write_buffer_size()
        below = self._below
        return unsent if below is None else unsent + below.get_write_buffer_size()

    def _check_stalled(self) -> None:
        self._stall_timer = None
        if not self._client_unsent() or self._send_timeout is None \
                or self.transport is None or self.transport.get_protocol() is not self \
                or self.client.is_closing():
            return  # (it read all that waited, or the tunnel is ending)
        gone = self._handed_on()
        if gone > self._gone:  # it reads, slowly: send_timeout counts from now
            self._gone = gone
            self._stall_timer = self._loop.call_later(self._send_timeout,
                                                      self._check_stalled)
            return
        self.stalled_out = True
        self._abort_client()  # (what it did not read is dropped, as for an HTTP answer)
        self.transport.abort()

    def _watch_origin(self) -> None:
        """What the client sent waits for the origin (its socket full, or the client gone):
        the origin has send_timeout to take some of it each time, as the client has for
        its side. With the client's reading paused meanwhile, nothing else would end a
        tunnel whose origin reads nothing before the idle timeout (600 s), not even the
        client's leaving, which a paused read does not see (nginx: proxy_send_timeout)."""
        if self._send_timeout is not None and self._drain_timer is None:
            self._undrained = self._origin_took()
            self._drain_timer = self._loop.call_later(self._send_timeout,
                                                      self._check_drained)

    def _origin_buffered(self) -> int:
        if self.transport is None:
            return 0
        try:
            return self.transport.get_write_buffer_size()
        except AttributeError:  # (asyncio's TLS transport once closed twice: nothing left)
            return 0

    def _origin_took(self) -> int:
        return self.sent - self._origin_buffered()

    def _check_drained(self) -> None:
        self._drain_timer = None
        transport = self.transport
        if self._send_timeout is None or transport is None \
                or transport.get_protocol() is not self or not self._origin_buffered():
            return  # (it took all there was, or the tunnel is ending)
        took = self._origin_took()
        if took > self._undrained:  # it reads, slowly: send_timeout counts from now
            self._undrained = took
            self._drain_timer = self._loop.call_later(self._send_timeout,
                                                      self._check_drained)
            return
        self.origin_stalled = True
        self._abort_client()
        transport.abort()
