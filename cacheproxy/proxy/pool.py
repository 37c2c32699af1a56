"""The upstream connection pool: per-origin HTTP/1.1 keep-alive connections of our own,
parsed by llhttp (httptools).

What it guarantees, as nginx's upstream module does:
- an idle connection is closed after proxy.upstream_keepalive_timeout (default 4 s,
  below common origin defaults such as Node's 5 s), so the pool rarely offers one the
  origin is closing;
- a request that fails on a reused connection before any byte of the answer arrived is
  sent again, once, on a fresh connection when it may be (an idempotent method with no
  body, or nothing of it written: nginx's proxy_next_upstream rule);
- a connection whose answer broke its framing (bytes past the end of a message, an
  invalid length, a field name with whitespace before the colon, RFC 9112 §5.1) is
  closed and never reused; such an answer is refused (502), never replayed;
- waiting for a connection when proxy.max_connections are open has a deadline
  (proxy.connect_timeout): then 503, never a stall; waiters are served in the order they
  came, and a connect after a wait has a connect_timeout of its own (504 past it);
- the body is read with flow control: reading from the origin pauses while the client
  has not taken what was read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from functools import lru_cache
from typing import NamedTuple

import httptools

from cacheproxy.http.abnf import REASON_PHRASE_RE
from cacheproxy.http.codings import transfer_coding_names
from cacheproxy.http.fields import FieldList, connection_options
from cacheproxy.http.status_line import DONE, START, read_as_1_1
from cacheproxy.http.trailer_section import refused_trailer_framing, section_bytes
from cacheproxy.proxy.destinations import Lookups, connect_first, resolved
from cacheproxy.proxy.downstream import ClientBodyError
from cacheproxy.proxy.trailer_skip import TrailerSkip
from cacheproxy.proxy.upstream import UpstreamError
from cacheproxy.proxy.wire import REASONS

# Methods that may be sent again after a failure (RFC 9110 §9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
log = logging.getLogger("cacheproxy")
# Where an interim (1xx) answer goes: its status, reason phrase and fields.
Interim = Callable[[int, str, list[tuple[str, str]]], None]
_HIGH_WATER = 64 * 1024  # body bytes buffered from the origin before reading pauses
_LOW_WATER = 16 * 1024
# Body pieces shorter than this join the one before them while both wait to be read: a
# chunked answer of one-byte chunks would otherwise queue a bytes object (some 40 bytes)
# per byte up to _HIGH_WATER, and be relayed as as many chunks.
_MERGE = 4096
_MAX_FIELD_BYTES = 128 * 1024  # the most an answer's header section may hold
# Fields llhttp frames by or keeps the connection by, even in a trailer section (a
# `Connection: close` there makes it refuse the connection's next answer).
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection",
                      b"proxy-connection", b"upgrade"))
_FRAMING_LENGTHS = frozenset(map(len, _FRAMING))
# Fields (lower-cased) that take an answer off on_headers_complete's usual path:
# for one with any of them, the framing and connection rules run in full.
_UNUSUAL = frozenset(("transfer-encoding", "connection", "proxy-connection"))
_MAX_INTERIM = 8  # 1xx answers passed on to the client per exchange, at most
# An answer's bytes up to this many are kept (Pool._again) when they came whole in one
# read: a revalidation's 304, or a small static answer, repeats to the byte within a
# second (its Date ticks once a second).
_AGAIN_MAX = 4096
_CR_LF = (0x0D, 0x0A)
_HTTP10_ORIGINS = 1024  # origins remembered as answering HTTP/1.0, at most
# How long a TLS connection we close waits for the origin's close_notify after ours
# (asyncio's and uvloop's default: 30 s). nginx sends its own and closes at once; an
# origin that stopped reading (the read timeout's) never answers one.
_TLS_SHUTDOWN_TIMEOUT = 1.0


# Valid reason phrases received, decoded (_phrase): "OK", "Not Modified" and the like.
_PHRASES: dict[bytes, str] = {}
_MAX_PHRASES = 64


# Field names as received, decoded and lower-cased (on_header): origins send the same few
# names in every answer. Names up to 64 bytes, at most 512 (emptied when full).
_NAMES: dict[bytes, tuple[str, str]] = {}
_MAX_NAMES = 512
_MAX_NAME = 64


def _field_name(name: bytes) -> tuple[str, str]:
    """name decoded as aiohttp decodes it (the bytes go on unchanged), and lower-cased."""
    text = name.decode("utf-8", "surrogateescape")
    known = (text, text.lower())
    if len(name) <= _MAX_NAME:
        if len(_NAMES) >= _MAX_NAMES:
            _NAMES.clear()
        _NAMES[name] = known
    return known


# An empty FieldList, its index not made yet: _unindexed(FieldList) (list's own __new__).
_unindexed: Callable[[type[FieldList]], FieldList] = list.__new__  # type: ignore[assignment]


@lru_cache(maxsize=8)
def _version(text: str) -> tuple[int, int]:
    """llhttp's "1.1" as (1, 1): made once (llhttp only knows a few)."""
    major, _, minor = text.partition(".")
    return int(major or 1), int(minor or 1)


# Pool._again: the bytes, the TLS note, status, reason, the reason's bytes, the fields,
# Content-Length, the body's length (its last bytes).
_Again = tuple[bytes, bool, int, str, bytes, FieldList, str | None, int]


def _refused(cause: str) -> UpstreamError:
    return UpstreamError(502, cause)


def _still_vetted(conn: Connection, check: Callable[[str], UpstreamError | None]) -> bool:
    """Does the address conn is connected to pass check (the config in force)?"""
    peer = conn.transport.get_extra_info("peername") if conn.transport is not None else None
    return isinstance(peer, (list, tuple)) and check(str(peer[0])) is None


def _closed_cleanly(transport: asyncio.Transport | None) -> bool:
    """Did the origin end the connection cleanly? RFC 9112 §9.8: over TLS, a body run to
    the close is complete only when the close_notify alert came before the TCP close; one
    without it may be a truncation (an attacker's FIN, a crash), and must not be stored
    or relayed as whole. (SSLObject.read gives b"" only once close_notify was read;
    uvloop calls no eof_received for a TCP close without it, asyncio does.)"""
    tls = transport.get_extra_info("ssl_object") if transport is not None else None
    if tls is None:
        return True
    try:
        return tls.read(1) == b""
    except (ssl.SSLError, ValueError):
        return False


def _cause(exc: httptools.HttpParserError) -> BaseException:
    """What a parse failure says: ours when one of our callbacks refused the answer
    (httptools raises "User callback error" with ours as its context)."""
    ours = exc.__context__
    if isinstance(exc, httptools.HttpParserCallbackError) and \
            isinstance(ours, httptools.HttpParserError):
        return ours
    return exc


def _persists(version: str, connection: list[str] | None) -> bool:
    """Whether the connection persists after an answer (RFC 9112 §9.3): for an answer to
    HEAD, which llhttp takes to run to the close when it has no framing fields."""
    options = connection_options(connection) if connection else frozenset()
    return "close" not in options and (version == "1.1" or "keep-alive" in options)


class Origin(NamedTuple):
    """Where connections go: the pool's key (a tuple's hash and equality, in C: looked up
    twice per request, on taking and on releasing a connection)."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _expire(waiter: asyncio.Future[None], reason: str) -> None:
    """A read timeout: the waiting coroutine gets a 504's UpstreamError."""
    if not waiter.done():
        waiter.set_exception(UpstreamError(504, reason))


# The codings that change the content (RFC 9110 §8.4.1, the IANA registry; br and zstd
# are registered as content codings, and seen as transfer codings): applied as a transfer
# coding, this proxy cannot take them off (it decodes chunked alone).
_CONTENT_CODINGS = frozenset({"gzip", "x-gzip", "deflate", "compress", "x-compress", "br",
                              "zstd"})

class Connection(asyncio.Protocol):
    """One connection to an origin; one exchange at a time (no pipelining upstream)."""

    # Slots: its 50 attributes are read and set a few hundred times per exchange.
    # Past 30 names CPython 3.11 gives up an instance's shared-key dict, and its reads and
    # stores lose their fastest forms (a reused exchange of a 5-field answer: about 3,600
    # instructions fewer with slots).
    __slots__ = ("__weakref__", "_announced", "_bare_bytes", "_blocked_since", "_buffered",
                 "_by_name", "_chunks", "_closed", "_complete", "_counting", "_early",
                 "_field_bytes", "_fields", "_head", "_head_bytes", "_head_only", "_head_timer",
                 "_headed", "_interim", "_interims", "_lenient", "_line", "_loop", "_lost",
                 "_parser", "_paused", "_pump", "_read_timeout", "_read_timer", "_read_until",
                 "_received", "_receiver", "_status_text", "_switching", "_tls", "_until_close",
                 "_v11", "_waiter", "_writable", "content_length", "idle_timer", "idle_until",
                 "origin", "pool", "reason", "reusable", "status", "transport", "used", "version",
                 "written")

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        # The pool's loop, which it is made on (read on every read and exchange: no call).
        self._loop = pool.loop()
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self.used = False          # has carried an exchange (it is a reused one now)
        # Timers are moved lazily (a deadline per use, one timer that looks at it when it
        # fires): setting and cancelling a timer per request costs about 2 µs each.
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_until: float | None = None  # in the pool until then (keep-alive)
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_until = 0.0  # the head is due by then (read_timeout after the last byte)
        self._read_timeout = 0.0
        self._head_timer: asyncio.TimerHandle | None = None  # send()'s (_head_check)
        self._lost: BaseException | None = None
        self._closed = False
        self._tls = False  # over TLS: a close ends a body only after close_notify
        self._writable: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()  # the body read, not yet taken (one per conn)
        # The exchange's state that every exchange ending in a reuse leaves as it found it
        # (release pools a connection only after an answer read whole, its body taken and
        # its request sent; a failed or switched one is closed): set once here, not by
        # _reset_exchange. Each holds for a reused connection because:
        self._head_only = False  # send/send_quick set it (its last value picks the parser)
        self._announced = False  # an answer to HEAD announced content (read only after
        # on_headers_complete set it, for an answer to HEAD)
        self._switching = False  # a 101 is this exchange's final answer (send's upgrade;
        # any other final answer sets it back)
        self._early = b""  # after that 101: the new protocol's bytes, until detach() (a
        # connection switched is never pooled)
        self._interim: Interim | None = None  # where 1xx answers go (send/send_quick set
        # it, release drops it)
        self._status_text = b""  # the reason phrase as received, in pieces (emptied by
        # on_message_begin, which llhttp calls before any on_status)
        self._head: asyncio.Future[None] | None = None  # send/send_quick set it
        self._buffered = 0  # the bytes in _chunks: none once the body is taken
        self._paused = False  # reading resumes once what was read is taken
        self._waiter: asyncio.Future[None] | None = None  # read_chunk's, while it waits
        self._until_close = False  # such an answer's connection is not reused
        self._receiver: Callable[[], None] | None = None  # send_quick's: dropped once called
        self._blocked_since: float | None = None  # the origin takes no body bytes since
        # (_send_body's, while it waits)
        self._bare_bytes = 0  # bytes received since the last body byte (head in): zeroed
        # by the read that completes a head
        self._field_bytes = 0  # the section's, counted once _counting (on_header)
        self._counting = False
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        # One parser for the connection's answers, one after the other: llhttp starts the
        # next message where the last one ended. (A connection is reused only after an
        # answer that ended cleanly, so the parser is never in an error state here.)
        if not self.used or self._head_only:
            # (After an answer to HEAD too: its parser still waits for the content the head
            # announced, which it does not have (RFC 9112 §6.3 rule 1).)
            self._parser = httptools.HttpResponseParser(self)
            # RFC 9112 §2.2: a recipient MAY take a bare LF as a line end; origins that
            # send one were answered before (aiohttp's client is lenient there too).
            # lenient_keep_alive: llhttp refuses every byte after a message that says
            # `Connection: close`, a 1xx's too, whose final answer follows it (RFC 9110
            # §15.2; §7.6.1: the close comes after the final answer). Bytes after a final
            # answer are refused here all the same (on_message_begin, data_received), and
            # a 1xx's close is kept (on_message_complete).
            self._parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True,
                                                  lenient_keep_alive=True)
            self._lenient = False
        elif self._lenient:  # the last answer's trailer leniency (on_headers_complete)
            self._parser.set_dangerous_leniencies(lenient_chunked_length=False)
            self._lenient = False
        # (What an exchange ending in a reuse leaves as it found it is not set again here:
        # __init__ says which, and why.)
        self._interims = 0  # 1xx answers read before the final one
        self._line = START  # where a status line may begin (http/status_line.py)
        # The section's fields as on_header decodes them, in a FieldList from the start:
        # on_headers_complete only adds the index (no copy, no __init__).
        self._fields: FieldList = _unindexed(FieldList)
        self._by_name: dict[str, list[str]] = {}  # its index, made as fields come
        self._v11 = False  # the answer's first read began "HTTP/1.1 SSS" (data_received)
        if self._counting:  # (a head past _MAX_FIELD_BYTES: _count_fields sets the sum)
            self._counting = False
        self._headed = False       # the head is in: later field lines are trailers
        self.reason = ""
        if self._chunks:  # (none once the body was taken: a reused one's was)
            self._chunks.clear()
            self._buffered = 0
        self._complete = False
        self._received = False     # any byte of the answer arrived
        self._pump: asyncio.Task[None] | None = None
        self.written = False       # any byte of the request was handed to the socket
        self.content_length: str | None = None  # the answer's (first) Content-Length
        self._head_bytes = 0       # bytes received before the head was complete
        self.status = 0
        self.version = (1, 1)  # the final answer's HTTP version (on_headers_complete)

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._tls = transport.get_extra_info("ssl_object") is not None

    def data_received(self, data: bytes) -> None:
        if self._head is None:  # nothing asked: an idle connection must stay silent
            self._broken()
            return
        if self._switching and self._headed:  # the new protocol's (read paused: a read
            self._early += data  # in flight at most)
            return
        fresh = not self._received  # the exchange's first read
        self._received = True
        if self._complete:  # bytes past the end of the message (RFC 9112 §6.3)
            self._broken()
            return
        if self._lost is not None:  # failed (and closing): nothing more is parsed
            return
        if fresh:
            again = self.pool._again
            if again is not None and again[0] == data and again[1] is self._tls \
                    and not self._head_only and not self._switching:
                self._take_again(again)
                return
        raw = data
        headed = self._headed
        if not headed:
            line = self._line
            if line >= 0:  # a status line may begin, or is under way, in this read
                # RFC 9110 §2.5: an HTTP/1.x status line, x above 1, is read as 1.1 (the
                # highest minor this proxy conforms to), as nginx does; llhttp refuses it.
                if not line and len(data) > 9 and data[8] == 0x20 and data[9] != 0x31:
                    # The common case, with no copy: a read that begins with a whole
                    # final status line (a space at [8] is only there in "HTTP/x.y SSS").
                    if 0x31 < data[7] <= 0x39 and data.startswith(b"HTTP/1."):
                        data = b"HTTP/1.1" + data[8:]
                    self._line = DONE
                    # llhttp's version, without its get_http_version() (a str made by
                    # format(), per call): x.y with one digit each, llhttp checks the rest.
                    self._v11 = data[5] == 0x31 and data[7] == 0x31
                else:  # split, or an interim answer (1xx): after its end, another
                    data, self._line = read_as_1_1(data, line)
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_FIELD_BYTES and not self._counting:
                self._count_fields()
        buffered = self._buffered  # (only on_body changes it while the parser runs)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self._switching and self._headed:  # the 101 asked for: the rest is the new
                self._early = data[exc.args[0]:]  # protocol's, kept for detach()
            else:
                self._fail(_refused("upgrade refused"))
        except httptools.HttpParserError as exc:
            if self._complete:  # the message ended; what followed did not parse
                self._broken()
            elif self._lenient and self._headed and refused_trailer_framing(str(exc)):
                self._skip_trailer(data)  # (_lenient: a chunked answer's body under way)
            else:
                self._fail(_refused(f"bad framing ({_cause(exc)})"))
        if not self._headed:
            if self._head_bytes > _MAX_FIELD_BYTES + 8192:
                # Still no whole head: llhttp builds a field up before on_header sees it.
                self._fail(_refused("bad framing (header section too large)"))
            else:
                # proxy.read_timeout is the time between two reads (nginx's
                # proxy_read_timeout), for a head that trickles in as for a body. (Once
                # the head is in, nothing reads this deadline: no clock read for it.)
                self._read_until = self._loop.time() + self._read_timeout
        elif not headed and self._head_only and self._headed:
            self._headed_only(data)
        elif headed and self._buffered == buffered and not self._complete \
                and self._lost is None:
            # A read with no body byte in it, once the head is in: chunk framing, or the
            # trailer section after the last chunk (RFC 9112 §7.1.2), whose fields llhttp
            # builds up as it does the head's (by bytes +=: quadratic) and on_header sees
            # only whole. It is bounded as the head is (RFC 9110 §5.4: a recipient may
            # refuse a section too large), counted from the last body byte; past that it
            # is not parsed any more: the body broke off.
            self._bare_bytes += len(data)
            if self._bare_bytes > _MAX_FIELD_BYTES + 8192:
                self._fail(_refused("bad framing (trailer section too large)"))
        else:
            self._bare_bytes = 0
            if fresh and self._complete and len(raw) <= _AGAIN_MAX:
                # Kept when seen twice in a row: an answer that never repeats (one with a
                # request id, a cookie) costs a compare and a store, not a keep.
                pool = self.pool
                if pool._seen == raw:
                    self._keep_again(raw)
                else:
                    pool._seen = raw
        receiver = self._receiver
        # (_notify, inline: once per answer. A receiver's head is the pool's pending state
        # until it is in or failed: then the answered one, or one of its own, done.)
        if receiver is not None and self._head is not self.pool._pending:
            self._receiver = None
            receiver()

    def _keep_again(self, raw: bytes) -> None:
        """An answer read whole in its exchange's first read: kept (Pool._again) when it
        is final, in HTTP/1.1, not to HEAD, not transfer-coded, framed by its length (or
        a 304/204), with no interim answer before it, and left the connection reusable,
        for the same bytes to be taken again without llhttp (_take_again). (A Connection
        field that keeps it alive, as nginx sends, is llhttp's to judge on the first
        parse: the same bytes get the same verdict.)"""
        # (Called for a read that completed an answer, not to HEAD; 64 fields at most,
        # for the memo's bound. reusable implies no failure, no run to the close; _v11,
        # that the read began with a whole final status line (no interim answer before
        # it); a chunked body's leniency needs a Transfer-Encoding.)
        chunks = self._chunks
        body = chunks[0] if chunks else b""
        # The body is kept as its length (taken again as the bytes' last ones), so that no
        # body the store evicted is kept alive here. It is their last ones: after an
        # answer that left the connection reusable, only a CR or LF can follow it in the
        # read (llhttp skips them; any other byte begins a message: refused).
        if self._v11 and self.reusable and len(chunks) <= 1 and len(self._fields) <= 64 \
                and "transfer-encoding" not in self._by_name \
                and (raw[-1] not in _CR_LF or raw.endswith(body)):
            self.pool._again = (raw, self._tls, self.status, self.reason, self._status_text,
                                self._fields, self.content_length, len(body))

    def _take_again(self, again: _Again) -> None:
        """The exchange's first read holds exactly the bytes of the last answer kept
        (_keep_again): llhttp would parse them to the same head, fields and body, and
        be left between messages as it is now (it saw none of them). The state that
        parse leaves, set at once; the FieldList is the one parsed then (nothing
        downstream changes a received FieldList: the rules make new ones)."""
        raw, _, status, reason, status_text, fields, length, size = again
        self._line = DONE
        self._v11 = True
        self._head_bytes += len(raw)
        self._status_text = status_text
        self._fields = fields
        self._by_name = fields.by_name
        self._headed = True
        self.status = status
        self.version = (1, 1)
        pool = self.pool
        if pool.http10:  # (as on_headers_complete: the origin's version heard)
            pool.heard(self.origin, "1.1")
        self.reason = reason
        self.content_length = length
        head = self._head
        if head is pool._pending:  # (send_quick's: the pool's answered one)
            self._head = pool._answered
        elif head is not None and not head.done():
            head.set_result(None)
        if size:
            self._chunks.append(raw[len(raw) - size:])
            self._buffered += size
        self._complete = True
        self._bare_bytes = 0
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        receiver = self._receiver
        if receiver is not None and self._head is not pool._pending:
            self._receiver = None
            receiver()

    def _count_fields(self) -> None:
        """The head's bytes passed _MAX_FIELD_BYTES: on_header counts its section's field
        bytes from now on, from those it holds. (Until then no section can hold more than
        the bytes received: a field's name and value are spans of them, and on_header
        need not count.)"""
        self._counting = True
        self._field_bytes = sum(len(n.encode("utf-8", "surrogateescape"))
                                + len(v.encode("utf-8", "surrogateescape"))
                                for n, v in self._fields)

    def _headed_only(self, data: bytes) -> None:
        """The read that completed an answer to HEAD: reused only if it ended with the
        head's empty line (RFC 9112 §2.1). A part of a chunk-size line after it reaches no
        callback of llhttp's; a body or a last chunk does (on_body, on_message_complete)."""
        if not (data.endswith(b"\n\r\n") or data.endswith(b"\n\n")):
            self.reusable = False

    def _skip_trailer(self, data: bytes) -> None:
        """llhttp refused a Content-Length in the trailer section: RFC 9110 §6.5.1 says to
        ignore it (nginx does); the section's end is found without llhttp from here on
        (http/trailer_section.py), and the connection is not reused after it."""
        self.reusable = False
        skip = TrailerSkip(self, self._parser.get_status_code(),
                           self._parser.get_http_version())
        self._parser = skip  # type: ignore[assignment]
        try:
            skip.feed_data(section_bytes(data))
        except httptools.HttpParserError:
            self._broken()  # complete, and bytes past it

    def eof_received(self) -> bool | None:
        self.reusable = False
        if self._until_close and self._head is not None and self._head.done() \
                and _closed_cleanly(self.transport):
            self._complete = True  # RFC 9112 §6.3 (§9.8 over TLS): the body ran to the close
            self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.reusable = False
        self.pool._forget(self)
        if isinstance(self._lost, ClientBodyError):
            pass  # closed here, the request body unfinished: that failure stays the cause
        elif (self._until_close and exc is None and not self._tls
                and self._head is not None and self._head.done()):
            self._complete = True  # a close, not a reset (RFC 9112 §6.3, RFC 9111 §3.3)
        elif not self._complete:
            if self._lost is None:  # (else it failed first: that is the cause)
                # A close (FIN) before the end of the answer is no reset (RST): the log
                # says which, as the origin's side differs (a crash, a proxy's timeout).
                self._lost = _refused("connection reset" if exc is not None
                                      else "closed without TLS close_notify"
                                      if self._tls and self._until_close
                                      else "connection closed" if self._received
                                      else "closed before answering")
            self._head_failed(self._lost)
        self._wake()
        if self._receiver is not None:
            self._notify()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:  # a second answer to one request: bytes past the message
            raise httptools.HttpParserError("bytes past the end of the message")
        self._status_text = b""  # (a final answer's after an interim one's)

    def on_status(self, reason: bytes) -> None:
        # llhttp gives the phrase in pieces when it comes in more than one read: joined.
        # (Bounded with the rest of the head: data_received counts _head_bytes.)
        self._status_text += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headed:  # a trailer section: not passed on (nothing takes framing from it)
            if len(name) in _FRAMING_LENGTHS and name.lower() in _FRAMING:
                # RFC 9110 §6.5.1: no framing (nor connection options, §7.6.1) from a
                # trailer; but llhttp takes them into the message's flags (a
                # Transfer-Encoding: gzip or a Connection: close makes it read the next
                # answer as data after a close): the connection is not reused.
                self.reusable = False
            return
        if self._counting:  # (off while the head's bytes are fewer than the bound)
            self._field_bytes += len(name) + len(value)
            if self._field_bytes > _MAX_FIELD_BYTES:
                raise httptools.HttpParserError("header section too large")
        # Decoded as aiohttp decodes fields, so that the bytes go on unchanged; indexed
        # by lower-cased name as they come (FieldList's index, for every rule after).
        try:  # (no encoding named: CPython's UTF-8 decoder without its name's lookup)
            text = value.decode()
        except UnicodeDecodeError:
            text = value.decode("utf-8", "surrogateescape")
        known = _NAMES.get(name)
        spelled, lower = known if known is not None else _field_name(name)
        self._fields.append((spelled, text))
        by_name = self._by_name
        values = by_name.get(lower)
        if values is None:
            by_name[lower] = [text]
        else:
            values.append(text)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        by_name = self._by_name
        if status >= 200 and self._v11 and _UNUSUAL.isdisjoint(by_name) \
                and not self._head_only:
            # The usual answer: HTTP/1.1, final, not to HEAD, with no Transfer-Encoding,
            # Connection or Proxy-Connection field. What the rules below decide for it, in
            # fewer steps: version 1.1 (the pool's http10 note forgotten, if it has one),
            # no transfer coding; the connection persists exactly when the answer does not
            # run to the close (RFC 9112 §6.3, §9.3: with neither Connection nor
            # Proxy-Connection, llhttp_should_keep_alive is "needs no close": a 204, a
            # 304, or a Content-Length).
            self._switching = False
            self._headed = True
            self.status = status
            self.version = (1, 1)
            pool = self.pool
            if pool.http10:
                pool.heard(self.origin, "1.1")
            self.reason = _PHRASES.get(self._status_text) or self._phrase(status)
            self._fields.by_name = by_name
            lengths = by_name.get("content-length")
            if lengths is not None:
                self.content_length = lengths[0]
            elif status != 304 and status != 204:
                self._until_close = True  # RFC 9112 §6.3 rule 8: it runs to the close
                self.reusable = False
            head = self._head
            if head is pool._pending:  # (send_quick's: the pool's answered one)
                self._head = pool._answered
            elif head is not None and not head.done():
                head.set_result(None)
            return
        if status < 100:
            # RFC 9110 §15: no class below 1xx (RFC 9112 §4: three digits). llhttp takes
            # "099": relayed, it lost its body's framing (a status below 200 has none) and
            # its body was read as the next answer. 600-999 are invalid too, but in use
            # (the public cache test suite sends 999); a recipient "SHOULD process" one as
            # a 5xx: it is framed as any final answer, and relayed as it is, as nginx and
            # Varnish do.
            raise httptools.HttpParserError(f"status {status} is below 100")
        if status == 101 and self._switching:  # the switch asked for: the final answer
            self._switched()
            return
        if status < 200:  # interim answers: 103 and the like passed on (below), no body
            # RFC 9110 §15.2: a 1xx ends with its header section; §8.6, RFC 9112 §6.1: it
            # has no Content-Length or Transfer-Encoding. llhttp reads a body after one
            # that has (a 150, a 199), which would be taken for the final answer's.
            if any(name.lower() == "transfer-encoding" or
                   (name.lower() == "content-length" and value.strip() != "0")
                   for name, value in self._fields):
                raise httptools.HttpParserError(f"a {status} answer with content")
            self._interims += 1
            if self._interim is not None and status not in (100, 101) \
                    and self._interims <= _MAX_INTERIM:
                # RFC 9110 §15.2: a proxy MUST forward 1xx answers (103 Early Hints, 102)
                # but those it asked for itself: the client got its 100 Continue from
                # the proxy already (client_conn), and a 101 is an upgrade, not this.
                # (Only the first few: an origin sending them without end would fill
                # the buffer of a client that does not read.)
                self._interim(status, self._phrase(status), list(self._fields))
            self._fields, self._field_bytes, self._by_name = _unindexed(FieldList), 0, {}
            return
        # (get_http_version makes a str per call: read once, and not when the first read
        # said it, data_received)
        version = "1.1" if self._v11 else self._parser.get_http_version()
        if version not in ("1.1", "1.0"):
            # RFC 9112 §4: an HTTP/1.x status line. llhttp takes "HTTP/2.0", which has no
            # such framing (RFC 9113): its length cannot be trusted.
            raise httptools.HttpParserError(f"status line of HTTP/{version}")
        # A final answer but a 101 to an upgrade asked for: the origin declined it (RFC
        # 9110 §7.8), and its body is read as any answer's, not kept for a tunnel.
        self._switching = False
        self._headed = True
        self.status = status
        self.version = (1, 1) if version == "1.1" else (1, 0)
        if version != "1.1" or self.pool.http10:  # (RFC 9112 §6.1: Exchange.send)
            self.pool.heard(self.origin, version)
        self.reason = _PHRASES.get(self._status_text) or self._phrase(status)
        # The index on_header made (a call and a copy fewer than FieldList.__init__).
        self._fields.by_name = by_name
        if not self._parser.should_keep_alive() and not (
                self._head_only and _persists(version, by_name.get("connection"))):
            # (llhttp takes an answer to HEAD with neither Content-Length nor chunked to
            # run to the close: it has no content, and persists as any answer, §9.3.)
            self.reusable = False
        codings = by_name.get("transfer-encoding")
        # (Transfer-Encoding's rules: _transfer_coded, for the answers that have one.)
        chunked = self._transfer_coded(codings, version, status) if codings else False
        lengths = by_name.get("content-length")
        content_length = self.content_length = lengths[0] if lengths else None
        # RFC 9112 §6.3: a Transfer-Encoding whose final coding is not chunked runs to the
        # close, as does a message with neither it nor Content-Length.
        length = not codings and content_length is not None
        self._until_close = not (self._head_only or status in (204, 304) or chunked or length)
        if self._until_close:
            self.reusable = False
        head = self._head
        if head is not None and not head.done():
            if head is self.pool._pending:  # (send_quick's: the pool's answered one)
                self._head = self.pool._answered
            else:
                head.set_result(None)
        if self._head_only:
            # RFC 9110 §9.3.2, RFC 9112 §6.3 rule 1: the answer to HEAD ends with its head,
            # whatever its Content-Length or Transfer-Encoding say. llhttp cannot be told
            # so: it waits for that content, and the next exchange gets a parser of its
            # own (_reset_exchange). Any byte past the head is content sent anyway: the
            # connection is closed then (on_body, on_message_complete, _headed_only, and
            # data_received's _complete for a later read), as nginx does.
            self._complete = True
            self._announced = status not in (204, 304) and (
                chunked or (not codings and content_length not in (None, "0")))
            self._wake()

    def _transfer_coded(self, codings: list[str], version: str, status: int) -> bool:
        """An answer with Transfer-Encoding: refused for a coding this proxy cannot take
        off; True when it is chunked (its final coding, RFC 9112 §6.3)."""
        named = [c.strip(" \t").lower() for c in ",".join(codings).split(",")]
        names = transfer_coding_names(codings)
        if (names.count("chunked") > 1 or not _CONTENT_CODINGS.isdisjoint(names)
                or names.count("chunked") != named.count("chunked")) \
                and not (self._head_only or status in (204, 304)):
            # (An answer with no content may name the coding the content would have had,
            # RFC 9112 §6.1: a 304, an answer to HEAD.)
            # RFC 9112 §7: a recipient that takes a transfer coding off decodes it; this
            # one decodes chunked alone. Relayed, "gzip, chunked" lost its gzip and was
            # stored as the content; chunked twice is invalid (§7.1). A 502, as nginx's
            # "unknown Transfer-Encoding". (A token that names no coding is taken to
            # leave the content as it is: the public suite's headers-store-Transfer-
            # Encoding stores such an answer, its field left out.) A coding is known by its
            # name, whatever its parameters (§7: "gzip;level=9, chunked" is gzip); chunked
            # with one ("chunked;x=1") is not framed by llhttp, which would relay its
            # chunk framing as the content.
            raise httptools.HttpParserError(
                f"transfer coding {', '.join(codings)!r} (only chunked is decoded)")
        if version == "1.0":
            # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing
            # and its connection is closed after it (the sender may have held part of it
            # back, to be misread as the next answer), as nginx does.
            self.reusable = False
        chunked = bool(named) and named[-1] == "chunked"
        if chunked and not self._head_only:
            # The head's Content-Length beside chunked was refused before this callback;
            # what llhttp would still refuse is one in the trailer section, which RFC 9110
            # §6.5.1 says to ignore (nginx does): a whole body broke off for it.
            # (_reset_exchange sets it back for the next answer on the connection.)
            self._parser.set_dangerous_leniencies(lenient_chunked_length=True)
            self._lenient = True
        return chunked

    def _switched(self) -> None:
        """A 101 to a request that asked to upgrade (RFC 9110 §15.2.2): the head is in;
        the connection ends with it as an HTTP one, and what follows is read once a
        tunnel takes it (detach): until then reading pauses."""
        self._headed = True
        self.status = 101
        self.reusable = False
        self.reason = self._phrase(101)
        self.version = _version(self._parser.get_http_version() or "1.1")
        self._fields = FieldList(self._fields)
        if self.transport is not None:
            self.transport.pause_reading()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)  # (send()'s own: send_quick asks no upgrade)

    def detach(self) -> tuple[asyncio.Transport, bytes] | None:
        """After a 101 asked for: the connection leaves the pool (it no longer counts
        against proxy.max_connections: a WebSocket may last for hours) with the bytes
        read after the 101; reading stays paused for whoever takes the transport. None:
        it closed meanwhile. One closing is handed over all the same (an origin that
        sent a close frame and closed at once, whose TLS layer took the close_notify
        while reading was paused): its bytes are the client's, and its connection_lost
        is the taker's."""
        transport = self.transport
        self.reusable = False
        for timer in (self.idle_timer, self._read_timer, self._head_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self._read_timer = self._head_timer = None
        self.pool._forget(self)
        if transport is None or self._closed:
            return None
        self._closed = True  # (its end is the tunnel's: never this exchange's again)
        early, self._early = self._early, b""
        return transport, early

    def _phrase(self, status: int) -> str:
        """The reason phrase received, as relayed. RFC 9112 §4: reason-phrase = *( HTAB /
        SP / VCHAR / obs-text ), and a client SHOULD ignore it. llhttp takes control
        characters in it, which no client may be sent (the serialiser refuses them): the
        standard phrase stands instead."""
        text = self._status_text
        phrase = _PHRASES.get(text)  # (the few phrases origins send, checked once)
        if phrase is not None:
            return phrase
        if REASON_PHRASE_RE.fullmatch(text):
            phrase = text.decode("utf-8", "surrogateescape")
            if len(_PHRASES) < _MAX_PHRASES and len(text) <= 32:  # (kept small)
                _PHRASES[text] = phrase
            return phrase
        return REASONS.get(status, "")

    def on_body(self, body: bytes) -> None:
        if self._head_only:  # content sent with an answer to HEAD: its framing is off
            self.reusable = False
            return
        chunks = self._chunks
        if chunks and len(body) < _MERGE and len(chunks[-1]) < _MERGE:
            chunks[-1] += body
        else:
            chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        waiter = self._waiter  # (_wake, inline: once per body piece)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        # An interim answer's end (its head set no _headed), or a 101 switched to: as a
        # 1xx (llhttp's status code, without asking it: a final one is in self.status).
        if not self._headed or self.status < 200:
            if not self._parser.should_keep_alive():  # the 1xx said close (or HTTP/1.0):
                self.reusable = False  # the connection ends after the final answer
            return
        self._complete = True
        if self._head_only and self._announced:
            # An answer to HEAD that announced content ends in llhttp only once it parsed
            # that content (a last chunk): bytes past the head (RFC 9112 §6.3 rule 1).
            self.reusable = False
        if self.status == 204 and (self.content_length not in (None, "0")
                                   or "transfer-encoding" in self._fields.by_name):
            # RFC 9110 §8.6, RFC 9112 §6.1: a server MUST NOT send a 204 either field.
            # One that does may send the content it announced after the head (RFC 9112
            # §6.3: no content), to be read as the next request's answer: not kept.
            self.reusable = False
        waiter = self._waiter  # (_wake, inline: once per answer)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the exchange -------------------------------------------------------------------

    async def send(self, head: bytes, body: AsyncIterator[bytes] | None, head_only: bool,
                   read_timeout: float, interim: Interim | None = None,
                   upgrade: bool = False) -> None:
        """Write the request (the body streams on in the background) and wait for the
        answer's head, at most read_timeout. interim: where the 1xx answers before it go
        (status, reason, fields), for the client. upgrade: the request asks to switch
        protocols; a 101 is its final answer (then detach())."""
        loop = self._loop
        self._reset_exchange()
        self._head_only = head_only
        self._switching = upgrade
        self._interim = interim
        self.used = True
        head_future = self._head = loop.create_future()
        transport = self.transport
        if self._closed or transport is None or transport.is_closing():
            raise _refused("closed before answering")
        if body is None:  # sent with the others at the end of the loop iteration
            self.pool.gather(self, head)
        else:
            transport.write(head)
            self.written = True
            self._pump = loop.create_task(self._send_body(body))
        try:
            await self._await_head(head_future, read_timeout)
        except BaseException:
            if not head_future.done():
                head_future.cancel()  # (else closing fails it: an exception never read)
            elif not head_future.cancelled():
                head_future.exception()
            self.close()
            raise

    def send_quick(self, head: bytes, head_only: bool, receiver: Callable[[], None],
                   read_timeout: float, interim: Interim | None = None) -> None:
        """send() for a request without a body, the answer taken by callback: receiver is
        called once, when the head is in (with what came of the body in the same read;
        the body goes on as read_chunk gives it) or the exchange failed (head_failure),
        a 504 when no head came within read_timeout."""
        self._reset_exchange()
        self._head_only = head_only
        self._interim = interim
        self.used = True
        loop = self._loop
        pool = self.pool
        # The head's state in futures the pool shares, not one made per exchange (no one
        # awaits it: the receiver is called): pending until on_headers_complete puts the
        # answered one in its place, or _head_failed one of its own holding the failure.
        pending = pool._pending
        self._head = pending if pending is not None else pool._quick_states()
        transport = self.transport
        if self._closed or transport is None or transport.is_closing():
            raise _refused("closed before answering")
        self._receiver = receiver
        if not pool._gathered:  # (Pool.gather, inline: once per quick forward)
            loop.call_soon(pool._send_gathered)
        pool._gathered.append((self, head))
        self._read_timeout = read_timeout
        self._read_until = loop.time() + read_timeout
        if self._read_timer is None:
            self._read_timer = loop.call_at(self._read_until, self._read_check)

    def _read_check(self) -> None:
        self._read_timer = None
        if self._receiver is None:  # answered (a later send_quick sets its own)
            return
        until = self._read_until
        loop = self._loop
        if loop.time() < until:  # a later exchange's deadline
            self._read_timer = loop.call_at(until, self._read_check)
            return
        self._expire_quick("timeout waiting for the answer")

    def _head_check(self, head: asyncio.Future[None]) -> None:
        """send()'s head timer: a 504 once read_timeout passed since the last read."""
        loop = self._loop
        if head.done():
            return
        if loop.time() < self._read_until:
            self._head_timer = loop.call_at(self._read_until, self._head_check, head)
            return
        self._head_timer = None
        _expire(head, "timeout waiting for the answer")

    def _notify(self) -> None:
        head = self._head
        if head is not None and head.done():
            receiver, self._receiver = self._receiver, None
            assert receiver is not None
            receiver()

    def forget_quick(self) -> None:
        """Nobody takes send_quick's answer any more (stopped at shutdown): closed."""
        self._receiver = None
        head, self._head = self._head, None  # (no failure is set on it for nobody)
        if head is not None and head.done() and not head.cancelled():
            head.exception()  # (retrieved: no "never retrieved" warning)
        self.close()

    def head_failure(self) -> UpstreamError | None:
        """Why send_quick's exchange failed before the head came; None: the head is in."""
        head = self._head
        assert head is not None and head.done()
        failure = head.exception()
        if failure is None:
            return None
        return failure if isinstance(failure, UpstreamError) else _refused(str(failure))

    def answered(self) -> FieldList | None:
        """send_quick's receiver's first question in one call: the answer's fields as
        received, in order, when its head is in; None when the exchange failed
        (head_failure says why). (on_headers_complete put the pool's answered state in
        the pending one's place; a failure has a future of its own.)"""
        return self._fields if self._head is self.pool._answered else None

    def _expire_quick(self, reason: str) -> None:
        """send_quick's read_timeout passed before the head: 504, the connection closed."""
        head = self._head
        if self._receiver is not None and head is not None and not head.done():
            self._head_failed(UpstreamError(504, reason))
            self.close()
            self._notify()

    async def _await_head(self, head: asyncio.Future[None], read_timeout: float) -> None:
        """read_timeout counts from the last byte of the request: while the body still
        goes out (a slow upload), the origin is not yet late (nginx's proxy_read_timeout
        too starts once the request is sent). While it goes out, the origin is late (504)
        only when it took none of it for read_timeout; a client that stops sending it is
        the body's own timeout's (proxy.client_body_timeout: 408, not the origin's 504)."""
        loop = self._loop
        while True:
            pump = self._pump
            if pump is None or pump.done():
                # A timer, not asyncio.timeout(): that costs three get_running_loop()
                # calls, each a getpid() system call on Python 3.11. It moves on with each
                # read of the head (data_received: read_timeout is between two reads).
                self._read_timeout = read_timeout
                self._read_until = loop.time() + read_timeout
                self._head_timer = loop.call_at(self._read_until, self._head_check, head)
                try:
                    await head
                finally:
                    if self._head_timer is not None:
                        self._head_timer.cancel()
                        self._head_timer = None
                return
            blocked = self._blocked_since
            wait = read_timeout if blocked is None else blocked + read_timeout - loop.time()
            if wait <= 0:  # the origin's socket took nothing for read_timeout
                raise UpstreamError(504, "timeout sending the request body")
            await asyncio.wait((head, pump), timeout=wait,
                               return_when=asyncio.FIRST_COMPLETED)
            if head.done():
                head.result()  # raises the failure it holds
                return

    async def _send_body(self, body: AsyncIterator[bytes]) -> None:
        """Stream the request body (chunks already framed), pausing while the origin's
        socket buffer is full."""
        try:
            async for chunk in body:
                writable = self._writable
                if writable is not None and not writable.done():
                    self._blocked_since = self._loop.time()  # (_await_head's 504)
                    try:
                        await writable
                    finally:
                        self._blocked_since = None
                if self._closed or self.transport is None or self.transport.is_closing():
                    return
                self.transport.write(chunk)
        except ClientBodyError as exc:  # it stalled, or its client left: the exchange
            self._client_failed(exc)  # fails with the client's failure, not a 502
        except Exception:  # the client's body broke off: this message cannot be completed
            self.close()

    def _client_failed(self, failure: ClientBodyError) -> None:
        """The request body will not be completed: whoever waits for the answer's head, or
        reads its body, gets failure; the connection is closed (RFC 9112 §9.6: the origin
        holds an incomplete message, and the connection cannot carry another)."""
        self._lost = failure
        self.reusable = False
        self._head_failed(failure)
        self._wake()
        self.close()

    @property
    def received_any(self) -> bool:
        return self._received

    def fields(self) -> list[tuple[str, str]]:
        return self._fields

    async def read_chunk(self, read_timeout: float) -> bytes:
        """The next body bytes; b"" at the end. Raises UpstreamError when it broke."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < _LOW_WATER and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self._complete:
                return b""
            if self._lost is not None or self._closed:
                raise self._lost or _refused("connection reset")
            loop = self._loop
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(read_timeout, _expire, waiter, "timeout reading the body")
            try:
                await waiter
            except UpstreamError:  # only _expire fails the waiter: it timed out
                self.close()  # the rest of the body is not waited for
                raise
            finally:
                timer.cancel()
                self._waiter = None

    @property
    def whole(self) -> bool:
        """The answer is all here (read to its end, not yet taken)."""
        return self._complete and self._pump is None and self._lost is None

    def take_body(self) -> bytes:
        """The whole body of an answer read whole (finished()), at once."""
        chunks, self._buffered = self._chunks, 0
        if self._paused and self.transport is not None:  # (over _HIGH_WATER in one read)
            self._paused = False
            self.transport.resume_reading()  # else the next exchange on it reads nothing
        if len(chunks) == 1:  # (the deque stays, empty, for the connection's next answer)
            return chunks.popleft()
        body = b"".join(chunks)
        chunks.clear()
        return body

    def finished(self) -> bool:
        """The answer was read whole and the request body sent whole."""
        return self._complete and not self._chunks and (self._pump is None or self._pump.done())

    def interrupt(self, exc: BaseException) -> None:
        """A send() or read_chunk waiting for the origin raises exc now (its client
        left); send() closes the connection, read_chunk keeps what was read."""
        head = self._head
        if head is not None and not head.done() and self._receiver is None:
            self._head_failed(exc)  # (send_quick's head is its receiver's to take)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _head_failed(self, failure: BaseException) -> None:
        """The exchange failed before its head came: whoever waits for it gets failure
        (send_quick's shared pending state is left as it is: a future of its own)."""
        head = self._head
        if head is None or head.done():
            return
        if head is self.pool._pending:
            head = self._head = self._loop.create_future()
        head.set_exception(failure)

    def _fail(self, failure: UpstreamError) -> None:
        self._lost = failure
        self.reusable = False
        self._head_failed(failure)
        self._wake()
        self.close()
        if self._receiver is not None:
            self._notify()

    def _broken(self) -> None:
        """Bytes where none may be: the framing is off; never reuse (and never replay)."""
        self.reusable = False
        if self._complete:
            self.close()
        else:
            self._fail(_refused("bad framing (bytes past the message)"))

    def retire(self) -> None:
        """Closed while idle (a reload routes to its origin no more). No exchange holds
        it and a plain socket delivers no byte after close(), so the parser's reference
        back to it goes too: it is freed by reference counting, as what a reload
        replaces is, not left to the collector (tests/test_collector.py)."""
        self.close()
        if not self._tls:
            self._parser = None  # type: ignore[assignment]

    def close(self) -> None:
        self.reusable = False
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
        for timer in (self.idle_timer, self._read_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self._read_timer = None
        transport = self.transport
        # (Once closing, not again: asyncio's TLS transport forgets its protocol on a
        # second close() and fails on a third call.)
        if transport is not None and not self._closed and not transport.is_closing():
            if transport.get_write_buffer_size():
                # Request bytes the origin never took: close() would wait for them to
                # drain, which an origin that stopped reading never lets happen, and the
                # socket and its pool slot would be held for as long as it keeps it.
                # Dropped, as nginx's close(2) drops them (a reset).
                transport.abort()
            else:
                transport.close()
            if self._tls:  # its close_notify exchange may take _TLS_SHUTDOWN_TIMEOUT:
                self.pool._closing(self)  # the slot is free now, as nginx's would be


class Pool:
    """Idle connections per origin (most recently used first), at most `limit` open."""

    def __init__(self, limit: int, connect_timeout: float, keepalive: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self._ssl = ssl_context
        self._idle: dict[Origin, list[Connection]] = {}
        self._open: set[Connection] = set()
        # Connections carrying an answer that may last for hours (unbounded()): open, but
        # not counted against limit.
        self._streams: set[Connection] = set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._woken = 0  # waiters woken that have not run yet: what was freed is theirs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gathered: list[tuple[Connection, bytes]] = []
        # send_quick's head states, made once (Connection._head): never completed, and
        # completed with no result. Nothing awaits them, nor sets either again.
        self._pending: asyncio.Future[None] | None = None
        self._answered: asyncio.Future[None] | None = None
        self._closed = False  # close(): no connection is made or lent any more
        # The last answer read whole in its exchange's first read, framed by its length
        # (Connection._keep_again) and seen twice in a row, with what its parse gave: the
        # same bytes on a fresh exchange are taken again without llhttp (_take_again).
        # Keyed on every input the parse's result depends on: the bytes (status line to
        # body's end, and nothing past it), the connection's TLS note; the exchange must
        # not be to HEAD nor ask an upgrade (neither is kept, nor takes it), and a
        # connection's HTTP/1.0 note is set by the same heard() as on a parse (the pool's
        # limits bound no answer this small). One answer of up to _AGAIN_MAX bytes, its
        # fields (at most 64, made of those bytes) and no body of its own, and the bytes
        # seen last (as many): at most about 24 KiB per pool, a few for usual answers.
        self._again: _Again | None = None
        self._seen = b""  # the last such answer's bytes (up to _AGAIN_MAX), kept or not
        # Forward mode (CacheProxy.vet): for an origin a client named, what its name may
        # resolve to. Connected to by the addresses vetted, not by the name again: a second
        # lookup could answer another address (DNS rebinding) past the check.
        self.vet: Callable[[Origin], Callable[[str], UpstreamError | None] | None] | None \
            = None
        self.lookups: Lookups | None = None  # and how its names are looked up
        # Origins whose last answer said HTTP/1.0: RFC 9112 §6.1, no chunked request goes
        # to a server not known to handle HTTP/1.1 (Exchange.send). Bounded: forward mode
        # names origins without end.
        self.http10: dict[Origin, None] = {}
        # Origins a reload took out of the routes (close_idle): a connection to one is not
        # kept alive after its exchange (until one is made to it again: a forward client's).
        self._retired: set[Origin] = set()

    def heard(self, origin: Origin, version: str) -> None:
        """origin's final answer came in HTTP/version."""
        http10 = self.http10
        if version == "1.0":
            if len(http10) >= _HTTP10_ORIGINS:
                del http10[next(iter(http10))]
            http10[origin] = None
        elif http10:
            http10.pop(origin, None)

    def speaks_http10(self, origin: Origin) -> bool:
        """Whether origin's last answer said HTTP/1.0."""
        return origin in self.http10

    def gather(self, conn: Connection, head: bytes) -> None:
        """A request head to send at the end of this loop iteration, with the others made
        in it: as the client plane gathers its answers (client_conn._write)."""
        if not self._gathered:
            conn._loop.call_soon(self._send_gathered)  # (the pool's loop: no call to find it)
        self._gathered.append((conn, head))

    def _send_gathered(self) -> None:
        gathered, self._gathered = self._gathered, []
        for conn, head in gathered:
            try:  # (a method call fewer per request: the connection's state read here)
                transport = conn.transport
                if not conn._closed and transport is not None and not transport.is_closing():
                    transport.write(head)
                    conn.written = True  # (not before: a request never written may go again)
            except Exception:  # (its exchange ends in a 502 when the connection goes)
                log.exception("sending a request to %s failed", conn.origin)
                conn.close()

    def _quick_states(self) -> asyncio.Future[None]:
        """send_quick's shared head states, made on first use: the pending one."""
        loop = self.loop()
        self._answered = loop.create_future()
        self._answered.set_result(None)
        self._pending = loop.create_future()
        return self._pending

    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the pool runs on, found once."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    @property
    def in_use(self) -> int:
        return len(self._open) + self._connecting

    async def acquire(self, origin: Origin, fresh: bool = False) -> Connection:
        """An idle connection to origin, or a new one: a wait for a free connection ends
        in 503 after connect_timeout, a connect that takes longer than connect_timeout
        (counted from its start) in 504. fresh: a new one only (a retry: the idle ones may
        be as dead as the one that failed). Waiters are served first come, first served:
        a connection given back while some wait is theirs, not a newer request's."""
        if self._closed:  # shutting down: a request still going on does not start again
            raise UpstreamError(503, "the proxy is stopping")
        queued = bool(self._woken)  # what was given back is promised to a waiter woken
        conn = None if fresh or queued else self._take_idle(origin)  # the common case
        if conn is not None:
            return conn
        waiting = waited = False
        try:
            async with asyncio.timeout(self.connect_timeout) as deadline:
                while True:
                    if not queued:
                        conn = None if fresh else self._take_idle(origin)
                        if conn is None and self.in_use < self.limit:
                            waiting = False
                            if waited:  # the connect has its own connect_timeout (nginx's
                                # proxy_connect_timeout), not what the wait left of it
                                deadline.reschedule(self.loop().time() + self.connect_timeout)
                            conn = await self._connect(origin)
                        if conn is not None:
                            if waited:
                                self._pass_spare()
                            return conn
                        if self._close_an_idle_one():
                            continue
                    waiting = True
                    await self._wait_turn(first=not waited)
                    if self._closed:  # woken by close(): no connection is made any more
                        raise UpstreamError(503, "the proxy is stopping")
                    queued, waited = False, True
        except TimeoutError:
            if waiting:
                raise UpstreamError(503, f"no upstream connection free within "
                                         f"{self.connect_timeout}s ({self.limit} in use)"
                                    ) from None
            raise UpstreamError(504, "connect timeout") from None

    async def _wait_turn(self, first: bool) -> None:
        """Wait in line until woken (a connection given back, or a slot freed). One woken
        before and outrun keeps its place at the front."""
        waiter = self.loop().create_future()
        if first:
            self._waiters.append(waiter)
        else:
            self._waiters.appendleft(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._woken -= 1
                self._wake_one()  # woken, but leaving: the turn passes on
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        self._woken -= 1

    def _pass_spare(self) -> None:
        """A waiter got its connection: room left (two given back for one wake, a wake
        that found nobody then) goes to the next in line."""
        if self._waiters and (self.in_use < self.limit or any(self._idle.values())):
            self._wake_one()

    def idle(self, origin: Origin) -> Connection | None:
        """An idle connection to origin, if one is open (no wait, no connect), and not
        promised to a request woken from the queue for it (acquire)."""
        return None if self._closed or self._woken else self._take_idle(origin)

    def _take_idle(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        # Vetted again by the address it is connected to: a reload may refuse it since
        # (deny_hosts), and a kept-alive connection would carry the next request there.
        check = self.vet(origin) if self.vet is not None else None
        while idle:
            conn = idle.pop()
            conn.idle_until = None  # in use (its timer, if it fires meanwhile, does nothing)
            if conn.reusable and conn.transport is not None and not conn.transport.is_closing() \
                    and (check is None or _still_vetted(conn, check)):
                return conn
            conn.close()
        return None

    def close_idle(self, origins: frozenset[Origin], routed: frozenset[Origin]) -> None:
        """A reload routes to origins no more (and to routed): their idle connections
        close now (nginx's old workers close theirs at a reload), rather than at their
        keepalive deadline (which may be minutes); one in use finishes its exchange, then
        closes (release)."""
        self._retired = (self._retired | origins) - routed
        for origin in origins:
            for conn in self._idle.pop(origin, ()):
                self._open.discard(conn)  # gone now, not when connection_lost comes
                conn.retire()
        self._wake_one()

    def _close_an_idle_one(self) -> bool:
        """At the limit, an idle connection to another origin makes room."""
        for conns in self._idle.values():
            if conns:
                conn = conns.pop(0)
                self._open.discard(conn)  # gone now, not when connection_lost comes
                conn.close()
                return True
        return False

    async def _connect(self, origin: Origin) -> Connection:
        loop = self.loop()
        self._connecting += 1
        conn: Connection | None = None
        try:
            check = self.vet(origin) if self.vet is not None else None
            hosts = [origin.host] if check is None else await self._vetted(origin, check)
            _, conn = await connect_first(
                loop, lambda: Connection(self, origin), hosts, origin.port,
                **({"ssl": self._ssl, "server_hostname": origin.host,
                    "ssl_shutdown_timeout": _TLS_SHUTDOWN_TIMEOUT}
                   if origin.scheme == "https" else {}))
        except socket.gaierror as exc:
            raise _refused(f"DNS failure for {origin.host} ({exc.strerror})") from None
        except ConnectionRefusedError:
            raise _refused("connection refused") from None
        except ssl.SSLCertVerificationError as exc:  # which check failed, as nginx says
            raise _refused(f"TLS failure (certificate verify failed: "
                           f"{exc.verify_message or exc.reason})") from None
        except ssl.SSLError as exc:
            raise _refused(f"TLS failure ({exc.reason or exc})") from None
        except OSError as exc:
            cause = exc.strerror or str(exc)
            if not cause and isinstance(exc, ConnectionError) and origin.scheme == "https":
                # asyncio's handshake cut by the origin's close: a bare ConnectionResetError
                # (nginx: "peer closed connection in SSL handshake").
                raise _refused("TLS failure (peer closed connection in SSL handshake)"
                               ) from None
            raise _refused(f"connect failed ({cause or type(exc).__name__})") from None
        finally:
            self._connecting -= 1
            if conn is None:  # failed (or given up): its slot is free for one waiting
                self._wake_one()
        if self._retired:  # (forward mode: a client names a retired upstream again)
            self._retired.discard(origin)
        self._open.add(conn)
        return conn

    async def _vetted(self, origin: Origin, check: Callable[[str], UpstreamError | None]
                      ) -> list[str]:
        """origin's addresses, each passed by check (any refused: that refusal)."""
        addresses = await (self.lookups.addresses(origin.host, origin.port)
                           if self.lookups is not None
                           else resolved(self.loop(), origin.host, origin.port))
        for address in addresses:
            refused = check(address)
            if refused is not None:
                raise refused
        return addresses

    def unbounded(self, conn: Connection) -> None:
        """conn carries an answer that may last for hours (an event stream): it counts
        against limit no more, as a WebSocket's (Connection.detach), so that open streams
        never keep other requests from the origin; it is closed at its end (release)."""
        if conn in self._open:
            self._open.discard(conn)
            self._streams.add(conn)
            self._wake_one()

    def release(self, conn: Connection) -> None:
        """After an exchange: back to the idle list when its answer was read whole and
        its framing held, else closed."""
        # Where the exchange's 1xx answers went (a client connection's bound method): not
        # held past it, by an idle connection nor a closed one the collector frees.
        conn._interim = None
        streams = self._streams
        if streams and conn in streams:  # (pooled again, it would count past the limit)
            streams.discard(conn)
            conn.close()
            self._wake_one()
            return
        retired = self._retired
        pump = conn._pump  # (conn.finished(), inline: once per exchange)
        if conn.reusable and conn._complete and not conn._chunks \
                and (pump is None or pump.done()) and not conn._closed \
                and not (retired and conn.origin in retired):
            loop = conn._loop
            conn.idle_until = until = loop.time() + self.keepalive
            if conn.idle_timer is None:
                conn.idle_timer = loop.call_at(until, self._idle_check, conn)
            conn._head = None  # idle: any byte now is a framing error
            idle = self._idle.get(conn.origin)
            if idle is None:
                self._idle[conn.origin] = [conn]
            else:
                idle.append(conn)
        else:
            conn.close()
        if self._waiters:
            self._wake_one()

    def _idle_check(self, conn: Connection) -> None:
        """proxy.upstream_keepalive_timeout: an idle connection closes at its deadline."""
        conn.idle_timer = None
        until = conn.idle_until
        if until is None:  # in use: its release sets a new deadline (and a timer)
            return
        loop = self.loop()
        if loop.time() < until:  # used and released since: wait for the new deadline
            conn.idle_timer = loop.call_at(until, self._idle_check, conn)
            return
        conn.close()

    def _closing(self, conn: Connection) -> None:
        """conn is closing (a TLS shutdown under way): no longer counted against limit."""
        if conn in self._open:
            self._open.discard(conn)
            self._wake_one()

    def _forget(self, conn: Connection) -> None:
        """conn closed: out of the pool; an origin with no idle connection left goes
        too (in forward mode every site visited is an origin: kept, they would pile up).
        Its connections in use come back with release()."""
        self._open.discard(conn)
        self._streams.discard(conn)
        origin = conn.origin
        idle = self._idle.get(origin)
        if idle is not None:
            if conn in idle:
                idle.remove(conn)
            if not idle:
                del self._idle[origin]
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._woken += 1  # (until it runs: acquire, idle() defer to it)
                return

    def close(self) -> None:
        self._closed = True
        while self._waiters:  # each ends now (503), not at connect_timeout, nor connects
            self._wake_one()
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        for conn in [*self._open, *self._streams]:
            conn.close()
