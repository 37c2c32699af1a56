"""The proxy's listener on the lean data plane: the protocol factory asyncio serves it with
(a ClientConnection per client), the client-side limits, graceful shutdown, and the
runner that starts the aiohttp application (admin API, store, upstream pool) around it."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage

from cacheproxy.observe.observer import Observer
from cacheproxy.observe.outcome import OUTCOME, Outcome
from cacheproxy.proxy.client_conn import ClientConnection
from cacheproxy.proxy.client_request import ClientRequest
from cacheproxy.proxy.handler import CacheProxy
from cacheproxy.proxy.quick import QuickHits
from cacheproxy.proxy.replay import ReplayBlocks

log = logging.getLogger("cacheproxy")

# A graceful stop looks this often whether the answers written have left (shutdown).
DRAIN_LOOK = 0.05
# Connections closed at proxy.max_client_connections are said at most this often.
REFUSED_SAY_SECONDS = 60.0

# Set by make_app: what the listener serves with.
LEAN = web.AppKey("lean", "Plane")


@dataclass(frozen=True, slots=True)
class Plane:
    """The parts a listener needs, set on the application by make_app."""

    proxy: CacheProxy
    observer: Observer
    control_paths: tuple[str, ...]  # served by the aiohttp application; () with admin.listen
    metrics_path: str


@dataclass(frozen=True, slots=True)
class Timeouts:
    header: float
    keepalive: float
    send: float
    body: float


class Listener:
    def __init__(self, app: web.Application, loop: asyncio.AbstractEventLoop) -> None:
        plane = app[LEAN]
        self.app = app
        self.loop = loop
        self.proxy = plane.proxy
        self.observer = plane.observer
        self._control = plane.control_paths
        self._metrics = plane.metrics_path
        self.connections: set[ClientConnection] = set()
        self.replays = ReplayBlocks()
        self.quick = QuickHits(self.proxy, self.is_control)
        self.gathered: list[ClientConnection] = []  # connections with answers to send
        self._ca: Any = None  # forward.intercept_tls: the local CA, loaded on first use
        self._refused = 0  # connections closed at the limit since the last line saying so
        self._refused_said = -REFUSED_SAY_SECONDS
        self.refused_total = 0  # ... since start (/metrics: nginx's accepts - handled)
        self.observer.connections = self.connection_figures
        self.observer.sender = self  # (send_gathered settles what was recorded meanwhile)

    @property
    def timeouts(self) -> Timeouts:
        config = self.proxy.config.proxy  # read per connection: a reload applies to new ones
        # (send_timeout is restart-only, server.RESTART_ONLY: the exchange's, from the start)
        return Timeouts(config.client_header_timeout, config.keepalive_timeout,
                        self.proxy.exchange.send_timeout, config.client_body_timeout)

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    def send_gathered(self) -> None:
        """Send what the connections in gathered wrote in this loop iteration (called at
        its end: ClientConnection._write adds a connection, and schedules this once);
        then settle the request log's batch (Observer.sender: the requests recorded
        while gathered was not empty scheduled no settle of their own)."""
        gathered, self.gathered = self.gathered, []
        for conn in gathered:
            try:
                conn.flush_out()
            except Exception:  # a bug of ours loses that connection, not the others' answers
                log.exception("sending to client %s failed", conn.peername)
                conn.abort_unread()
        self.observer.settle()  # (after the sends: the answers go out first)

    def admit(self, conn: ClientConnection) -> bool:
        limit = self.proxy.config.proxy.max_client_connections
        if len(self.connections) >= limit:
            self._refused += 1
            self.refused_total += 1
            now = self.loop.time()
            if now - self._refused_said >= REFUSED_SAY_SECONDS:  # said, not for each one
                log.warning("%d client connection(s) closed as they arrived: %d are open, "
                            "the most proxy.max_client_connections allows", self._refused,
                            limit)
                self._refused, self._refused_said = 0, now
            return False
        self.connections.add(conn)
        return True

    def forget(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)

    def connection_figures(self) -> tuple[int, int, int]:
        """Client connections open now (tunnels and WebSockets too), the most
        proxy.max_client_connections allows, and those closed at it since start."""
        return (len(self.connections), self.proxy.config.proxy.max_client_connections,
                self.refused_total)

    def is_control(self, msg: RawRequestMessage) -> bool:
        if not self._control:
            return False
        path = msg.url.path
        return path.startswith(self._control) or path == self._metrics

    async def tls_context(self, host: str) -> ssl.SSLContext:
        """forward.intercept_tls: the server-side context for host, its certificate signed
        by the local CA (made in forward.ca_dir on first use; leaves cached there)."""
        if self._ca is None:
            from cacheproxy.tls.ca import LocalCA  # cryptography: only when intercepting
            directory = self.proxy.config.forward.ca_path(os.environ)
            self._ca = await asyncio.to_thread(LocalCA.load_or_create, directory)
        return self._ca.server_context(host)  # type: ignore[no-any-return]

    @staticmethod
    def remote(peername: Any) -> str | None:
        if isinstance(peername, (list, tuple)) and peername:
            return str(peername[0])
        return None

    def record(self, request: ClientRequest, status: int, sent: int, started: float) -> None:
        outcome = request.state.get(OUTCOME)  # (request.get(OUTCOME), without its call)
        if outcome is not None:
            outcome.bytes_sent = sent
            # (record measures from outcome.started when it has one, as the quick path's do)
            self.observer.record(request, status, outcome, 0.0 if outcome.started
                                 else time.perf_counter() - started)
        else:  # refused before the cache (by the parser, the Expect rule): an error,
            # with every route's strip_params redacted (none was chosen: handler.py's own
            # refusals before routing do the same), in its path parameters and Referer
            outcome = Outcome(status="ERROR", bytes_sent=sent, secrets=self.proxy.plans.secrets)
            self.observer.record(request, status, outcome, time.perf_counter() - started)

    # -- what aiohttp's runner calls on its server -------------------------------------

    def pre_shutdown(self) -> None:
        for conn in list(self.connections):
            conn.close_idle()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Requests being answered get timeout seconds to finish; then every connection
        is closed."""
        # In rounds: a quick forward's end may start a task for the requests pipelined
        # behind it, and that task a quick forward.
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while busy := [t for conn in self.connections
                       if (t := conn.busy) is not None and not t.done()]:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                break
            await asyncio.wait(busy, timeout=left)
        # Answers written whole that have not left their transports (a big hit to a slow
        # client, its ciphertext under TLS too) get what is left of timeout to go, as
        # nginx's workers finish sending before they exit: the loop's end dropped them,
        # and a download in progress was cut at the stop however near its end.
        while any(conn.busy is None and conn.unsent for conn in self.connections):
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                break
            await asyncio.sleep(DRAIN_LOOK if left is None else min(DRAIN_LOOK, left))
        stopped = [t for conn in self.connections if (t := conn.busy) is not None]
        for conn in list(self.connections):
            conn.stop()  # (first: its 503 goes out before the close)
            conn.close()
        self.connections.clear()
        if stopped:  # what they were doing ends now, its line written (a tunnel's too),
            await asyncio.wait(stopped, timeout=1.0)  # before the application's cleanup


class LeanRunner(web.AppRunner):
    """web.AppRunner whose server is the lean Listener: the application starts and stops
    as with aiohttp (store, upstream pool, admin API), and sites (TCPSite, SockSite) serve
    with the Listener as their protocol factory."""

    __slots__ = ()

    async def _make_server(self) -> Any:
        loop = asyncio.get_running_loop()
        app = self._app
        app._set_loop(loop)
        app.on_startup.freeze()
        await app.startup()
        app.freeze()
        return Listener(app, loop)
