"""CONNECT on a client connection (RFC 9110 §9.3.6), forward mode: a byte tunnel to the
origin ([forward] connect_ports, a 508 for one that reaches this proxy itself), or with
forward.intercept_tls, TLS ended here with the local CA's certificate for the host and the
requests inside served and cached as https ones (a client that speaks plain HTTP in it is
served as http, one that speaks neither gets the byte tunnel: told from its first bytes).
The same tunnel carries a WebSocket once its origin answered 101. Also which
absolute-form requests are this proxy's own (its admin paths). A mixin of
ClientConnection (proxy/client_conn.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict

from cacheproxy.http.first_bytes import PEEK_BYTES, Spoken, spoken
from cacheproxy.observe.outcome import OUTCOME, Outcome
from cacheproxy.policies.forward import (
    Allowed,
    Refused,
    connect_decision,
    names_own_listener,
    names_this_server,
)
from cacheproxy.proxy.client_request import ClientRequest, Listener
from cacheproxy.proxy.destinations import address_refused, connect_first
from cacheproxy.proxy.downstream import Answer
from cacheproxy.proxy.peek import peek
from cacheproxy.proxy.respond import error_response
from cacheproxy.proxy.tunnel import TunnelEnd
from cacheproxy.proxy.under_tls import watch_under_tls

log = logging.getLogger("cacheproxy")
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"


class ConnectMethod:
    """The CONNECT part of ClientConnection; the attributes are the connection's."""

    __slots__ = ()

    listener: Listener
    transport: asyncio.Transport | None
    _remote: str | None
    _port: int
    _loop: asyncio.AbstractEventLoop
    _tail: bytes
    _client_eof: bool
    _buffer_paused: bool
    _tunnel: TunnelEnd | None
    _below: asyncio.Transport | None
    _held_tls: bool
    _origin: Allowed | None
    _origin_tls: bool
    _request: ClientRequest | None
    _keep_alive: bool
    _status: int
    _sent: int
    _started: bool
    _upgraded: bool
    _closing: bool
    _stopping: bool
    _parser: Any
    _timeouts: Any

    if TYPE_CHECKING:  # the connection's own, declared for the type checker only
        def close(self) -> None: ...
        def _disarm(self) -> None: ...
        def _arm(self, seconds: float, head: bool) -> None: ...
        def _make_parser(self) -> Any: ...
        def _send_answer(self, request: ClientRequest, answer: Answer) -> None: ...
        def _write_head(self, version: Any, status: int, reason: str | None,
                        headers: CIMultiDict[str], body: bytes = b"") -> None: ...
        def flush_out(self) -> None: ...
        def _pause_transport_reading(self) -> None: ...
        def _resume_transport_reading(self) -> None: ...
        def drained_below(self) -> None: ...
        def paused_below(self) -> None: ...

    def _for_us(self, msg: RawRequestMessage) -> bool:
        """In forward mode an absolute-form request is for the host it names: the admin
        paths are this proxy's only when that host is this proxy."""
        proxy = self.listener.proxy
        if msg.path.startswith("/") or not proxy.config.forward.enabled:
            return True
        url = msg.url
        host = url.raw_host or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        return names_own_listener(proxy.forward_access(self._port), host, port)

    async def _connect(self, msg: RawRequestMessage, started: float) -> bool:
        """CONNECT (RFC 9110 §9.3.6), forward mode: a tunnel to the origin, or with
        forward.intercept_tls, TLS ended here with the local CA's certificate for the host
        and the requests inside served (and cached) as https ones."""
        request = ClientRequest(msg, EMPTY_PAYLOAD, self._remote, "http", self._port)
        outcome = request[OUTCOME] = Outcome(started=started, status="TUNNEL")
        outcome.target = outcome.host = msg.path
        self._request, self._keep_alive, self._started = request, False, False
        proxy = self.listener.proxy
        forward = proxy.config.forward
        if not forward.enabled:  # no tunnel: the proxy's own refusal, as its 501 is
            outcome.status = "ERROR"
            return self._refuse_connect(request, outcome, 405,
                                        "CONNECT needs forward mode ([forward] enabled)")
        access = proxy.forward_access(self._port)
        d = connect_decision(access, msg.path)
        if isinstance(d, Refused) and d.status == 508 \
                and names_this_server(access, "http", msg.path):
            return self._serve_inside(request, outcome)
        if isinstance(d, Refused):
            outcome.status = "DENIED"
            outcome.policy = f"forward: {d.reason}"
            return self._refuse_connect(request, outcome, d.status, d.reason)
        # As reached (the Hosts table's row); `path` keeps what the client wrote.
        outcome.host = f"[{d.host}]:{d.port}" if ":" in d.host else f"{d.host}:{d.port}"
        if forward.intercept_tls:
            return await self._intercept(request, outcome, d)
        end = await self._reach(request, outcome, d, answered=False)
        if end is None:
            return False
        self._status = 200
        self._request = None  # its line is the tunnel's own (below), at a stop too
        self.transport.write(ESTABLISHED)  # type: ignore[union-attr]  # (_reach: still there)
        await self._carry(request, outcome, end)
        return False

    async def _reach(self, request: ClientRequest, outcome: Outcome, d: Allowed,
                     answered: bool) -> TunnelEnd | None:
        """The connection to d for a tunnel (None: refused or failed, answered and logged).
        answered: its 200 went out already (an intercepted CONNECT carrying neither TLS nor
        HTTP): a failure can only close the connection, its line saying why."""
        proxy = self.listener.proxy
        forward = proxy.config.forward
        client = self.transport
        assert client is not None
        access = proxy.forward_access(self._port)
        try:
            async with asyncio.timeout(proxy.config.proxy.connect_timeout):
                # Vetted by address (deny_hosts, this proxy's own listeners: a loop), then
                # connected to by those addresses, not by the name looked up again.
                addresses = await proxy.lookups.addresses(d.host, d.port)
                for address in addresses:
                    refused = address_refused(access, d.host, address, d.port)
                    if refused is not None:
                        outcome.status = "DENIED"
                        outcome.policy = f"forward: {refused.reason}"
                        self._unreached(request, outcome, refused.status, refused.reason,
                                        answered)
                        return None
                _, end = await connect_first(
                    self._loop, lambda: TunnelEnd(client, forward.tunnel_idle_timeout,
                                                   self._timeouts.send, self._below),
                    addresses, d.port)
        except (OSError, TimeoutError) as exc:
            status = 504 if isinstance(exc, TimeoutError) else 502
            reason = "timed out" if isinstance(exc, TimeoutError) else \
                (exc.strerror or type(exc).__name__)
            if self.transport is None:  # the client left before any answer (nginx's 499)
                log.info("CONNECT to %s failed after its client left: %s", outcome.target,
                         reason)
                self.listener.record(request, 499, 0, outcome.started)
                self._request = None
                return None
            log.warning("CONNECT to %s failed: %s; answered %s", outcome.target, reason,
                        status)
            outcome.status = "ERROR"
            self._unreached(request, outcome, status, f"CONNECT failed: {reason}", answered)
            return None
        if self.transport is None:  # the client left meanwhile (nginx's 499)
            end.client_gone()
            self.listener.record(request, 499, 0, outcome.started)
            self._request = None
            return None
        return end

    def _unreached(self, request: ClientRequest, outcome: Outcome, status: int,
                   reason: str, answered: bool) -> None:
        if not answered:
            self._refuse_connect(request, outcome, status, reason)
            return
        log.info("CONNECT to %s closed after its 200: %s", outcome.target, reason)
        self.listener.record(request, status, 0, outcome.started)
        self._request = None
        self.close()

    async def _carry(self, request: ClientRequest, outcome: Outcome, end: TunnelEnd
                     ) -> None:
        """Bytes both ways through end until either side closes; the tunnel's line then."""
        self._splice(end)
        try:
            await end.closed
        except asyncio.CancelledError:  # a stop out of time (stop()): the line gives what
            end.cut()  # went, not what the client's transport held when the process ended
            raise
        finally:  # a stop out of time cancels the wait: the tunnel still gets its line
            end.client_gone()
            outcome.bytes_in = end.sent
            self.listener.record(request, 200, end.received - end.dropped, outcome.started)
        if end.idled:
            log.info("CONNECT tunnel to %s closed: no byte either way for %ss "
                     "(forward.tunnel_idle_timeout)", outcome.target,
                     self.listener.proxy.config.forward.tunnel_idle_timeout)
        self._stalled_out(end, f"CONNECT tunnel to {outcome.target}")
        self.close()

    def _stalled_out(self, end: TunnelEnd, what: str) -> None:
        if end.stalled_out:  # (proxy.send_timeout, as for an HTTP answer's client)
            log.warning("client %s read nothing for %gs: %s closed", self._remote,
                        self._timeouts.send, what)
        elif end.origin_stalled:  # (the same for the origin: nginx's proxy_send_timeout)
            log.warning("the origin read nothing for %gs: %s closed", self._timeouts.send,
                        what)

    def _splice(self, end: TunnelEnd) -> None:
        """The client's bytes go to end from now on, those sent early first (and the
        origin's to the client, after the answer written before)."""
        self._tunnel = end
        # The connection's own holds on the client's reading end here (MAX_TAIL sent
        # early, _keep_early; a pause_writing before the tunnel), whatever its writing:
        # from now on a client slow to read pauses the origin's reading (TunnelEnd.pause),
        # and resume_writing resumes that one, not the client's. Left to it, a client
        # whose writing take() paused (the origin's early bytes) was never read again.
        # (Before the tail goes: the origin's full socket may pause the client again.)
        self._buffer_paused = False
        self._resume_transport_reading()
        end.take()
        if self._tail:
            end.send(self._tail)
            self._tail = b""
        if self._client_eof:  # what it sent before the answer was all: half-close onwards
            end.client_eof()
        self._disarm()

    # -- WebSocket (proxy/driver.py's upgrade) -----------------------------------------

    def switchable(self) -> bool:
        """The request being answered may become a WebSocket here: the parser stopped
        after it (aiohttp's stops at an `Upgrade: websocket` request, keeping what follows
        for a tunnel), and the connection is not being closed or stopped."""
        return self._upgraded and not self._closing and not self._stopping \
            and self._tunnel is None and self.transport is not None

    async def switch(self, reason: str, headers: CIMultiDict[str],
                     origin: tuple[asyncio.Transport, bytes], idle_timeout: float) -> None:
        """The origin's 101 goes to the client (RFC 9110 §15.2.2: with the upgrade
        connection option and Upgrade), then bytes go both ways untouched as through a
        CONNECT tunnel, until either side closes or none moves for idle_timeout
        (proxy.websocket_idle_timeout). One log line, written at the end: 101, the bytes
        each way, the time the WebSocket lasted."""
        request = self._request
        transport, early = origin
        client = self.transport
        if client is None or request is None:  # the client left meanwhile (nginx's 499;
            transport.close()  # logged then, _left_unanswered, or by the driver's caller)
            self._status = 499
            return
        outcome = request[OUTCOME]
        headers.popall("Connection", None)
        headers.popall("Upgrade", None)
        headers.popall("Content-Length", None)  # (RFC 9110 §8.6: none in a 1xx)
        headers["Upgrade"] = "websocket"
        headers["Connection"] = "upgrade"
        self._started = True
        self._write_head(request.version, 101, reason, headers)
        self.flush_out()  # (the tunnel writes to the transport itself from now on)
        end = TunnelEnd(client, idle_timeout, self._timeouts.send, self._below)
        transport.set_protocol(end)
        end.connection_made(transport)
        # The tunnel first, then the origin's bytes sent with its 101: a client slow to
        # take them pauses the origin's reading (the tunnel's flow control), not its own
        # for good (the connection's, which nothing resumes once it is a tunnel).
        self._splice(end)
        transport.resume_reading()
        if early:
            end.data_received(early)
        if self._held_tls:  # the client's socket was full already: the origin waits
            end.pause()  # (TLS's own pause: it resumes end. The TCP transport's under it
            # resumes nothing once end is TLS's protocol: end watches it itself.)
        self._request = None  # its line is the WebSocket's own (below), at a stop too
        try:
            await end.closed
        except asyncio.CancelledError:  # a stop out of time: as a tunnel's (_carry)
            end.cut()
            raise
        finally:  # a stop out of time cancels the wait: the line is still written, once
            end.client_gone()
            outcome.bytes_in = end.sent
            self.listener.record(request, 101, end.received - end.dropped,
                                 outcome.started)
        if end.idled:
            log.info("WebSocket to %s closed: no byte either way for %ss "
                     "(proxy.websocket_idle_timeout)", request.path, idle_timeout)
        self._stalled_out(end, f"WebSocket to {request.path}")

    def _refuse_connect(self, request: ClientRequest, outcome: Outcome, status: int,
                        reason: str) -> bool:
        answer = error_response(status, reason, outcome, self.listener.proxy.cache_name,
                                self.listener.proxy.local_via)
        if status == 405:  # RFC 9110 §15.5.6, §10.2.1: empty, disabled by configuration
            answer.headers["Allow"] = ""
        self._send_answer(request, answer)
        self.listener.record(request, status, self._sent, outcome.started)
        self._request = None
        self.close()
        return False

    def _serve_inside(self, request: ClientRequest, outcome: Outcome) -> bool:
        """CONNECT naming this listener itself: how a browser using this proxy opens
        ws://127.0.0.1:PORT/ (RFC 6455 §4.1) to the site behind it. Nothing to reach, no
        loop: what the client sends after the 200 is for this server, read by a new
        parser and served as any connection's requests are (a WebSocket's upgrade too)."""
        transport = self.transport
        if transport is None or self._tail or self._client_eof:  # (as _intercept's)
            outcome.status = "ERROR"
            return self._refuse_connect(request, outcome, 400, "bytes came before the 200 "
                                        "of a CONNECT to this proxy itself")
        transport.write(ESTABLISHED)
        outcome.status, outcome.policy, self._status = "TUNNEL", "this proxy itself", 200
        self.listener.record(request, 200, 0, outcome.started)
        self._request = None
        self._upgraded = self._closing = False
        self._parser = self._make_parser()
        self._resume_transport_reading()
        self._arm(self._timeouts.header, head=True)
        return True

    async def _intercept(self, request: ClientRequest, outcome: Outcome, d: Allowed
                         ) -> bool:
        """After the 200, what the client speaks decides (_first_spoken): TLS with it, as
        d.host, then HTTP inside (served by this connection, as https); plain HTTP served
        as it is (as http); anything else tunnelled to d untouched."""
        try:
            context = await self.listener.tls_context(d.host)
        except Exception as exc:  # the CA cannot be made or read (forward.ca_dir)
            log.error("CONNECT to %s: no certificate for interception: %s", d.host, exc)
            outcome.status = "ERROR"
            return self._refuse_connect(request, outcome, 502, "no certificate for the host")
        transport = self.transport
        if transport is None:  # the client left
            outcome.status = "ERROR"
            self.listener.record(request, 499, 0, outcome.started)
            self.close()
            return False
        if self._tail or self._client_eof:  # TLS bytes sent before the 200 (not ours to
            outcome.status = "ERROR"  # read), or its end: no handshake can follow; told so
            return self._refuse_connect(request, outcome, 400, "bytes came before the 200 "
                                        "of an intercepted CONNECT")
        transport.write(ESTABLISHED)
        outcome.status, self._status = "TUNNEL", 200
        self._request = None  # its line is written below, at a stop too
        try:
            spoken = await self._first_spoken(transport)
        except asyncio.CancelledError:  # a stop out of time
            self.listener.record(request, 200, 0, outcome.started)
            raise
        if spoken is None or self.transport is None:
            # Nothing within client_header_timeout, or the client left.
            self.listener.record(request, 200, 0, outcome.started)
            self.close()
            return False
        if spoken == "other":
            return await self._tunnel_as_is(request, outcome, d)
        outcome.policy = "intercepted"
        self.listener.record(request, 200, 0, outcome.started)
        # A new stream: HTTP from its first byte, parsed as it arrives (even while
        # start_tls returns); answered once the TLS transport is in place.
        self._origin, self._origin_tls = d, spoken == "tls"
        self._upgraded = self._closing = False
        self._parser = self._make_parser()
        if spoken == "http":  # requests keyed http://host:port/..., as forward ones are
            self._resume_transport_reading()
            return True
        try:
            tls = await self._loop.start_tls(transport, self, context, server_side=True,
                                             ssl_handshake_timeout=30)
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.info("CONNECT to %s: the client's TLS handshake failed: %s", d.host, exc)
            self.close()
            # start_tls closed the socket under its own TLS protocol: this one is never
            # told (connection_lost), and would stay among the listener's connections
            # (proxy.max_client_connections) with all it holds, for good.
            self.connection_lost(exc)
            return False
        if tls is None:
            self.connection_lost(None)  # (the same: closed under start_tls)
            return False
        self.transport = tls
        # What leaves the TCP transport under TLS is what went (a big hit's deferred line,
        # client_conn's _log_when_out), as nginx's $bytes_sent over TLS counts.
        if watch_under_tls(transport, self.drained_below, self.paused_below):
            self._below = transport
        self._arm(self._timeouts.header, head=True)
        return True

    async def _tunnel_as_is(self, request: ClientRequest, outcome: Outcome, d: Allowed
                            ) -> bool:
        """Neither TLS nor HTTP in an intercepted tunnel (SSH, a database's protocol to a
        port in connect_ports): its bytes go to the origin untouched, as without
        interception (Squid's `on_unsupported_protocol tunnel`), vetted by address
        first as any CONNECT is."""
        try:
            end = await self._reach(request, outcome, d, answered=True)
        except asyncio.CancelledError:  # a stop out of time
            self.listener.record(request, 200, 0, outcome.started)
            raise
        if end is not None:
            self._resume_transport_reading()  # (the bytes peeked go first)
            await self._carry(request, outcome, end)
        return False

    async def _first_spoken(self, transport: asyncio.Transport) -> Spoken | None:
        """What the client speaks in its intercepted tunnel, from its first bytes, left
        unread (proxy/peek.py); None when it sent too little to tell within
        client_header_timeout, or left. Its reading stays paused: the caller resumes it,
        or start_tls does.

        Plain HTTP is served here as forward-mode http requests are (policies apply, and
        the cache, under http://host:port/ keys; a ws:// WebSocket, which browsers open
        through a CONNECT, goes through the proxy's upgrade path as a wss:// one does
        through TLS); bytes that are neither TLS nor an HTTP request line are tunnelled
        raw to the origin: another protocol to an allowed port still works, as through a
        CONNECT without interception."""
        if transport.get_extra_info("sslcontext") is not None:
            return "tls"  # (a CONNECT inside an intercepted tunnel: its bytes are TLS's)
        self._pause_transport_reading()
        head = await peek(transport, PEEK_BYTES, lambda b: spoken(b) is not None,
                          self._timeouts.header)
        return spoken(head)
