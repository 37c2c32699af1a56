"""One client connection on the lean data plane: an asyncio Protocol that parses requests
with llhttp (aiohttp's C parser, behind server_protocol's fallback for any method token),
hands each to the proxy in order, and writes the answers itself.

Why not aiohttp.web: per request it builds a web.Request, a StreamResponse, runs signals
and the router, and serializes the head field by field; the proxy needs none of it.
Requests for the control plane (admin API, /metrics, health checks, anything under
admin.prefix) are still handed to the aiohttp application, as a web.Request made from
the same parsed message (aiohttp's own Application._make_request and _handle).

Timeouts, as nginx names them (RFC 9112 §9.5 lets a server close an idle connection):
proxy.client_header_timeout bounds the whole request head, from its first byte (or the
connection's start); proxy.keepalive_timeout bounds the idle time between requests;
proxy.send_timeout the time a client may read nothing of a response (in write());
proxy.client_body_timeout the time a client may send nothing of a request body it started
(each read of it, in exchange._timed; then 408, _body_failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import weakref
from collections import deque
from collections.abc import Callable, Container
from email.utils import formatdate
from functools import partial
from time import perf_counter
from typing import Any

from aiohttp import hdrs, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, LineTooLong
from aiohttp.http_parser import HttpRequestParser, HttpRequestParserPy, RawRequestMessage
from aiohttp.http_writer import HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import ERROR, RequestPayloadError
from multidict import CIMultiDict

from cacheproxy.http.fields import connection_options, end_to_end
from cacheproxy.http.stored import CachedResponse
from cacheproxy.observe.outcome import OUTCOME, Outcome
from cacheproxy.policies.forward import Allowed
from cacheproxy.proxy.client_request import ClientRequest, Listener
from cacheproxy.proxy.connect import ConnectMethod
from cacheproxy.proxy.downstream import Answer, ClientBodyError, reset
from cacheproxy.proxy.handler import body_failed
from cacheproxy.proxy.policy_steps import appended_fields, outbound_fields
from cacheproxy.proxy.quick import Plain
from cacheproxy.proxy.quick_forward import QuickForward
from cacheproxy.proxy.respond import fresh_fields
from cacheproxy.proxy.routed import Planned
from cacheproxy.proxy.routing import PLAN, RoutePlan
from cacheproxy.proxy.server_protocol import _FallbackParser, _StrictPythonParser, head_memo
from cacheproxy.proxy.tls_slices import TLS_SLICE, Slices
from cacheproxy.proxy.tunnel import TunnelEnd
from cacheproxy.proxy.upstream import UpstreamError
from cacheproxy.proxy.wire import REASONS, Http11Writer, encode_head, encode_lines

log = logging.getLogger("cacheproxy")

MAX_PIPELINED = 32  # parsed requests waiting their turn; then reading pauses
MAX_TAIL = 64 * 1024  # CONNECT bytes before its 200: past this, the client is not read
GATHER_BYTES = 64 * 1024  # bytes held for the iteration's end, at most, per client
# An answer's body over this still in the transport's buffer when the answer is done (a
# large hit is handed over whole) has its line written once it has gone out or the client
# left, with the bytes that went (nginx's $body_bytes_sent): a download abandoned after
# 100 KB is not logged, nor counted as bytes from the cache, as its whole size. Smaller
# ones are logged at once (the socket's buffers take them).
LOG_WHEN_OUT_BYTES = 256 * 1024
UNLOGGED_CHECK_SECONDS = 0.25  # how often the bytes gone out of such an answer are looked at
LINGER_SECONDS = 10.0  # an unread request body is read and dropped this long (aiohttp's)
# A connection closed while its client may still be sending (a request body not read to
# its end) is half-closed, and what comes is read and dropped this long at most (nginx's
# lingering_timeout): closed with bytes unread, it would send a reset, which may make the
# client drop the answer before reading it (RFC 9112 §9.6). Plain TCP only: a TLS
# transport cannot half-close here, and closes at once.
CLOSE_LINGER_SECONDS = 5.0
# The largest upstream head whose field lines a connection keeps for its next request
# (_upstream_head): a few times a browser's usual one (about 1 KB).
KEPT_HEAD_MAX = 8192
_NO_BODY = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Date:
    """The Date field (RFC 9110 §6.6.1), formatted once a second."""

    second = -1
    value = ""

    @classmethod
    def now(cls) -> str:
        t = int(time.time())
        if t != cls.second:
            cls.second, cls.value = t, formatdate(t, usegmt=True)
        return cls.value


# Loop iterations a lingering read waits for a cancelled upload to leave the body's reader
# (_linger): one is enough for a task cancelled in the iteration before.
_MAX_YIELDS = 8
# send_stored's last head: (the entry, weakly; what else it was made from; the whole head;
# its Cache-Status member). One, of up to KEPT_HEAD_MAX bytes.
_last_stored: tuple[Callable[[], CachedResponse | None], tuple[object, ...], bytes, str] = (
    lambda: None, (), b"", "")
# _replay_head's last fresh lines, Connection and their encoded bytes.
_last_fresh: tuple[tuple[tuple[str, str], ...], str | None, bytes] = ((("", ""),), None, b"")
# Bytes of a request head kept to find where a line too long began: the parser stops at
# 8,190 bytes of a line, so that line began at most that far back, plus the lines before.
_HEAD_WINDOW = 64 * 1024
# Most bytes of one request head, request line included (Squid's request_header_max_size;
# nginx's large_client_header_buffers 4 x 8k, Varnish's http_req_size 32k): aiohttp's parsers
# bound each field (8,190 bytes) and their number, so about 1 MB per connection otherwise.
# RFC 9110 §5.4: a server may refuse a larger section (431, RFC 6585 §5).
MAX_HEAD_BYTES = 64 * 1024
_REQUEST_LINE_START = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ ")


def _plain_line(record_hit: Callable[..., None], msg: Any, remote: str | None, route: Any,
                status: int, found: Plain, member: str, started: float, *, sent: int
                ) -> None:
    """A plain quick hit's line, written once its body went out (_log_when_out)."""
    record_hit(msg, remote, route.authority, route.logged, route.route_name, route.secrets,
               status, sent, found.age, found.ttl, member, started)


def _too_long(exc: LineTooLong) -> int:
    """RFC 9112 §3: a request-target longer than the server parses MUST get a 414; a
    header field too large gets 431 (RFC 6585 §5), where nginx answers 414 and 400.

    Which line it was: aiohttp names the first 100 bytes of the line (the Python parser)
    or of the target, field name or value (llhttp), not which one; those bytes are found
    in what was read of the head (data_received keeps it), and the line is the request
    line when nothing but a method and a space is before them on their line (a field
    line has its name and a colon there)."""
    named = exc.args[0] if exc.args and isinstance(exc.args[0], bytes | bytearray) else b""
    named = bytes(named).removesuffix(b"...")[:48]
    # (A head refused behind whole requests of the same read, handed back among them by
    # the parser, carries its own bytes from its first: its head, server_protocol.)
    window: bytes = getattr(exc, "window", None) or getattr(exc, "head", None) or b""
    at = window.rfind(named) if named else -1
    if at < 0:
        return 431
    start = window.rfind(b"\n", 0, at) + 1
    before = window[start:at]
    if before == b"":  # the Python parser names the whole line
        return 414 if _REQUEST_LINE_START.match(named) else 431
    return 414 if _REQUEST_LINE_START.fullmatch(before) else 431


# A request line as the log shows a refused head's (RFC 9112 §3; leading empty lines are
# ignored, §2.2).
_REQUEST_LINE = re.compile(
    rb"[\r\n]*([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\r?\n")
# A head refused before its request line was read whole: "-" for each (nginx's "-"),
# protocol included (observer: HTTP/0.0 is logged as "-").
_UNREAD = ERROR._replace(method="-", path="-", version=HttpVersion(0, 0))


def _refused_request(head: bytes | None) -> RawRequestMessage:
    """What the log shows of a request whose head the parser refused (nginx logs the
    request line it read for a 400/414/431): its method, target and version when the
    line was read whole, else "-"."""
    m = _REQUEST_LINE.match(head) if head else None
    if m is None:
        return _UNREAD
    return ERROR._replace(method=m[1].decode(), path=m[2].decode(),
                          version=HttpVersion(int(m[3]), int(m[4])))


def _head_too_large() -> HttpProcessingError:
    return HttpProcessingError(
        code=431, message=f"request header section over {MAX_HEAD_BYTES} bytes")


def _begun_head(data: bytes, messages: list[Any], parser: Any) -> int:
    """Bytes of data after the last whole request, when they can only be the head of the
    next one (that request had no body): they count against MAX_HEAD_BYTES with the reads
    that follow, or a pipelined request would carry a head of any size past the bound."""
    if data.endswith(b"\r\n\r\n") or messages[-1][1] is not EMPTY_PAYLOAD \
            or parser.in_body or parser.queue_full:  # (the first: nearly every read)
        return 0
    end = data.rfind(b"\r\n\r\n")
    return len(data) - end - 4 if end >= 0 else 0


class ClientConnection(ConnectMethod, BaseProtocol):
    """Requests are answered one at a time, in order (RFC 9112 §9.3.2: pipelining), by one
    task per connection. The connection is also the Downstream of the request being
    answered."""

    # Slots: past 30 attributes CPython 3.11 gives an instance its own dict, and every
    # self._x on the read and write paths becomes a dict lookup (a 1 KiB hit -4.9 %).
    # An attribute set in __init__ (or anywhere) must be named here.
    __slots__ = (
        "__weakref__", "_below", "_broken", "_chunked", "_client_eof", "_close_delimited",
        "_close_drained", "_closing", "_corked", "_deadline", "_declined", "_dropped",
        "_forwarder", "_gone", "_handed", "_head_awaited", "_head_bytes", "_head_over",
        "_head_refused", "_held_below", "_held_tls", "_keep_alive", "_last_read",
        "_lingering", "_measure_next", "_on_gone", "_origin", "_origin_tls", "_out",
        "_out_bytes", "_payload", "_planned", "_port", "_queue", "_relay", "_relayed",
        "_remote", "_request", "_seen", "_sent", "_sent_fields", "_slices", "_started",
        "_status", "_stopping", "_tail", "_task", "_timeouts", "_timer", "_tunnel",
        "_unlogged", "_unlogged_timer", "_unparsed", "_unparsed_bytes", "_unsent",
        "_unsent_watch", "_waiting_head", "listener", "max_field_size", "max_headers",
        "peername", "sockname", "ssl_context")

    def __init__(self, listener: Listener) -> None:
        super().__init__(listener.loop)
        self.listener = listener
        self.peername: Any = None
        self.sockname: Any = None
        self._remote: str | None = None  # the client's address, for the log
        self._port = 0  # the listener's port this connection came in on
        self.ssl_context = None
        self.max_field_size = 8190
        self.max_headers = 128
        self._queue: deque[tuple[RawRequestMessage | HttpProcessingError, StreamReader]] \
            = deque()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._lingering: asyncio.TimerHandle | None = None  # a lingering close's end (close)
        self._unsent_watch: asyncio.TimerHandle | None = None  # a close's send_timeout
        self._deadline: float | None = None
        self._waiting_head = False  # the timer is client_header_timeout's
        self._closing = False  # no request after the one being answered
        self._stopping = False  # a graceful stop: the connection closes after its answers
        self._broken = False  # a message was malformed: nothing more is parsed
        # A graceful stop came while a request's head was arriving: it is read and answered
        # (then the connection closes); done once it is, or the connection is (busy).
        self._head_awaited: asyncio.Future[None] | None = None
        self._last_read = False  # a chunked request was read: none after it is (_read_last)
        self._upgraded = False
        self._tail = b""  # bytes after an upgrade (CONNECT) request's head
        # The read in which the parser last gave a whole request, and those since (while
        # a head is incomplete; bounded: _HEAD_WINDOW): where a line too long began.
        self._seen = b""
        self._unparsed: list[bytes] | None = None
        self._unparsed_bytes = 0
        self._head_bytes = 0  # read since the last whole request, outside any body
        # Bytes of the next head may have gone uncounted: read with the end of a body
        # (_begun_head cannot tell where the body ended), or held by the parser on a full
        # message queue. The next head is measured whole once it is read.
        self._measure_next = False
        self._head_refused = False  # a request head refused before its end (may still come)
        # A head over MAX_HEAD_BYTES queued as a 431 behind the requests read before it:
        # those are answered as usual, and nothing the client sends after it is read.
        self._head_over = False
        self._client_eof = False  # the client finished sending before its tunnel was up
        self._payload: StreamReader | None = None  # the body of the request being answered
        self._started = False  # its response head went out (start())
        self._tunnel: TunnelEnd | None = None  # a CONNECT spliced to its origin
        self._origin: Allowed | None = None  # a CONNECT intercepted (forward.intercept_tls)
        self._origin_tls = True  # its client spoke TLS (else plain HTTP: http:// requests)
        # The response being sent.
        self._request: ClientRequest | None = None
        self._chunked = False
        self._close_delimited = False  # its body ends with the connection (HTTP/1.0)
        self._corked: bytes | None = None  # a streamed head, sent with the first body bytes
        self._keep_alive = True
        self._sent = 0
        self._status = 0
        self._declined: Any = None  # the request the quick path last handed on
        self._planned: tuple[Any, Planned] | None = None  # and how it goes forward
        self._relay: QuickForward | None = None  # a request sent by callback, under way
        self._forwarder: QuickForward | None = None  # the one renewed for the next (_forward)
        # The field lines of the last upstream head a quick forward sent, what they were
        # made from, and that head with its method and URL, and the Route, Forward, raw
        # lines, method and version it was sent for (_upstream_head).
        self._sent_fields: tuple[Any, ...] | None = None
        # The last client head begin_relayed made, and what it was made from.
        self._relayed: tuple[tuple[Any, ...], bytes] | None = None
        self._on_gone: Callable[[], None] | None = None  # a relay waiting (watch_gone)
        self._out: list[bytes] = []  # writes gathered for the iteration's end (_write)
        self._out_bytes = 0
        self._unsent = 0  # bytes the transport held at the last look (send_timeout)
        self._handed = 0  # bytes handed to the transport by flush_out, in all
        self._gone = 0  # of those, how many had left its buffer at the last look
        # Lines of big answers not all out (LOG_WHEN_OUT_BYTES): where each body ends in
        # _handed, its size, and what writes the line given the bytes that went.
        self._unlogged: list[tuple[int, int, Callable[[int], None]]] = []
        self._unlogged_timer: asyncio.TimerHandle | None = None
        self._dropped = False  # the transport was aborted: what it held never went
        # Under an intercepted TLS connection, the TCP transport TLS writes into, where
        # its bytes wait once encrypted (proxy/under_tls.py): counted as unsent too.
        self._below: asyncio.Transport | None = None
        # Who holds this connection's writes: its transport (pause_writing), the TCP
        # transport under TLS (paused_below); paused (BaseProtocol._paused) while either does.
        self._held_tls = self._held_below = False
        self._close_drained = False  # close() waits for the TCP transport under TLS
        # Under TLS, a big write's bytes not handed to TLS yet (proxy/tls_slices.py).
        self._slices = Slices()

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.listener.admit(self):  # proxy.max_client_connections: a clean close
            transport.close()
            return
        self._timeouts = self.listener.timeouts  # as configured when it connected
        self.peername = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        self._remote = self.listener.remote(self.peername)
        sockname = self.sockname
        self._port = int(sockname[1]) if isinstance(sockname, (list, tuple)) else 0
        self.ssl_context = transport.get_extra_info("sslcontext")
        self._parser = self._make_parser()
        self._arm(self._timeouts.header, head=True)

    def _make_parser(self) -> Any:
        # aiohttp's limits (8190-byte lines and fields, 128 fields); auto_decompress off:
        # a request body goes upstream as the client encoded it.
        loop, options = self._loop, {
            "max_line_size": 8190, "max_field_size": self.max_field_size,
            "max_headers": self.max_headers, "payload_exception": RequestPayloadError,
            "auto_decompress": False, "max_msg_queue_size": MAX_PIPELINED}

        def make_python() -> _StrictPythonParser:
            parser = _StrictPythonParser(self, loop, 2**16, **options)
            parser.answers_first = True  # (requests before a malformed one, then its 400)
            return parser

        if HttpRequestParser is HttpRequestParserPy:  # AIOHTTP_NO_EXTENSIONS=1
            return make_python()

        def make_c() -> Any:
            return HttpRequestParser(self, loop, 2**16, **options)

        # (Limits and the queue's bound key the process's memo of the last usual head.)
        memo = head_memo(8190, self.max_field_size, self.max_headers, MAX_PIPELINED)
        return _FallbackParser(make_c(), make_python, MAX_PIPELINED, make_c, memo=memo)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.send(data)
            return
        if self._upgraded and not self._closing:
            self._keep_early(data)
            return
        if self._head_over:
            return  # (dropped: the 431 queued ends the connection)
        answered_here = False
        while self._parser is not None and (not self._closing or self._body_at_stop()):
            parser = self._parser
            # (A body may end in this read. settled: the last read was the usual one, and
            # the parser's four properties below are False, read without a call each.)
            in_body = not parser.settled and parser.in_body
            try:
                messages, upgraded, tail = parser.feed_data(data)
            except HttpProcessingError as exc:
                if isinstance(parser, _FallbackParser) and getattr(exc, "head", None) is None:
                    exc.head = parser.rejected(data)  # type: ignore[attr-defined]
                if isinstance(exc, LineTooLong):
                    exc.window = b"".join(  # type: ignore[attr-defined]
                        (self._seen, *(self._unparsed or ()), data))
                messages, upgraded = [(exc, EMPTY_PAYLOAD)], False
                self._closing = True  # the stream cannot be trusted past a bad message
                self._broken = True
                # A body under way broke its framing: no more of it comes, and whoever
                # reads it (an upload upstream) learns it now (400), not at a timeout.
                for payload in (self._payload, *(p for _, p in self._queue)):
                    if payload is not None and not payload.is_eof():
                        payload.set_exception(exc)
            if parser.settled and self._head_bytes + len(data) <= MAX_HEAD_BYTES \
                    and not self._measure_next and not self._last_read and not self._stopping \
                    and self._task is None and not self._queue and self._relay is None \
                    and (msg := messages[0][0]).version is HttpVersion11 \
                    and hdrs.TRANSFER_ENCODING not in msg.headers:  # (an istr)
                # The usual read (nearly every one): one whole HTTP/1.1 request without a
                # body or Transfer-Encoding ends it, the parser holds nothing, and nothing
                # is queued or under way before it. What the steps below do then, in short:
                # no head begun after it, nothing for _read_last to refuse or end, nothing
                # to measure next, and the quick path asked at once.
                self._head_bytes = 0
                self._seen, self._unparsed = data, None
                self._deadline, self._waiting_head = None, False  # (_disarm)
                if not self._quick_one(msg, EMPTY_PAYLOAD):
                    self._declined = msg  # the task need not ask again
                    self._enqueue(messages)
                    return
                if (parser := self._parser) is not None:
                    parser.message_consumed()
                if self._task is None and not self._closing and self.transport is not None \
                        and self._relay is None:
                    self._await_next()
                return
            over = False  # a head over MAX_HEAD_BYTES after these messages: a 431, the last
            if messages:
                if self._head_bytes + len(data) > MAX_HEAD_BYTES \
                        or self._measure_next:  # (rare: then measured)
                    messages, over = self._heads_within(messages)
                if parser.settled and not over:
                    # (Nearly every read: its last request, without a body, ends it; the
                    # parser holds nothing: no head begun, nothing to measure next.)
                    self._head_bytes = 0
                    self._measure_next = False
                else:
                    self._head_bytes = 0 if over or upgraded \
                        else _begun_head(data, messages, parser)  # (after an upgrade: a tunnel's)
                    self._measure_next = not (over or upgraded) and (
                        not data or parser.queue_full  # (bytes held: a feed of them, b"")
                        or (messages[-1][1] is not EMPTY_PAYLOAD and not parser.in_body))
                    if self._head_bytes > MAX_HEAD_BYTES and not self._closing:
                        messages, over = [*messages, (_head_too_large(), EMPTY_PAYLOAD)], True
                self._seen, self._unparsed = data, None  # (no allocation on a hit)
            elif data:
                self._keep_unparsed(data)
                if in_body or parser.in_body or parser.queue_full:  # (not a head's bytes)
                    # The read that ends a body is content too (RFC 9112 §6.2), however
                    # long: the first bytes of a head after it are measured with that head.
                    self._head_bytes = 0
                    self._measure_next = self._measure_next or parser.queue_full \
                        or not parser.in_body
                else:
                    self._head_bytes += len(data)
                    if self._head_bytes > MAX_HEAD_BYTES:
                        messages = [(_head_too_large(), EMPTY_PAYLOAD)]
                        self._closing = True
            if messages and not self._closing and not (
                    parser.settled and not over and not self._last_read
                    and (first := messages[0][0]).version is HttpVersion11
                    and hdrs.TRANSFER_ENCODING not in first.headers):  # (an istr)
                # (settled, not over: one HTTP/1.1 request without a body, so not chunked;
                # without Transfer-Encoding, _read_last has nothing to refuse nor end: the
                # usual request skips its call.)
                messages = self._read_last(messages)  # (the requests before a 431 too)
            if messages and self._stopping:  # (the head a graceful stop waited for)
                self._closing = True  # nothing after these is read
                self._loop.call_soon(self._head_came)  # (once they are under way: busy)
            if over:
                self._head_over = True  # nothing after the refused head is read
            if upgraded:
                # No protocol is switched to (the proxy does not answer 101): the upgrade
                # request is answered, then the connection closes; a CONNECT's tunnel
                # takes the bytes after it.
                self._upgraded = True
                self._keep_early(tail)
            if not messages:
                break
            self._deadline, self._waiting_head = None, False  # (_disarm)
            if self._task is None and not self._queue and self._relay is None:
                messages = self._quick(messages)
                if not messages:  # all answered here
                    answered_here = True
                    if not parser.settled and parser.holding and not self._paused:
                        data = b""  # it stopped on a full queue: what it kept is next
                        continue
                    break
            self._enqueue(messages)
            return
        if self._task is not None or self._closing or self.transport is None \
                or self._relay is not None:
            return
        if answered_here:
            self._await_next()
        elif data and not self._waiting_head:
            # The first bytes of the next request: its head has client_header_timeout.
            self._arm(self._timeouts.header, head=True)

    @staticmethod
    def _heads_within(messages: list[Any]) -> tuple[list[Any], bool]:
        """The messages up to the first whose head is over MAX_HEAD_BYTES, then that one
        as a 431, and True (the connection closes after it: nothing further is read)."""
        for i, (msg, _) in enumerate(messages):
            if isinstance(msg, HttpProcessingError):
                break
            size = len(msg.path) + sum(len(k) + len(v) + 4 for k, v in msg.raw_headers)
            if size > MAX_HEAD_BYTES:
                refused = _head_too_large()
                refused.request = msg  # type: ignore[attr-defined]  # (logged: _refuse)
                return [*messages[:i], (refused, EMPTY_PAYLOAD)], True
        return messages, False

    def _keep_unparsed(self, data: bytes) -> None:
        """A read that completed no request: kept (by reference) while the head it is
        part of may still end in a line too long; the oldest go past _HEAD_WINDOW."""
        unparsed = self._unparsed
        if unparsed is None:
            unparsed = self._unparsed = []
            self._unparsed_bytes = 0
        unparsed.append(data)
        self._unparsed_bytes += len(data)
        while self._unparsed_bytes > _HEAD_WINDOW and len(unparsed) > 1:
            self._unparsed_bytes -= len(unparsed.pop(0))

    def _keep_early(self, data: bytes) -> None:
        """Bytes after an upgrade request's head (a CONNECT's, sent before its 200): all kept
        for the tunnel, none dropped; past MAX_TAIL the client is not read until the tunnel
        has taken them (connect.py)."""
        self._tail += data
        if len(self._tail) >= MAX_TAIL and not self._buffer_paused:
            self._pause_reading_for_buffer()

    def _read_last(self, messages: list[Any]) -> list[Any]:
        """The requests of messages that are answered, as they are answered.

        A chunked request is the last one read on its connection: it is answered with
        Connection: close (RFC 9112 §9.6), and whatever follows it is not parsed into
        requests. aiohttp's C parser (3.14) keeps the last trailer field of a chunked
        body pending and adds it to the next message's header section: a field one
        client put in its trailers would reach the origin in the next request on the
        connection, maybe another client's behind a shared front proxy (RFC 9112 §7.1.2
        lets a recipient drop trailers, never merge them into another message). So is an
        HTTP/1.0 request whose Connection says close beside keep-alive (§9.6).

        A request line saying a version above 1.1 (llhttp takes "HTTP/2.0") is answered
        as HTTP/1.1, the highest this server conforms to (RFC 9110 §6.2), not echoed; one
        without a version (HTTP/0.9, whose answers have no status line) gets a 505. A
        transfer coding other than chunked alone gets a 501 (RFC 9112 §6.1: the proxy
        decodes none, and would pass the coded bytes on as the content), a
        Transfer-Encoding without chunked (an empty one) a 400 (§6.3)."""
        if self._last_read:
            return []  # (the parser still reads the chunked body to its end)
        for i, (msg, payload) in enumerate(messages):
            if isinstance(msg, HttpProcessingError):
                continue
            refused = None
            version = msg.version
            if version is HttpVersion11:  # (llhttp's own: nearly every request)
                pass
            elif version > HttpVersion11:
                messages = [*messages[:i], (msg._replace(version=HttpVersion11), payload),
                            *messages[i + 1:]]
            elif version < HttpVersion10:
                refused = HttpProcessingError(code=505, message="HTTP/0.9 request")
            if msg.chunked and refused is None:
                codings = msg.headers.getall("Transfer-Encoding", ())
                if len(codings) != 1 or codings[0].strip(" \t").lower() != "chunked":
                    refused = HttpProcessingError(
                        code=501, message=f"transfer coding {', '.join(codings)!r}")
            elif refused is None and hdrs.TRANSFER_ENCODING in msg.headers:  # (an istr: no folding)
                # RFC 9112 §6.3 (4): present, and chunked not its final coding (llhttp lets
                # an empty one through beside a Content-Length): the length is unknown.
                refused = HttpProcessingError(
                    code=400, message="Transfer-Encoding without chunked")
            if refused is not None:
                # (Nothing after it is parsed; the requests before it are answered, then
                # it is, with its body still coming read and dropped before the close.)
                refused.request = msg  # type: ignore[attr-defined]  # (logged: _refuse)
                self._last_read = True
                return [*messages[:i], (refused, payload)]
            if msg.chunked or (version is not HttpVersion11 and not msg.should_close
                               and version < HttpVersion11 and "close" in connection_options(
                                   msg.headers.getall("Connection", ()))):
                # RFC 9112 §9.3, §9.6: "close" ends the connection whatever else Connection
                # names (llhttp lets an HTTP/1.0 "keep-alive" win over it).
                self._last_read = True
                return [*messages[:i], (messages[i][0]._replace(should_close=True), payload)]
        return messages

    def _enqueue(self, messages: list[Any]) -> None:
        """Requests for the task, in order; reading pauses while MAX_PIPELINED wait."""
        self._queue.extend(messages)
        if self._task is None and self._relay is None:  # (a relay's end starts it)
            self._task = self._loop.create_task(self._serve())
        if len(self._queue) >= MAX_PIPELINED and not self._buffer_paused:
            self._pause_reading_for_buffer()

    def eof_received(self) -> bool:
        if self._tunnel is not None:  # the client finished sending: half-close onwards
            return self._tunnel.client_eof()
        if self._upgraded and not self._closing:
            request = self._request
            if request is not None and request.method != "CONNECT":
                # A WebSocket handshake being answered: its client has frames to send
                # after the 101, so a FIN before it is a client gone, as for any request
                # (nginx's 499), and its origin is let go (Driver.upgrade's watch).
                return False
            # A CONNECT still being answered: the client may have said all it had to
            # say; the answer, and the tunnel's, still go back to it.
            self._client_eof = True
            return True
        return False

    def pause_writing(self) -> None:
        self._held_tls = True
        if not self._held_below:  # (else paused already, on the TCP transport's account)
            self._writes_held()

    def resume_writing(self) -> None:
        self._held_tls = False
        if not self._held_below:
            self._writes_freed()

    def paused_below(self) -> None:
        """The TCP transport under TLS holds what the socket did not take (under_tls.py):
        TLS hands it all it encrypted at once (a big hit whole), so the TLS transport's
        own buffer is empty and would never pause this connection. Paused as a full
        transport pauses it: no more requests read, send_timeout armed (not for a tunnel:
        TunnelEnd watches the TCP transport itself)."""
        if self._held_below or self._tunnel is not None or self.transport is None \
                or self.transport.get_protocol() is not self:
            return
        self._held_below = True
        if not self._held_tls:
            self._writes_held()

    def _writes_held(self) -> None:
        super().pause_writing()
        if self._tunnel is not None:
            self._tunnel.pause()
            return
        # A client that reads none of its answers gets no more of its requests read (else
        # pipelined hits would pile up answers here without bound); without a request in
        # hand, it has send_timeout to read again.
        self._pause_transport_reading()
        if self._task is None and not self._closing:
            self._arm(self._timeouts.send, head=False)

    def _writes_freed(self) -> None:
        super().resume_writing()
        if self._tunnel is not None:
            self._tunnel.resume()
            return
        if not self._buffer_paused and not self._reading_paused:
            self._resume_transport_reading()
        if self._unlogged:
            self._gone = self._handed - self._unsent_bytes()
        if self._task is None and not self._closing and self.transport is not None:
            self._await_next()
            parser = self._parser
            if parser is not None and parser.holding:
                self.data_received(b"")  # the requests read before the pause

    def _resume_reading_for_buffer(self) -> None:
        self._buffer_paused = False
        if not self._reading_paused and not self._paused:  # (resume_writing resumes it)
            self._resume_transport_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        never = self._slices.size  # (not handed to TLS: never went; the body let go)
        self._slices.clear()
        if self._unlogged:
            if exc is None and not self._dropped:  # a close: it sent all it held first
                self._gone = self._handed - never
            self._log_gone(lost=True)  # (else what had gone at the last look)
        if self._lingering is not None:
            self._lingering.cancel()
        if self._unsent_watch is not None:
            self._unsent_watch.cancel()
        if self._tunnel is not None:
            self._tunnel.client_gone()
        if not self._closing and self._task is None and self._relay is None \
                and not self._upgraded:  # (the client closed: nothing of ours under way)
            self._log_unfinished_head(400)
        self._disarm()  # (a quick forward goes on: its answer is dropped, its line logged)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closing = True
        self._head_came()
        parser, self._parser = self._parser, None
        if parser is not None:
            with contextlib.suppress(HttpProcessingError):
                parser.feed_eof()
        lost = ConnectionResetError("client connection lost")
        current = self._payload
        gone, self._on_gone = self._on_gone, None
        if current is not None and not current.is_eof():  # a body cut off: its reader
            current.set_exception(lost)  # (the upload upstream) ends now, not at a timeout
        elif gone is not None:  # an exchange waiting on the origin stops now, freeing it
            gone()
        else:
            self._left_unanswered()
        for _, payload in self._queue:
            payload.set_exception(lost)
        self._queue.clear()
        relay = self._relay  # (under way: its head has not come, the callback takes it)
        if relay is not None and relay.fwd.for_client_alone:  # the origin is let go now,
            relay.cancel()  # as the full path's watch does (Driver.forward); logged 499
            self.forwarded(None)
        # (the one kept for renewal holds this connection as its client: a cycle, and the
        # connection, its parser and buffers, would wait for the collector to be freed)
        self._forwarder = None
        self.listener.forget(self)

    def _left_unanswered(self) -> None:
        """The client left before any of its answer was written, and nothing ends its
        request now: the request goes on without it (a miss that may be stored is
        fetched on, for the next client, as nginx with proxy_cache and Varnish fetch it;
        a lookup, a wait for an upstream connection). Its line is written now: 499
        (nginx's "client closed request"), with the time it waited, not when the fetch
        ends (at proxy.read_timeout for an origin that never answers); what the request
        still does logs nothing more (_answered: it is no longer self._request)."""
        request = self._request
        if request is None or self._started or request.method == "CONNECT":
            return  # (a CONNECT's line is connect.py's, when its connect ends)
        self._request = None
        self._status = 499
        outcome = request.get(OUTCOME)
        self.listener.record(request, 499, 0, outcome.started if outcome is not None
                             and outcome.started else time.perf_counter())

    # -- serving ------------------------------------------------------------------

    def _quick(self, messages: list[Any]) -> list[Any]:
        """Answer the leading requests storage answers, here and now; the rest, from the
        first that needs more, go to the task."""
        for i, (msg, payload) in enumerate(messages):
            if not self._quick_one(msg, payload):
                self._declined = msg  # the task need not ask again
                return messages[i:]
            if self._parser is not None:
                self._parser.message_consumed()
        return []

    def _quick_one(self, msg: RawRequestMessage | HttpProcessingError, payload: StreamReader
                   ) -> bool:
        """Answer msg from storage (proxy/quick.py) if storage answers it: no task, no
        driver run. False: msg needs the full path."""
        listener = self.listener
        if self._closing or self._upgraded or self._origin is not None or self._paused \
                or payload is not EMPTY_PAYLOAD or isinstance(msg, HttpProcessingError) \
                or self._relay is not None:
            return False  # (and the control plane's requests: QuickHits declines them)
        started = perf_counter()
        quick = listener.quick
        keep_alive = self._keep_alive
        try:
            found = quick.hit(msg, started)
            if found is None:
                return False
            if type(found) is Planned:  # it goes forward: by callback, or the full path
                if self._forward(msg, found, started):
                    return True
                self._planned = (msg, found)
                return False
            self._keep_alive = not msg.should_close
            self._sent = 0
            # The answer is written last: if anything before it fails, nothing was sent.
            if type(found) is Plain:
                member = self._send_plain(msg.version, found)
            else:
                plan, outcome, entry, answer = found
                request = ClientRequest(msg, payload, self._remote, "http", self._port)
                request[PLAN] = plan
                request[OUTCOME] = outcome
                if answer is None:
                    self._send_replay(msg.version, plan, entry, quick.fresh(entry, outcome))
                else:
                    self._send_answer(request, answer)
        except Exception:  # a bug of ours: the full path answers (a 500 if it fails too)
            log.exception("quick hit failed on %s %s", msg.method, msg.path)
            self._keep_alive = keep_alive
            return False
        try:
            if type(found) is Plain:
                route = found.route
                if self._sent <= LOG_WHEN_OUT_BYTES or not self._log_when_out(partial(
                        _plain_line, listener.observer.record_hit, msg, self._remote, route,
                        self._status, found, member, started)):
                    listener.observer.record_hit(
                        msg, self._remote, route.authority, route.logged, route.route_name,
                        route.secrets, self._status, self._sent, found.age, found.ttl,
                        member, started)
            elif self._sent <= LOG_WHEN_OUT_BYTES or not self._log_when_out(partial(
                    listener.record, request, self._status, started=started)):
                listener.record(request, self._status, self._sent, started)
        except Exception:  # answered already: a bug of ours in the log loses one line only
            log.exception("request log failed on %s %s", msg.method, msg.path)
        if not self._keep_alive:
            self.close()
        return True

    async def _serve(self) -> None:
        try:
            while self._queue and self.transport is not None:
                if self._paused and not await self._drained():
                    return
                msg, payload = self._queue.popleft()
                parser = self._parser
                if parser is not None:
                    parser.message_consumed()
                    if (self._buffer_paused or (not parser.settled and parser.holding)) \
                            and len(self._queue) <= MAX_PIPELINED // 2:
                        self.data_received(b"")  # what the parser kept while its queue was full
                        if self._buffer_paused and len(self._queue) < MAX_PIPELINED:
                            self._resume_reading_for_buffer()
                if isinstance(msg, HttpProcessingError):
                    self._payload = payload  # (a body still coming: a lingering close)
                    self._refuse(msg, getattr(msg, "request", None)
                                 or _refused_request(getattr(msg, "head", None)))
                    return
                # (The message the quick path just declined is the first popped; taken
                # once: the same head again may be the same message object, the parser's
                # HeadMemo, and is asked again.)
                declined, self._declined = self._declined, None
                if msg is not declined and self._quick_one(msg, payload):
                    if self._closing or self._relay is not None:
                        return  # (a quick forward's end goes on with the queue)
                    continue
                if not await self._one(msg, payload):
                    return
        except Exception:  # a bug of ours: the connection goes, the process stays
            log.exception("client connection failed")
            self.close()
        finally:
            self._task = None
        if self.transport is not None and not self._closing:
            self._await_next()

    async def _drained(self) -> bool:
        """Wait until the client reads what was written (pipelined requests are answered
        no faster than it reads); False: it is gone, or was closed at send_timeout."""
        try:
            await self._drain_or_time_out(say=True)
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def _drain_or_time_out(self, say: bool) -> None:
        """Wait until the transport takes writes again. Raises TimeoutError, having closed
        the connection, when the client read nothing for send_timeout (nginx's
        send_timeout: time without progress, not the whole transfer: a large answer to a
        slow reader takes as long as it takes). say: log the WARNING here (a relay says
        it itself, naming the request)."""
        self._progressed()
        while True:
            try:
                async with asyncio.timeout(self._timeouts.send):
                    await self._drain_helper()
                return
            except TimeoutError:
                if self.transport is not None and self._progressed():
                    # The timeout cancelled the waiter _drain_helper keeps: a new one.
                    waiter = self._drain_waiter
                    if waiter is not None and waiter.done():
                        self._drain_waiter = None
                    continue
                if say:
                    log.warning("client %s read nothing for %gs: connection closed",
                                self._remote, self._timeouts.send)
                self.abort_unread()
                raise

    def _progressed(self) -> bool:
        """Whether the client read some of what waits for it since the last look."""
        unsent = self._unsent_bytes()  # (under TLS, the TCP transport's too)
        progressed = unsent < self._unsent
        self._unsent = unsent
        return progressed

    async def _one(self, msg: RawRequestMessage, payload: StreamReader) -> bool:
        """Answer one request; False when the connection is to close after it."""
        if self._out:  # the quick answers before it go first (aiohttp's writer, a tunnel)
            self.flush_out()
        started = time.perf_counter()
        listener = self.listener
        self._payload = payload
        # (The parser stopped at an upgrade request it switched for, the last queued: those
        # before it are answered as usual, in order, RFC 9112 §9.3.2. One it did not switch
        # for, h2c, is a request as any other, RFC 9110 §7.8: the parser reads on after it,
        # or says close where it cannot, server_protocol._FallbackParser._after_upgrade.)
        self._keep_alive = not (msg.should_close or self._closing
                                or (self._upgraded and not self._queue))
        control = msg.method != "CONNECT" and listener.is_control(msg) \
            and self._origin is None and self._for_us(msg)
        expect = msg.headers.get("Expect")
        if expect is not None and msg.version >= HttpVersion11:
            if expect.lower() != "100-continue":  # RFC 9110 §10.1.1
                self._refuse(HttpProcessingError(code=417, message="unsupported Expect"), msg)
                return False
            if payload is not EMPTY_PAYLOAD and not control:  # (aiohttp's handler sends
                self._write(_CONTINUE)  # the control plane's, itself)
        if msg.method == "CONNECT":
            return await self._connect(msg, started)
        if control:
            keep = await self._via_app(msg, payload, started)
        else:
            request = ClientRequest(msg, payload, self._remote,
                                    "https" if self._origin is not None
                                    and self._origin_tls else "http",
                                    self._port, self._origin)
            request.body_timeout = self._timeouts.body
            self._request, self._sent, self._chunked, self._status = request, 0, False, 0
            self._started = False
            planned, self._planned = self._planned, None
            try:
                answer = await listener.proxy.serve(
                    request, self, started,
                    planned[1] if planned is not None and planned[0] is msg
                    and listener.quick.still(planned[1]) else None)
            except ClientBodyError as exc:
                self._body_failed(request, exc, started)
                return False
            self._answered(request, answer, started)
            keep = self._keep_alive
        if keep and not payload.is_eof():
            keep = await self._linger(payload)
        if not keep:
            self.close()
        return keep

    def _answered(self, request: ClientRequest, answer: Answer | None, started: float
                  ) -> None:
        """The proxy's answer is in (None: it was streamed): sent, and logged."""
        if request is not self._request:
            return  # a graceful stop ran out of time meanwhile: stop() logged it
        if answer is not None and self._started:
            # An error after a streamed head went out (a bug of ours): no second
            # answer can follow; the client sees the message end abnormally.
            self._keep_alive = False
        elif answer is not None:
            self._send_answer(request, answer)
        status = self._status  # (_logged_status, inline: once per answer)
        if status == 0 and self.transport is None:
            status = self._status = 499
        if self._sent <= LOG_WHEN_OUT_BYTES or not self._log_when_out(partial(
                self.listener.record, request, status, started=started)):
            self.listener.record(request, status, self._sent, started)
        self._request = None

    def _log_when_out(self, line: Callable[..., None]) -> bool:
        """The answer just written (self._sent body bytes) is not all out of the
        transport's buffer: line(sent=bytes that went) is called once it is, or when the
        client is gone (LOG_WHEN_OUT_BYTES); True. False: nothing waits, log it now."""
        if self.transport is None:
            return False
        self.flush_out()
        unsent = self._unsent_bytes()
        if not unsent:
            return False
        self._gone = self._handed - unsent
        self._unlogged.append((self._handed, self._sent, line))
        if self._unlogged_timer is None:
            self._unlogged_timer = self._loop.call_later(UNLOGGED_CHECK_SECONDS,
                                                         self._log_gone)
        return True

    def _log_gone(self, lost: bool = False) -> None:
        """Write the lines of the big answers now out of the buffer (all of them, with
        what went, when the connection is lost or the proxy stops)."""
        timer, self._unlogged_timer = self._unlogged_timer, None
        if lost and timer is not None:
            timer.cancel()
        if not lost and self.transport is not None and not self._dropped:
            # (aborted: the transport has emptied its buffer without sending it, and says
            # so an iteration later, connection_lost: what went is what went before)
            self._gone = self._handed - self._unsent_bytes()
        unlogged, gone = self._unlogged, self._gone
        while unlogged:
            end, size, line = unlogged[0]
            if gone < end and not lost:
                break
            del unlogged[0]
            try:
                line(sent=max(0, size - max(0, end - gone)))
            except Exception:  # a bug of ours in the log loses one line only
                log.exception("request log failed")
        if unlogged and not lost:
            self._unlogged_timer = self._loop.call_later(UNLOGGED_CHECK_SECONDS,
                                                         self._log_gone)

    @property
    def unsent(self) -> int:
        """Bytes written to the client that have not left for the kernel (a stop waits)."""
        return self._unsent_bytes()

    def _unsent_bytes(self) -> int:
        """Bytes handed to the transport that have not left for the kernel: its buffer's,
        and under TLS the TCP transport's (ciphertext: a TLS record's 22 bytes of framing
        each 16 KiB counted as unsent too, until it leaves)."""
        transport = self.transport
        if transport is None:
            return 0
        below = self._below
        unsent = transport.get_write_buffer_size()
        return unsent if below is None \
            else unsent + below.get_write_buffer_size() + self._slices.size

    def drained_below(self) -> None:
        """The TCP transport under TLS has emptied its buffer (proxy/under_tls.py): what
        went is looked at now, not at the next look, which a client that read it all and
        closed at once (a reset) would not wait for; a pause on its account ends, unless
        TLS handed it more meanwhile (paused again). The next slices of a big write go
        first (tls_slices.py)."""
        if self._slices:
            self._feed_tls()
        if self._unlogged and self.transport is not None:
            self._gone = self._handed - self._unsent_bytes()
        if self._close_drained and self.transport is not None and not self._unsent_bytes():
            self._close_drained = False
            self.transport.close()  # (close() waited for this: TLS's shutdown now)
            return
        below = self._below
        if self._held_below and (below is None or not below.get_write_buffer_size()):
            self._held_below = False
            if not self._held_tls and self.transport is not None \
                    and self.transport.get_protocol() is self:
                self._writes_freed()

    def _logged_status(self) -> int:
        """The status of the answer written; 499 when none was, the client gone first
        (nginx's "client closed request"), not that of an answer it never got."""
        if self._status == 0 and self.transport is None:
            self._status = 499
        return self._status

    def _body_failed(self, request: ClientRequest, exc: ClientBodyError, started: float
                     ) -> None:
        """The request body stopped before its end. Stalled (proxy.client_body_timeout):
        408 (RFC 9110 §15.5.9) when nothing of an answer went out yet, with Connection:
        close, since the rest of the body is not waited for and the stream cannot be
        parsed past it. The client left: its line says 499 (nginx's "client closed
        request"), not an error of ours nor the origin's. Then the connection closes."""
        body_failed(request, exc)
        self._keep_alive = False
        if exc.status in (400, 408) and not self._started:
            self._send_answer(request, self.listener.proxy.body_failed_answer(
                request[OUTCOME], exc.status))
        elif exc.status == 499:
            self._status = 499
        self.listener.record(request, self._status, self._sent, started)
        self._request = None
        self.close()

    # -- a request sent by callback (proxy/quick_forward.py) ------------------------

    def _forward(self, msg: RawRequestMessage, planned: Planned, started: float) -> bool:
        """Send planned's request on an idle connection to its origin, its answer taken
        by callback; False: nothing was sent (the full path goes on, as planned)."""
        fwd = planned.forward
        if fwd.collapse:  # waiting behind another request for the key: the driver's
            return False
        proxy = self.listener.proxy
        exchange = proxy.exchange
        route = planned.route
        to = route.upstream
        if to is None:  # (the route's first forward: its URL and origin, kept with it)
            url = route.plan.upstream + route.target
            to = route.upstream = (url, exchange.origin_of(url))
        url, origin = to
        conn = exchange.pool.idle(origin)
        if conn is None:  # connecting is the full path's (connect_timeout, its errors)
            return False
        try:
            request = ClientRequest(msg, EMPTY_PAYLOAD, self._remote, "http", self._port)
            ctx = proxy.planned(request, self, planned, started)
            relay = self._forwarder
            if relay is None:
                relay = self._forwarder = QuickForward(proxy, self, ctx, fwd, conn, self._loop)
            else:
                relay.renew(proxy, ctx, fwd, conn)
            relay.start(self._upstream_head(msg, route, fwd, url, ctx))
        except UpstreamError:  # a field that cannot be sent, a connection closed meanwhile
            exchange.pool.release(conn)  # (the full path answers, with its 502)
            return False
        except BaseException:  # a bug of ours (the full path answers): not a leak too
            exchange.pool.release(conn)
            raise
        self._keep_alive = not msg.should_close
        self._request, self._sent, self._chunked, self._started = request, 0, False, False
        self._status = 0
        self._relay = relay
        return True

    def _upstream_head(self, msg: RawRequestMessage, route: Any, fwd: Any, url: str, ctx: Any
                       ) -> bytes:
        """The upstream request's head. A client on a keep-alive connection sends the same
        field lines again and again (the same Accept, User-Agent, Cookie, Referer for a
        page's images): the lines request_fields made of them last time are reused when
        all it reads is the same (the lines as llhttp parsed them, the method, version,
        route plan, scheme, authority, the conditionals forward takes; the client's
        address is the connection's), and only the request line is made; for the same
        method and URL again, not even that: the whole head is the last one. Not for a
        message of the Python parser (it keeps a field name's case, where llhttp gives
        a known name's usual spelling): the same lines would make other fields."""
        parser = self._parser
        if type(parser) is not _FallbackParser or parser._python is not None:
            return self.listener.proxy.exchange.request_head(fwd.method, url,
                                                             ctx.fields(fwd), False)[1]
        sent = self._sent_fields
        # The same request again (the usual case: a poller, a bench, a page's reload): the
        # same Route and Forward objects (the quick path's memos hand them out again for
        # the same lines, target and plans, and a Route fixes the plan, scheme, authority
        # and URL; a Forward its method, may_store, stored and conditionals), the same
        # lines by value, method and version: the last head whole, without the key below.
        if sent is not None and sent[5] is route and sent[6] is fwd \
                and sent[7] == msg.raw_headers and sent[8] == msg.method \
                and sent[9] == msg.version:
            return sent[4]
        exchange = self.listener.proxy.exchange
        # (fwd.may_store and fwd.stored's presence: what fwd.strips_client_conditionals
        # reads, without its property call)
        key = (msg.raw_headers, msg.method, msg.version, route.plan, route.scheme,
               route.authority, fwd.may_store, fwd.stored is None, fwd.conditional)
        method = fwd.method
        if sent is not None and sent[0] == key:
            if sent[2] is url and sent[3] == method:  # (url: the route's own string)
                head = sent[4]  # the same request again: the whole head
            else:
                head = exchange.request_head_again(method, url, sent[1])
            if len(head) <= KEPT_HEAD_MAX:  # (a long URL's is not kept; its lines are)
                self._sent_fields = (key, sent[1], url, method, head, route, fwd, *key[:3])
            return head
        fields, own = self.listener.proxy.field_parts(ctx.request, route.plan, route.authority,
                                                      route.scheme, fwd)
        head = exchange.request_head_parts(method, url, fields, own, fwd.conditional)
        # (A large head is not kept: a connection would hold it, and the client's lines,
        # as long as it stays open.)
        self._sent_fields = (key, head[head.index(b"\r\n") + 2:], url, method, head, route,
                             fwd, *key[:3]) if len(head) <= KEPT_HEAD_MAX else None
        return head

    def begin(self, status: int, reason: str | None, headers: CIMultiDict[str],
              head_only: bool) -> bytes:
        """A relayed response's head (start() without the cork)."""
        request = self._request
        if request is None:  # its client left and its line was written (_left_unanswered)
            raise ConnectionResetError("client connection lost")
        self._started = True
        self._fields(request, status, headers)
        self._chunked = self._close_delimited = False
        if "Transfer-Encoding" in headers:  # (hop-by-hop: mostly gone already)
            headers.popall("Transfer-Encoding", None)
        if status < 200 or status == 204:
            headers.popall("Content-Length", None)
        elif head_only or status in _NO_BODY or "Content-Length" in headers:
            pass
        elif request.version >= HttpVersion11:
            headers["Transfer-Encoding"] = "chunked"  # RFC 9112 §7.1
            self._chunked = True
        else:  # an HTTP/1.0 client: the close ends the body (RFC 9112 §6.3)
            self._keep_alive = False
            self._close_delimited = True
            headers["Connection"] = "close"
        if self.transport is None:
            raise ConnectionResetError("client connection lost")
        self._status = status  # (the status logged is that of an answer that went out)
        return self._head(request.version, status, reason, headers)

    def begin_relayed(self, status: int, reason: str, fields: list[tuple[str, str]],
                      names: Container[str], marks: list[tuple[str, str]], plan: RoutePlan,
                      head_only: bool) -> bytes | None:
        """begin() for an origin's end-to-end fields (names: theirs, lower-cased) and the
        cache's marks (plan: the request's, request[PLAN]), when the answer needs no field
        replaced or removed: the same head,
        as bytes from the pairs (no multidict). None when begin() is needed: a field the
        policies read or remove (appended_fields), an upstream X-Cache (mark replaces it),
        a Content-Length to drop (RFC 9110 §8.6) or a body to frame (chunked, close)."""
        request = self._request
        if request is None:  # its client left and its line was written (_left_unanswered)
            raise ConnectionResetError("client connection lost")
        self._started = True
        if "x-cache" in names or status < 200 or status == 204 \
                or not (head_only or status in _NO_BODY or "content-length" in names):
            return None
        date = None if "date" in names else _Date.now()  # RFC 9110 §6.6.1 (as _fields)
        connection = self._connection(request.version)
        # An origin answers a connection's requests with the same fields, often to the
        # byte (Date ticks once a second): the head made last time is reused when all it
        # is made of is the same. Key: the fields (names derive from them), the marks,
        # status, reason, plan (appended_fields' policies), the Date added, Connection.
        key = (fields, marks, status, reason, plan, date, connection)
        kept = self._relayed
        if kept is not None and kept[0] == key:
            head = kept[1]
        else:
            added = appended_fields(plan, names, status)
            if added is None:
                return None
            lines = [*fields, *marks, *added]
            if date is not None:
                lines.append(("Date", date))
            if connection is not None:
                lines.append(("Connection", connection))
            head = encode_lines(f"HTTP/1.1 {status} {reason or REASONS.get(status, '')}",
                                lines)
            # (fields copied: the key must not change with a list changed later; a large
            # head is not kept, as _upstream_head's)
            self._relayed = ((list(fields), *key[1:]), head) \
                if len(head) <= KEPT_HEAD_MAX else None
        if self.transport is None:
            raise ConnectionResetError("client connection lost")
        self._chunked = self._close_delimited = False
        self._status = status  # (the status logged is that of an answer that went out)
        return head

    def interim(self, status: int, reason: str, fields: list[tuple[str, str]]) -> None:
        """An interim (1xx) answer from the origin, before the final one (103 Early Hints):
        RFC 9110 §15.2, a proxy MUST forward it; with its end-to-end fields and Via, to an
        HTTP/1.1 client only (§15.2: never to HTTP/1.0, which has no 1xx)."""
        request = self._request
        if request is None or self._started or self.transport is None \
                or request.version < HttpVersion11:
            return
        headers = CIMultiDict(end_to_end(fields))
        headers.popall("Content-Length", None)  # (§8.6: none in a 1xx)
        # The name the request's plan holds, as its final answer's: a reload since it went
        # upstream renames neither (RoutePlan.local_via).
        plan = request.get(PLAN)
        headers.add("Via", plan.local_via if plan is not None else self.listener.proxy.local_via)
        self._write(encode_head(f"HTTP/1.1 {status} {reason}", headers))

    @property
    def left(self) -> bool:
        return self.transport is None

    def watch_gone(self, gone: Callable[[], None] | None) -> None:
        if gone is not None and self.transport is None and self._closing:
            gone()  # lost already (during the lookup, a wait for a connection): now
            return
        self._on_gone = gone

    def send_whole(self, head: bytes, body: bytes) -> None:
        """A relayed response whose body is all here: head and body, one send."""
        if self._chunked:
            framed = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
            self._write(head, framed)
        else:
            self._write(head, body)  # as read: no joined copy
        self._sent = len(body)

    def forwarded(self, answer: Answer | None) -> None:
        """The quick forward ended here (None: its answer was sent): its line, then the
        requests read meanwhile, or the idle timer (one method: a call per miss saved)."""
        relay, self._relay = self._relay, None
        request = self._request
        if relay is None or request is None:
            return
        self._answered(request, answer, relay.ctx.outcome.started)
        if self.transport is None:
            return
        if not self._keep_alive:
            self.close()
        elif self._queue:
            self._task = self._loop.create_task(self._serve())
        elif self._closing:
            self.close()
        elif self._parser is not None and not self._parser.settled and self._parser.holding \
                and not self._paused:
            self.data_received(b"")
        else:
            self._await_next()

    def hand_off(self, step: Any) -> None:
        """The quick forward goes on in a task: the driver's step, then the queue."""
        relay, self._relay = self._relay, None
        assert relay is not None
        self._forwarder = None  # (the task's now: its end settles it, below)
        # (nor is the last head kept with its Forward, which may hold a stored response:
        # the connection keeps no Forward of a request it no longer carries)
        self._sent_fields = None
        task = self._task = self._loop.create_task(
            self._continued(step, relay.ctx.request, relay.ctx.outcome.started))
        task.add_done_callback(lambda _: relay.settle())  # (a graceful stop waits for it)

    async def _continued(self, step: Any, request: Any, started: float) -> None:
        """(request: no longer self._request when its client left and its line was
        written: the step goes on, _answered writes nothing more.)"""
        keep = False
        try:
            answer = await self.listener.proxy.guarded(request, request[OUTCOME], step, self)
            self._answered(request, answer, started)
            keep = self._keep_alive
        except Exception:  # a bug of ours: the connection goes, the process stays
            log.exception("client connection failed")
        if keep and self.transport is not None:  # (closing: _one answers the next with
            await self._serve()  # Connection: close; _serve ends the task, arms the timer)
            return
        self._task = None
        self.close()

    async def _linger(self, payload: StreamReader) -> bool:
        """Read and drop a request body nobody read, so the next request can be parsed.

        An upload cut short by an early answer (a 413 relayed while the body still went
        out) may still be waiting in readany(), its task cancelled: until that task has
        run its cancellation, a second reader raises RuntimeError, or has its waiter
        cleared by the first one's end and sleeps to the timeout. So it goes first."""
        for _ in range(_MAX_YIELDS):
            if getattr(payload, "_waiter", None) is None:
                break
            await asyncio.sleep(0)
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                while not payload.is_eof():
                    await payload.readany()
        except (TimeoutError, ConnectionError, HttpProcessingError, RequestPayloadError):
            return False
        return True

    async def _via_app(self, msg: RawRequestMessage, payload: StreamReader, started: float
                       ) -> bool:
        """The control plane: aiohttp's application answers, on this connection."""
        app = self.listener.app
        writer = Http11Writer(self, self._loop)
        task = asyncio.current_task()
        assert task is not None
        request = app._make_request(msg, payload, self, writer, task)  # type: ignore[arg-type]
        response: web.StreamResponse
        try:
            response = await app._handle(request)
        except web.HTTPException as exc:
            response = exc
        except Exception:
            log.exception("internal error on %s %s", msg.method, msg.path)
            response = web.Response(status=500, text="500 internal error\n")
        if self._connection(msg.version) == "close":
            response.force_close()
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            return False
        self.listener.observer.log_request(request, response, time.perf_counter() - started)
        return bool(response.keep_alive) and self._keep_alive

    def _refuse(self, exc: HttpProcessingError, msg: RawRequestMessage = ERROR) -> None:
        """A request the parser (or the Expect rule, which read msg) refused: its answer,
        then a close."""
        status = exc.code if 400 <= exc.code < 600 else 400
        if isinstance(exc, LineTooLong):
            status = _too_long(exc)
        elif isinstance(exc, BadStatusLine) and "Invalid HTTP version" in str(exc) \
                and msg.method != "-" and msg.version.major != 1:
            # A request line read whole whose version llhttp refused: a major version not
            # implemented gets 505 (RFC 9110 §15.6.6; llhttp says 400), as nginx and Squid
            # answer HTTP/3.0. (A higher 1.x minor is read as 1.1: _until_close.)
            status = 505
        reason = REASONS.get(status, "Bad Request")
        body = f"{status} {reason}\n".encode()
        # no-store, as every error of ours: a cache in front must not keep an answer to one
        # client's malformed head for the URL (414 and 501 are even heuristically
        # cacheable, RFC 9110 §15.1; the CPDoS attacks rely on it).
        self._write_head(HttpVersion11, status, reason, CIMultiDict({
            "Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body)),
            "Cache-Control": "no-store", "Connection": "close", "Date": _Date.now()}),
            b"" if msg.method == "HEAD" else body)  # RFC 9110 §9.3.2: no content to HEAD
        # Logged without its query: the route, which names the query parameters the log
        # redacts (referer.strip_params), is not chosen for a refused request.
        logged = msg._replace(path=msg.path.partition("?")[0]) if "?" in msg.path else msg
        self.listener.record(ClientRequest(logged, EMPTY_PAYLOAD, self._remote, "http"),
                             status, 0 if msg.method == "HEAD" else len(body),
                             time.perf_counter())
        log.debug("request refused: %s", exc.message)
        self._head_refused = True  # (refused as it came: the rest of it may be on its way)
        self.close()

    # -- writing a response (Downstream) -----------------------------------------

    def _connection(self, version: Any) -> str | None:
        """The Connection field the response says the connection's fate with: "close"
        when it ends after this answer (RFC 9112 §9.6), "keep-alive" to an HTTP/1.0 client
        that asked to keep it (RFC 9112 Appendix C.2.2), else none. In a graceful stop
        the last answer it gives (none pipelined behind) says close too, as nginx's does
        at a quit: a client told it stays open would send its next request on it, and get
        a reset for a request it cannot know was not processed (RFC 9112 §9.6, §9.3.1)."""
        if self._stopping and not self._queue:
            self._keep_alive = False
        if not self._keep_alive:
            return "close"
        return "keep-alive" if version == HttpVersion10 else None

    def _fields(self, request: ClientRequest, status: int, headers: CIMultiDict[str]) -> None:
        """The fields every response gets here: the policies' (CORS, Referrer-Policy),
        Date when the origin sent none (RFC 9110 §6.6.1), and the connection's fate."""
        outbound_fields(request, headers, status)
        if "Date" not in headers:
            headers["Date"] = _Date.now()
        if "Connection" in headers:  # (mostly not: a relayed answer's end-to-end fields)
            headers.popall("Connection", None)
        connection = self._connection(request.version)
        if connection is not None:
            headers["Connection"] = connection

    def _write_head(self, version: Any, status: int, reason: str | None,
                    headers: CIMultiDict[str], body: bytes = b"") -> None:
        """The head, and with it a body that is all there (one send: gathered, not joined,
        so a stored body is not copied per answer, whoever is slow to read it)."""
        if self.transport is None:
            raise ConnectionResetError("client connection lost")
        self._status = status
        self._write(self._head(version, status, reason, headers), body)

    @staticmethod
    def _head(version: Any, status: int, reason: str | None, headers: CIMultiDict[str]
              ) -> bytes:
        # RFC 9110 §6.2: the server's own version, HTTP/1.1, to an HTTP/1.0 request too
        # (its framing stays 1.0's: version decides that).
        line = f"HTTP/1.1 {status} {reason or REASONS.get(status, '')}"
        return encode_head(line, headers)

    def _send_answer(self, request: ClientRequest, answer: Answer) -> None:
        replay = answer.replay
        if replay is not None and request.method != "HEAD" \
                and hdrs.ORIGIN not in request.headers:  # else the full path: a CORS grant
            self._send_replay(request.version, request.get(PLAN), replay.entry, replay.fresh)
            return
        headers = answer.fields()
        status = answer.status
        body = answer.body
        self._fields(request, status, headers)
        if status < 200 or status == 204:  # RFC 9110 §8.6: no Content-Length
            headers.popall("Content-Length", None)
            body = b""
        elif status == 304:
            body = b""
        elif request.method == "HEAD":  # RFC 9110 §9.3.2: the GET's fields, no content
            headers.setdefault("Content-Length", str(len(body)))
            body = b""
        else:
            headers["Content-Length"] = str(len(body))
        headers.popall("Transfer-Encoding", None)
        try:
            self._write_head(request.version, status, answer.reason, headers, body)
        except ConnectionError:
            return
        self._sent = len(body)

    def _send_replay(self, version: Any, plan: RoutePlan, entry: CachedResponse,
                     lines: tuple[tuple[str, str], ...]) -> None:
        """A hit: the entry's encoded head (replay.py), the fields fresh for this request
        (lines), and the body, sent together (with the iteration's other writes)."""
        head, _ = self._replay_head(version, plan, entry, lines)
        self._write_replay(head, entry)

    def send_stored(self, request: Any, plan: RoutePlan, entry: CachedResponse, age: float,
                    ttl: float, outcome: Outcome) -> bool:
        """A stored response a validation answered whole (QuickForward._reply; outcome
        noted served), written as a replay is (_send_answer's replay). False: the request
        needs its Answer (a CORS grant for its Origin); nothing was written.

        The head is the last one made here when it would be the same (the revalidated
        reply of a URL polled several times a second): made from the same entry (by
        identity, held weakly: an evicted one is not kept alive), route plan (its stored
        head's outbound policies, its Via and cache name), HTTP version and Connection,
        Age in the same whole seconds, and a Cache-Status member from the same inputs (ttl
        in whole seconds, as RFC 9211 §2.5 shows it; Outcome.cache_status); X-Cache is HIT
        (note_served). Only for a stored head with its own Date (else this second's is
        written) and a head of up to KEPT_HEAD_MAX bytes: one head, so bounded."""
        global _last_stored
        if hdrs.ORIGIN in request.headers:  # (_send_answer's test: the full path's writer)
            return False
        version = request.version
        o = outcome
        made = (plan, version, self._connection(version), int(age), ttl // 1, o.hit, o.fwd,
                o.fwd_status, o.stored, o.collapsed, o.went_on, o.detail)
        last = _last_stored
        if last[0]() is entry and last[1] == made:
            head = last[2]
            o.sent_again(plan.forward.via, last[3])
        else:
            member = o.cache_status(plan.forward.via)
            head, dated = self._replay_head(version, plan, entry, fresh_fields(
                age, member, o.x_cache, plan.local_via))
            if dated and len(head) <= KEPT_HEAD_MAX:
                _last_stored = (weakref.ref(entry), made, head, member)
        if self.transport is not None:  # (_write_replay, without its call)
            self._status = entry.status
            body = entry.body
            self._write(head, body)  # the stored bytes themselves: sent without a copy
            self._sent = len(body)
        return True

    def _send_plain(self, version: Any, plain: Plain) -> str:
        """A Plain hit (proxy/quick.py); its Cache-Status member. The head is the last
        one made for its route when it would be the same: same entry, HTTP version and
        Connection, Age and ttl in the same whole seconds."""
        route, entry, age, ttl = plain
        made = (version, int(age), ttl // 1, self._connection(version))
        last = route.replayed
        if last is not None and last[0]() is entry and last[1] == made:
            head, member = last[2], last[3]
        else:
            member, lines = self.listener.quick.plain_fields(age, ttl)
            head, dated = self._replay_head(version, route.plan, entry, lines)
            if dated:
                route.keep_replayed(entry, made, head, member)
            else:  # without a stored Date, the head carries this second's: not kept
                route.replayed = None
        if self.transport is not None:  # (_write_replay, without its call: every hit)
            self._status = entry.status
            body = entry.body
            self._write(head, body)  # the stored bytes themselves: sent without a copy
            self._sent = len(body)
        return member

    def _replay_head(self, version: Any, plan: RoutePlan, entry: CachedResponse,
                     lines: tuple[tuple[str, str], ...]) -> tuple[bytes, bool]:
        """The whole head of a replay, blank line included; and whether the stored head
        had a Date (else one is written fresh)."""
        global _last_fresh
        head, dated = self.listener.replays.head(entry, plan, version)
        connection = self._connection(version)
        last = _last_fresh
        # The fresh lines encoded for the last replay, for equal lines and Connection
        # (all they are made from) when the stored head has its Date: a URL revalidated
        # on every request repeats its Age, Via, Cache-Status and X-Cache within a second.
        if dated and last[0] == lines and last[1] == connection:
            return head + last[2], dated
        fresh = "".join([f"{k}: {v}\r\n" for k, v in lines])
        if fresh.count("\n") != len(lines) or fresh.count("\r") != len(lines):
            raise ValueError("a control character in a response field")  # no injection
        if not dated:
            fresh += f"Date: {_Date.now()}\r\n"
        if connection is not None:
            fresh += f"Connection: {connection}\r\n"
        tail = fresh.encode("utf-8", "surrogateescape") + b"\r\n"
        if dated:
            _last_fresh = (lines, connection, tail)
        return head + tail, dated

    def _write_replay(self, head: bytes, entry: CachedResponse) -> None:
        if self.transport is not None:  # (_send_plain does the same without the call)
            self._status = entry.status
            body = entry.body
            self._write(head, body)  # the stored bytes themselves: sent without a copy
            self._sent = len(body)

    def flush_out(self) -> None:
        """Send the gathered answers (the listener calls it once per iteration)."""
        out = self._out
        if not out:
            return
        size = self._out_bytes
        self._handed += size
        self._out, self._out_bytes = [], 0
        transport = self.transport
        if transport is not None and not transport.is_closing():  # (close() sent its own)
            if self._below is not None and (size > TLS_SLICE or self._slices):
                self._slices.add(out)  # (behind what waits already: in order)
                self._feed_tls()
            elif len(out) == 1:
                transport.write(out[0])
            else:
                transport.writelines(out)  # one writev, no joined copy
            if self._paused:  # what send_timeout measures progress against
                self._unsent = self._unsent_bytes()

    def _feed_tls(self) -> None:
        """Hand TLS the next slices of what waits (tls_slices.py) while the TCP transport
        under it has sent all it held: a slow client has about a slice of ciphertext
        waiting, not the whole body. Stops once that transport holds bytes, so it has
        paused this connection (paused_below) and drained_below comes back for more; or
        once it is closing: a write that failed (the client reset) empties its buffer and
        drops what comes after, and tells TLS an iteration later, so the rest of a body
        would be encrypted for nothing and, seen as sent, logged as sent."""
        transport, below, slices = self.transport, self._below, self._slices
        while slices and below is not None and transport is not None \
                and not transport.is_closing() and not below.is_closing() \
                and not below.get_write_buffer_size():
            transport.writelines(slices.take())
        if self._paused:  # what send_timeout measures progress against
            self._unsent = self._unsent_bytes()

    def _write(self, data: bytes, more: bytes = b"") -> None:
        """Every write to the client: gathered with the others made in this loop
        iteration, and sent at its end (Listener.gather), or once GATHER_BYTES wait. One
        burst of sends after one burst of work costs about a third less CPU per hit than
        sends between the work (README, Benchmarks). Whatever else writes to the
        transport (aiohttp's writer, a tunnel, TLS) sends these first (_one)."""
        out = self._out
        if not out:  # (the listener's gather, without its call: once per iteration)
            gathered = self.listener.gathered
            if not gathered:
                self._loop.call_soon(self.listener.send_gathered)
            gathered.append(self)
        out.append(data)
        self._out_bytes += len(data)
        if more:  # (a second buffer: a replay's body after its head)
            out.append(more)
            self._out_bytes += len(more)
        if self._out_bytes >= GATHER_BYTES:  # (and the transport may pause writing)
            self.flush_out()

    async def start(self, status: int, reason: str | None, headers: CIMultiDict[str],
                    head_only: bool) -> None:
        # Corked: the head goes out with the first body bytes when they are already here
        # (one send, one segment), or at the end of this loop iteration when they are not.
        self._corked = self.begin(status, reason, headers, head_only)
        self._loop.call_soon(self._uncork)

    async def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client connection lost")
        framed = b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data
        corked = self._corked
        if corked is not None:
            self._corked = None
            framed = corked + framed
        self._write(framed)
        self._sent += len(data)
        if self._paused:  # the client reads slower than the origin sends
            await self._drain_or_time_out(say=False)

    async def finish(self) -> None:
        tail = b"0\r\n\r\n" if self._chunked else b""
        corked = self._corked
        if corked is not None:
            self._corked = None
            tail = corked + tail
        if tail and self.transport is not None:
            self._write(tail)

    def _uncork(self) -> None:
        corked = self._corked
        if corked is not None:
            self._corked = None
            if self.transport is not None:
                self._write(corked)

    def abort(self) -> None:
        """The response cannot be completed. Chunked, it lacks its last chunk; with a
        Content-Length, bytes: a close (FIN) after what was sent tells the client. A
        body delimited by the close would look whole after a FIN: it ends with a reset,
        the one signal such a client can tell (RFC 9112 §6.3, §8)."""
        self._keep_alive = False
        if not self._close_delimited:
            self.close()
            return
        self._closing = True
        self._disarm()
        self._uncork()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.flush_out()  # (handed to the kernel; what it still holds unsent, the reset
            self._dropped = True  # drops: a message cut short either way)
            reset(transport)

    # -- the connection's end ------------------------------------------------------

    def close(self) -> None:
        """Close once what was written is sent; with a lingering close when the client may
        still be sending its request's body or a head refused (CLOSE_LINGER_SECONDS)."""
        self._closing = True
        self._head_came()
        self._disarm()
        self._uncork()
        transport = self.transport
        if transport is None:
            return
        self.flush_out()
        if self._unsent_watch is None and self._unsent_bytes():
            # A close waits for the client to read what is left, without end: it has
            # send_timeout to read some of it each time, as before the close.
            self._progressed()
            self._unsent_watch = self._loop.call_later(self._timeouts.send,
                                                       self._watch_unsent)
        payload = self._payload
        sending = self._head_refused or (payload is not None and not payload.is_eof())
        if self._below is not None and self._unsent_bytes():
            # TLS's close starts its shutdown, and after its timeout (30 s) it drops the
            # TCP transport with what the client has not read yet: a slow download with
            # Connection: close cut short. Closed once that has gone (drained_below); the
            # unsent watch above aborts a client that reads none of it.
            self._close_drained = True
            return
        if not sending or self._lingering is not None or not transport.can_write_eof():
            transport.close()
            return
        # RFC 9112 §9.6: the answer, then a half-close (FIN), then what the client still
        # sends read and dropped (data_received drops it once closing) until it closes
        # too (eof_received) or the time is up.
        transport.write_eof()
        self._buffer_paused = self._reading_paused = False
        self._resume_transport_reading()
        self._lingering = self._loop.call_later(CLOSE_LINGER_SECONDS, transport.close)

    def _watch_unsent(self) -> None:
        """A closed connection whose client reads none of what is left: aborted."""
        self._unsent_watch = None
        if self.transport is None or not self._unsent_bytes():
            return
        if self._progressed():
            self._unsent_watch = self._loop.call_later(self._timeouts.send,
                                                       self._watch_unsent)
            return
        log.warning("client %s read nothing for %gs: connection closed", self._remote,
                    self._timeouts.send)
        self.abort_unread()

    def abort_unread(self) -> None:
        """Close now, dropping what the client did not read (send_timeout): a close would
        wait for it to read that first."""
        self._closing = True
        self._disarm()
        self._out, self._out_bytes = [], 0
        self._slices.clear()
        if self.transport is not None:
            self._dropped = True
            self.transport.abort()

    def close_idle(self) -> None:
        """Shutting down: close now if no request is being answered, else after it. A
        request whose head is arriving is read and answered first, as nginx does at a
        quit: its client cannot tell a close then from a request lost (RFC 9112 §9.3.1)."""
        self._stopping = True
        if self._task is None and self._relay is None:
            # (_head_bytes misses a head whose first bytes came with the end of a body:
            # the parser knows where that body ended.)
            begun = self._head_bytes > 0 or (self._parser is not None
                                             and self._parser.head_begun)
            if begun and not self._head_over and self.transport is not None:
                self._head_awaited = self._loop.create_future()
                return  # (data_received stops reading after it; the drain waits: busy)
            self._closing = True
            self.close()
            return
        self._closing = True

    def _body_at_stop(self) -> bool:
        """In a graceful stop (closing) the body of a request read before is still read
        to its end: that request is answered within proxy.shutdown_timeout, as nginx -s
        quit reads it (the upload would stall, then get a 503)."""
        parser = self._parser
        return self._stopping and not self._broken and parser is not None \
            and parser.in_body

    def _head_came(self) -> None:
        """The head awaited at a graceful stop came (or the connection went)."""
        awaited, self._head_awaited = self._head_awaited, None
        if awaited is not None and not awaited.done():
            awaited.set_result(None)

    def stop(self) -> None:
        """Shutting down, out of time: what answers a request now stops. Its line is
        written here (the cancelled task writes none): a 503 with Connection: close when
        nothing of its answer went out yet (RFC 9110 §15.6.4), else what was sent; a body
        delimited by the close ends with a reset (abort), as any other cut short."""
        if self._task is not None:
            self._task.cancel()
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.cancel()
        if self._unlogged:  # what went so far: the application's cleanup comes next
            self._log_gone(lost=True)
        request, self._request = self._request, None
        if request is None:
            return
        outcome = request.get(OUTCOME)
        sent = self._sent
        if self._started:  # what our buffers still hold goes nowhere: the process ends
            # (its line gives the bytes that went, as _log_gone's, nginx's $body_bytes_sent)
            sent = max(0, sent - self._out_bytes - self._unsent_bytes())
        if outcome is not None and not self._started and self.transport is not None \
                and not self.transport.is_closing():
            self._keep_alive = False
            self._send_answer(request, self.listener.proxy.stopped_answer(outcome))
            sent = self._sent
        elif self._started and self._close_delimited:
            self.abort()  # a body cut short, which the close (a FIN) would make look whole
        self.listener.record(request, self._logged_status(), sent, time.perf_counter())

    @property
    def busy(self) -> asyncio.Future[None] | None:
        """What answers a request now: the connection's task, or a quick forward's end (or,
        in a graceful stop, the head of a request still arriving)."""
        if self._relay is not None:
            return self._relay.done
        return self._task if self._task is not None else self._head_awaited

    def _arm(self, seconds: float, head: bool) -> None:
        """Close the connection in seconds unless a request comes. One timer handle is
        kept and moved lazily (setting a deadline per request costs nothing)."""
        self._waiting_head = head
        deadline = self._deadline = self._loop.time() + seconds
        timer = self._timer
        if timer is None or timer.when() > deadline:  # none yet, or it would fire too late
            self._set_timer(deadline)

    def _set_timer(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._timed_out)

    def _await_next(self) -> None:
        """The answers are written: the timer for what comes next. send_timeout while the
        client has not read them; client_header_timeout when the next request's head has
        begun already (it came with, or during, those answers: nginx times a pipelined
        request's head so), else keepalive_timeout, which may be much longer and would
        let a head that never ends hold the connection that long. (A few attribute reads
        after each answer.)"""
        timeouts = self._timeouts
        parser = self._parser
        if self._paused:
            seconds, head = timeouts.send, False
        elif parser is not None and not parser.settled \
                and parser.head_begun:  # (empty lines are no head, §2.2)
            seconds, head = timeouts.header, True
        else:
            seconds, head = timeouts.keepalive, False
        self._waiting_head = head  # (_arm's, without its call: after every answer)
        deadline = self._deadline = self._loop.time() + seconds
        timer = self._timer
        if timer is None or timer.when() > deadline:
            self._set_timer(deadline)

    def _disarm(self) -> None:
        self._deadline = None
        self._waiting_head = False

    def _timed_out(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._task is not None or self.transport is None \
                or self._relay is not None:
            return  # a request came (and its end arms the timer again)
        if self._loop.time() < deadline:  # moved since: wait for the new deadline
            self._timer = self._loop.call_at(deadline, self._timed_out)
            return
        if self._paused:  # waiting for the client to read its answers
            if self._progressed():  # it reads, slowly: send_timeout counts from now
                self._arm(self._timeouts.send, head=False)
                return
            log.warning("client %s read nothing for %gs: connection closed", self._remote,
                        self._timeouts.send)
            self.abort_unread()
            return
        if self._waiting_head:
            self._log_unfinished_head(408)
        self.close()  # a head too slow, or idle too long

    def _log_unfinished_head(self, status: int) -> None:
        """A request head begun and never finished: closed without an answer, at
        client_header_timeout (408) or by its client (400), and logged so with nothing
        sent and the request line read so far (or "-"), as nginx logs both. A connection
        that sent no byte of a head (or only empty lines, RFC 9112 §2.2) is no request,
        and writes no line (nginx's neither). Only when a connection ends: no request
        pays for it."""
        parser, begun = self._parser, self._head_bytes
        window = b"".join((self._seen, *(self._unparsed or ()))) if begun else b""
        head = window[-begun:] if begun else b""
        # (_head_bytes also counts a head whose end the parser could not place, as
        # close_idle; the parser, one begun in the read that ended a body)
        if not head.lstrip(b"\r\n") and not (parser is not None and parser.head_begun):
            return
        msg = _refused_request(head)
        logged = msg._replace(path=msg.path.partition("?")[0])  # (as _refuse: no route)
        # Since its first byte, where client_header_timeout's deadline was set.
        deadline = self._deadline if self._waiting_head else None
        waited = 0.0 if deadline is None else \
            self._timeouts.header - max(0.0, deadline - self._loop.time())
        self.listener.record(ClientRequest(logged, EMPTY_PAYLOAD, self._remote, "http"),
                             status, 0, time.perf_counter() - waited)


ConnectionFactory = Callable[[], ClientConnection]
