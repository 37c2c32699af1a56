"""A request as the lean data plane hands it to the proxy (ClientRequest), and what a
client connection needs of its listener (the Listener protocol; proxy/listener.py)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDictProxy

from cacheproxy.observe.observer import Observer
from cacheproxy.policies.forward import Allowed
from cacheproxy.proxy.handler import CacheProxy
from cacheproxy.proxy.quick import QuickHits
from cacheproxy.proxy.replay import ReplayBlocks


class Timeouts(Protocol):
    @property
    def header(self) -> float: ...
    @property
    def keepalive(self) -> float: ...
    @property
    def send(self) -> float: ...
    @property
    def body(self) -> float: ...


class Listener(Protocol):
    """What a connection needs of its listener (proxy/listener.py)."""

    loop: asyncio.AbstractEventLoop
    app: web.Application
    proxy: CacheProxy
    observer: Observer
    replays: ReplayBlocks
    quick: QuickHits
    gathered: list[Any]  # connections with writes to send at the iteration's end

    @property
    def timeouts(self) -> Timeouts: ...
    def send_gathered(self) -> None: ...
    def admit(self, conn: Any) -> bool: ...
    def forget(self, conn: Any) -> None: ...
    def is_control(self, msg: RawRequestMessage) -> bool: ...
    def remote(self, peername: Any) -> str | None: ...
    def record(self, request: ClientRequest, status: int, sent: int, started: float
               ) -> None: ...
    async def tls_context(self, host: str) -> ssl.SSLContext: ...


class ClientRequest:
    """A parsed request, with what the driver reads of it (the names of aiohttp's
    web.Request, so the proxy's code serves both) and per-request state by key."""

    __slots__ = ("_msg", "body_timeout", "content", "headers", "local_port", "method",
                 "raw_path", "remote", "scheme", "state", "tunnel", "version")

    def __init__(self, msg: RawRequestMessage, payload: StreamReader, remote: str | None,
                 scheme: str, local_port: int = 0, tunnel: Allowed | None = None) -> None:
        self._msg, self.content, self.remote, self.scheme = msg, payload, remote, scheme
        # Plain attributes, not properties: read many times per request.
        self.method: str = msg.method
        self.raw_path: str = msg.path
        self.headers: CIMultiDictProxy[str] = msg.headers
        self.version: Any = msg.version
        self.local_port = local_port
        self.tunnel = tunnel  # the origin of the intercepted CONNECT this came through
        # proxy.client_body_timeout as the connection had it (None: the proxy's own).
        self.body_timeout: float | None = None
        # Per-request state by key: request[key] reads and writes it; the quick path's
        # forward (CacheProxy.planned) writes its two keys here without a call each.
        self.state: dict[Any, Any] = {}

    @property
    def path(self) -> str:
        return self._msg.url.path

    @property
    def body_exists(self) -> bool:
        return self.content is not EMPTY_PAYLOAD

    def get(self, key: Any, default: Any = None) -> Any:
        return self.state.get(key, default)

    def __getitem__(self, key: Any) -> Any:
        return self.state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.state[key] = value
