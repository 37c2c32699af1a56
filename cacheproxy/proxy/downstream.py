"""The client side as the driver sees it, whatever serves the connection.

A request the proxy handles is a `ClientMessage` (the lean data plane's ClientRequest,
or aiohttp's web.Request), and what goes back is either an `Answer`, a whole response
the proxy made (a replay from storage, an error, a policy's refusal), or a stream sent
through the request's `Downstream` (a relayed upstream response)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.http.stored import CachedResponse


class Body(Protocol):
    """A request body being received (aiohttp's StreamReader fits)."""

    def iter_any(self) -> AsyncIterator[bytes]: ...
    async def readany(self) -> bytes: ...
    async def read(self, n: int = -1) -> bytes: ...


class ClientBodyError(Exception):
    """The client's request body stopped before its end: it stalled for
    proxy.client_body_timeout (status 408, RFC 9110 §15.5.9), its framing broke (400: a
    chunk size that is no number, say), or the client left (499, nginx's "client closed
    request"). The client's failure, never the origin's: no
    502 or 504 blames the upstream for it, and no upstream connection that carried part
    of the body is reused (the origin holds an incomplete message)."""

    def __init__(self, status: int, reason: str, timeout: float = 0.0) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.timeout = timeout  # (408) the client_body_timeout that passed


class ClientGone(ConnectionResetError):
    """The client's connection was lost while its answer waited for the origin's next
    bytes (Downstream.watch_gone)."""


class Version(Protocol):
    @property
    def major(self) -> int: ...
    @property
    def minor(self) -> int: ...


class ClientMessage(Protocol):
    """What the proxy reads of a client's request. Keys (PLAN, OUTCOME, ...) are
    per-request state, as aiohttp's web.Request holds them."""

    @property
    def method(self) -> str: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def version(self) -> Any: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def scheme(self) -> str: ...
    @property
    def body_exists(self) -> bool: ...
    @property
    def content(self) -> Any: ...
    def get(self, key: Any, default: Any = None) -> Any: ...
    def __getitem__(self, key: Any) -> Any: ...
    def __setitem__(self, key: Any, value: Any) -> None: ...


class StatefulMessage(ClientMessage, Protocol):
    """A connection's request (proxy/client_request.py's ClientRequest): its per-request
    state a dict the quick path writes without a Python-level __setitem__ call."""

    state: dict[Any, Any]


class Downstream(Protocol):
    """A response streamed to the client. start() and write() raise ConnectionError when
    the client is gone; write() raises TimeoutError when the client read nothing for
    proxy.send_timeout (the connection is then closed)."""

    async def start(self, status: int, reason: str | None, headers: CIMultiDict[str],
                    head_only: bool) -> None: ...
    async def write(self, data: bytes) -> None: ...
    async def finish(self) -> None: ...
    def interim(self, status: int, reason: str, fields: list[tuple[str, str]]) -> None:
        """A 1xx the origin sent before its answer (RFC 9110 §15.2: forwarded)."""
    def watch_gone(self, gone: Callable[[], None] | None) -> None:
        """Call gone() when the client's connection is lost (None: no more), at once when
        it is lost already, so that a relay waiting on a quiet origin (an event stream, a
        long poll) stops at once, not at the origin's next byte or read_timeout, as nginx
        does."""
    @property
    def left(self) -> bool:
        """The client's connection is lost: nothing written reaches it (a failure's log
        line must not say it was answered)."""
    def abort(self) -> None:
        """End the response abnormally (close the connection): a body that broke off
        must not look whole to the client (RFC 9112 §8). A body delimited by the close
        (RFC 9112 §6.3) ends with a reset (reset()): a FIN would look like its end."""


def reset(transport: asyncio.BaseTransport) -> None:
    """Close transport with a reset (RST), not a FIN, dropping what it holds unsent: for a
    response whose body is delimited by the close (an HTTP/1.0 client, no Content-Length,
    RFC 9112 §6.3), the one way to tell the client the message is incomplete (§8).
    SO_LINGER 0 first: uvloop's abort() alone closes with a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):  # (gone, or not TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Replay(NamedTuple):
    """A stored response replayed whole: its stored fields (the same block for every
    request, made by block() when a writer needs them as fields) and the fields written
    fresh for this one (Age, Via, Cache-Status, X-Cache). The lean plane sends the stored
    part as bytes it encoded once (proxy/replay.py) and never asks for the block. (A
    NamedTuple: every replay that is not a quick hit, a revalidation's among them, makes
    one; a frozen dataclass's __init__ cost some 5,000 instructions more.)"""

    entry: CachedResponse
    block: Callable[[CachedResponse], CIMultiDictProxy[str]]
    fresh: tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Answer:
    """A whole response the proxy made. body is not sent for HEAD, 1xx, 204 and 304;
    a HEAD answer keeps the Content-Length its headers give (the GET's). With replay,
    headers stay empty until `fields()` makes them."""

    status: int
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes = b""
    reason: str | None = None
    replay: Replay | None = None

    def fields(self) -> CIMultiDict[str]:
        """The whole header section (a replay's stored block and fresh fields joined)."""
        replay = self.replay
        if replay is not None:
            self.replay = None
            self.headers = CIMultiDict(replay.block(replay.entry))
            self.headers.extend(replay.fresh)
        return self.headers


def replayed(entry: CachedResponse, block: Callable[[CachedResponse], CIMultiDictProxy[str]],
             fresh: tuple[tuple[str, str], ...]) -> Answer:
    """Answer(entry.status, body=entry.body, replay=Replay(entry, block, fresh)), made
    without the dataclass's and the NamedTuple's Python-level __init__ and __new__ (a
    revalidation's reply makes one per request: some 5,000 instructions fewer)."""
    answer = _new_answer(Answer)
    answer.status = entry.status
    answer.headers = CIMultiDict()
    answer.body = entry.body
    answer.reason = None
    answer.replay = _made(Replay, (entry, block, fresh))
    return answer


_new_answer = object.__new__
_made = tuple.__new__
assert len(Replay._fields) == 3  # (replayed gives each by position)


def text_answer(status: int, text: str, headers: CIMultiDict[str] | None = None) -> Answer:
    headers = CIMultiDict() if headers is None else headers
    headers["Content-Type"] = "text/plain; charset=utf-8"
    return Answer(status, headers, text.encode())


def local_port(request: ClientMessage) -> int:
    """The port the request came in on (the listener's, as bound)."""
    port = getattr(request, "local_port", None)
    if port is None:  # aiohttp's web.Request
        transport = getattr(request, "transport", None)
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        port = sockname[1] if isinstance(sockname, (list, tuple)) and len(sockname) > 1 else 0
    return int(port)
