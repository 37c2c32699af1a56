"""Accept every RFC 9110 method token while keeping llhttp's strictness on everything else.

A proxy has to forward any method (RFC 9110 §9.1: ``method = token``). aiohttp's C parser
(llhttp) knows a fixed list of methods and answers 400 to ``FOO / HTTP/1.1``; aiohttp's
pure-Python parser takes any token but is much slower. So a connection starts on llhttp and
switches to the Python parser for good when llhttp rejects a method that is a valid token.
Nothing else llhttp rejects is let through: those rejections guard against request
smuggling.

Two things make that safe:

* Replay from a message boundary only. llhttp raises on the bad method, but the bytes it
  already consumed (a body, a pipelined request) are gone. Re-parsing the failing chunk from
  its first byte could read body bytes as a request, which is request smuggling. So
  ``_FallbackParser`` tracks the stream offset where llhttp's current message starts (using
  the messages llhttp returned) and replays only from there. Where the offset is not known
  for sure, it does not fall back, and the answer stays llhttp's 400.
* Make the Python parser as strict as llhttp. It is already as strict or stricter on every
  smuggling shape we tried (see tests/test_server_protocol.py) except four, which
  ``_StrictPythonParser`` rejects itself: a Content-Length or chunk size that overflows 64
  bits, ``Transfer-Encoding: chunked, chunked``, and versions other than 0.9/1.0/1.1/2.0.
  It also keeps the method's case; aiohttp's parser upper-cases it, but methods are
  case-sensitive (RFC 9110 §9.1). One difference stays: llhttp rejects Content-Length and
  Transfer-Encoding in a chunked body's trailer section, and the Python parser drops them
  like every other trailer field. Neither parser hands request trailers to the app as
  trailers, so nothing here or upstream can take a message's length from them; but
  llhttp's wrapper adds a chunked body's last trailer field to the next message's
  fields, which is why a chunked request is the last one read on its connection
  (client_conn.ClientConnection._read_last).

Where the offset is not known: after a chunked body that the same chunk follows with more
bytes, until data again ends with an empty line, or after an upgrade request aiohttp switches
for (WebSocket, CONNECT: what follows is the tunnel's). A method llhttp rejects in that
window gets a 400, as it would without this module. An upgrade request it does not switch
for (h2c) is a request like any other: llhttp pauses after it, and the bytes after it are fed
again (``_FallbackParser._after_upgrade``).

This relies on aiohttp internals: ``RequestHandler._parser`` and the constructor
arguments that RequestHandler passes to its parser, ``Server._kwargs``,
``AppRunner._make_server``, the Python parser's ``_lines``, ``_tail``, ``_upgraded``,
``_msg_in_flight``, ``_payload_has_more_data``, ``_pending_upgrade`` and
``_payload_parser`` (and that object's ``_chunk_size``), the Python parser's refusal of a
whole feed with data after a close request or a malformed request
(``_StrictPythonParser._one_at_a_time``), and
the exceptions llhttp raises;
and that llhttp, at the end of an upgrade request aiohttp does not switch for, has read its
body, drops the rest of the feed, and parses the next feed as new messages; and which
upgrades aiohttp switches for (CONNECT, websocket: ``_switched_for``); and, for the head
memo (``HeadMemo``), that llhttp's messages are immutable, that its wrapper's count of
messages in flight rises only as it parses and falls only by ``message_consumed``, and
that the wrapper keeps nothing from one message to the next but a chunked body's last
trailer field (``test_llhttps_message_is_immutable_we_rely_on`` and the memo-against-llhttp
tests in tests/test_review_perfrehead_regressions.py).
``test_aiohttp_internals`` and ``test_llhttp_rejections_we_rely_on`` in
tests/test_server_protocol.py, ``test_llhttp_pauses_after_an_h2c_request_we_rely_on``
in tests/test_review_h2cpipe_regressions.py, and
``test_aiohttp_switches_for_websocket_and_connect_we_rely_on`` in
tests/test_review_smuggle2_regressions.py fail loudly if any of these change.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.helpers import set_exception
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.http_parser import HttpRequestParserPy, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from cacheproxy.http.abnf import TCHAR

__all__ = ["ProxyAppRunner"]

_FeedResult = tuple[Sequence[tuple[Any, Any]], bool, bytes]
_CRLFCRLF: Final = b"\r\n\r\n"
_DATA_AFTER_CLOSE: Final = "Data after `Connection: close`"  # llhttp's reason
_INVALID_VERSION: Final = "Invalid HTTP version"  # llhttp's reason
# A request line saying HTTP/1.x, x above 1 (llhttp reads one digit, and refuses it at
# once: the bytes may end there): group 1 is x.
_HIGHER_MINOR: Final = re.compile(rb"[\r\n]*[^ \r\n]+ [^ \r\n]+ HTTP/1\.([2-9])(?:\r|\Z)")

# What llhttp accepts. Anything larger is rejected on the Python path too.
_LLHTTP_VERSIONS: Final = frozenset(
    {HttpVersion(0, 9), HttpVersion10, HttpVersion11, HttpVersion(2, 0)}
)
_MAX_CONTENT_LENGTH: Final = 2**64 - 2  # llhttp: overflow error; 2**64-1 is its "no length"
_MAX_CHUNK_SIZE: Final = 2**63  # remaining bytes of the current chunk; llhttp limit is 2**64-1

# Bytes remembered since llhttp's last message boundary. Past this, the offset is "unknown".
_MAX_REPLAY: Final = 64 * 1024
# llhttp skips CR and LF before a request line.
_LEADING_NEWLINES: Final = re.compile(rb"[\r\n]*")
# HTTP/2's preface (RFC 9113 §3.4) up to its "SM", where llhttp waits to refuse it: no
# HTTP/1.x request begins so, and its empty line ends no message.
_PREFACE_BEGUN: Final = re.compile(rb"[\r\n]*PRI \* HTTP/2\.0\r\n\r\n(?:S(?:M\r?\n?\r?)?)?")
# Bytes that can still start a request whose method is a token (RFC 9110 §5.6.2). Anything
# else, such as a TLS ClientHello, gets a 400 at once instead of waiting for a line end.
_NOT_IN_TARGET: Final = re.compile(rb"[^\x21-\x7e]")
_REQUEST_START: Final = re.compile(rb"[\r\n]*" + TCHAR.encode() + rb"*(?: |\Z)")
# The preface's line and empty line as a read's last bytes, after a line end: after a
# request in the same read, the only bytes llhttp reads to an empty line without a message
# or an error (it waits for the "SM"): the read looks like the usual one, but llhttp is
# not between messages. (A field value may end so, but then not after a line end: no
# field value holds an LF, and a field line "PRI * ..." has no colon, llhttp's 400.)
_PREFACE_LINE: Final = b"\nPRI * HTTP/2.0\r\n\r\n"
_PREFACE_TAIL: Final = -len(_PREFACE_LINE)  # data[_PREFACE_TAIL:]: as many last bytes


def _is_method_rejection(exc: BadStatusLine) -> bool:
    """llhttp rejected the method: unknown, or an RTSP-only one such as PLAY with HTTP/1.x."""
    return isinstance(exc, BadHttpMethod) or "Invalid method for" in str(exc)


class _StrictPythonParser(HttpRequestParserPy):
    """aiohttp's Python request parser, made to reject what llhttp rejects, apart from
    methods, and to reject a line that cannot start a request before it ends, as llhttp does.
    """

    def parse_message(self, lines: list[bytes]) -> RawRequestMessage:
        msg = super().parse_message(lines)
        if msg.version.major == 1 and msg.version.minor > 1:
            # RFC 9110 §2.5: read as the highest 1.x this server conforms to, as the
            # llhttp path does (_until_close)
            msg = msg._replace(version=HttpVersion11)
        if msg.version not in _LLHTTP_VERSIONS:
            exc = BadStatusLine(lines[0].decode("latin-1"), "Invalid HTTP version")
            exc.head = lines[0] + b"\r\n"  # type: ignore[attr-defined]  # (as llhttp's: logged)
            raise exc
        parts = lines[0].split(b" ")
        if len(parts) > 1 and _NOT_IN_TARGET.search(parts[1]):
            # RFC 9112 §3.2, RFC 3986: a target is visible ASCII; llhttp refuses raw bytes
            # 0x80-0xFF, which this parser took and sent upstream as they were.
            raise BadStatusLine(lines[0][:100].decode("latin-1"))
        length = msg.headers.get(hdrs.CONTENT_LENGTH)
        if (
            length is not None
            and length.isascii()
            and length.isdigit()  # other values are rejected by the parser itself
            and (len(length.lstrip("0")) > 20 or int(length) > _MAX_CONTENT_LENGTH)
        ):
            raise BadHttpMessage("Content-Length overflow")
        codings = msg.headers.get(hdrs.TRANSFER_ENCODING, "").split(",")
        if [c.strip(" \t").lower() for c in codings].count("chunked") > 1:
            raise BadHttpMessage("Transfer-Encoding applies chunked more than once")
        # The parser upper-cases the method; the first token of the line is the real one.
        method = lines[0].split(b" ", 1)[0].decode("ascii")
        return msg if method == msg.method else msg._replace(method=method)

    @property
    def holding(self) -> bool:
        """Bytes may wait in the parser (after a stop on a full message queue, or an
        unfinished line): feeding it b"" again is then worth a try."""
        return bool(self._tail)

    @property
    def in_body(self) -> bool:
        """The bytes fed last went to a request body (not yet whole)."""
        return self._payload_parser is not None

    @property
    def head_begun(self) -> bool:
        """Bytes of a request head not yet whole were read (outside any body)."""
        return self._payload_parser is None and bool(
            self._lines or self._tail.lstrip(b"\r\n"))

    @property
    def queue_full(self) -> bool:
        """It stopped on a full message queue: what it holds waits to be parsed (unlike
        the unfinished line `holding` reports too, which is a head's)."""
        size = self._max_msg_queue_size
        return bool(size) and self._msg_in_flight >= size

    # Requests before a malformed one in a feed may be handed back, then its error (as
    # _FallbackParser's answers_first): ClientConnection takes them, aiohttp's
    # RequestHandler does not.
    answers_first = False
    _failed = False  # a malformed request was handed back: nothing after it is read
    settled = False  # (_FallbackParser's: never on this parser, whose properties answer)

    def feed_data(self, data: bytes, *args: Any, **kwargs: Any) -> _FeedResult:
        if self._failed:
            return [], False, b""
        # Between messages (a head's first bytes may wait in _tail): where a refusal of
        # the feed can be undone (_one_at_a_time). A few attribute reads a feed.
        between = self._payload_parser is None and not self._lines and not self._upgraded
        held, in_flight = self._tail, self._msg_in_flight
        try:
            result = super().feed_data(data, *args, **kwargs)
        except BadHttpMessage as exc:
            after_close = str(exc.message).startswith(_DATA_AFTER_CLOSE)
            if not between or isinstance(exc, LineTooLong) \
                    or not (after_close or self.answers_first):
                raise
            found = self._one_at_a_time(held + data, in_flight, after_close)
            if found is None:
                raise
            return found, False, b""
        if (
            not self._lines  # else the request line is complete
            and self._payload_parser is None
            and not self._upgraded
            and not _REQUEST_START.match(self._tail)  # the incomplete line
        ):
            exc = BadHttpMethod(self._tail[:40].decode("latin-1"))
            if not self.answers_first or not (result[0] or in_flight):
                raise exc
            # The requests parsed before it in this feed, or read before and still
            # waiting, are answered first, then its 400 (as _one_at_a_time): raised, the
            # whole feed's were lost, and the connection ended before the waiting ones'.
            exc.head = self._tail  # type: ignore[attr-defined]  # (the log's)
            self._failed = True
            return [*result[0], (exc, EMPTY_PAYLOAD)], False, b""
        payload_parser = self._payload_parser
        if payload_parser is not None and payload_parser._chunk_size > _MAX_CHUNK_SIZE:
            exc = TransferEncodingError("Chunk size overflow")
            set_exception(payload_parser.payload, exc)
            raise exc
        return result

    def _one_at_a_time(self, data: bytes, in_flight: int, after_close: bool
                       ) -> list[tuple[Any, Any]] | None:
        """aiohttp's parser refuses a whole feed for bytes after a request with
        Connection: close, or for a malformed request, and loses the requests it parsed
        in it: their answers were due (RFC 9112 §9.6 only says nothing after the close
        is processed; a malformed request's 400 ends the connection after them). data,
        from a message boundary, is parsed again one request at a time, as
        _FallbackParser._until_close does for llhttp, up to the one with close, or up to
        the malformed one, handed back as its error (answers_first); nothing after is
        read. The parser's state is put back first (nothing of the failed feed was
        handed out). None (the refusal stands, a 400) where that cannot be done for
        sure: a chunked body, an upgrade, a request that is not one whole head and
        body where the walk expects it."""
        self._lines.clear()
        self._tail, self._payload_parser, self._upgraded = b"", None, False
        self._payload_has_more_data = self._pending_upgrade = False
        self._msg_in_flight = in_flight
        found: list[tuple[Any, Any]] = []
        pos = 0
        while True:
            while data.startswith(b"\r\n", pos):  # (empty lines before a request line)
                pos += 2
            end = data.find(_CRLFCRLF, pos)
            end = len(data) if end < 0 else end + 4  # (a head not whole: may be refused)
            try:
                messages, upgraded, _ = super().feed_data(data[pos:end])
            except BadHttpMessage as bad:
                if after_close or not (found or in_flight) or isinstance(bad, LineTooLong):
                    return None  # (the close's walk meets none: parsed whole before)
                if getattr(bad, "head", None) is None:
                    bad.head = data[pos:end]  # type: ignore[attr-defined]  # (the log's)
                self._failed = True
                return [*found, (bad, EMPTY_PAYLOAD)]
            if upgraded or len(messages) != 1 or self._tail or self._lines:
                return None
            msg, payload = messages[0]
            if msg.chunked or msg.upgrade:
                return None
            if self._payload_parser is not None:  # a Content-Length body, all in data
                length = int(msg.headers.get(hdrs.CONTENT_LENGTH) or 0)
                if end + length > len(data):
                    return None
                if super().feed_data(data[end:end + length])[0] or not payload.is_eof():
                    return None
                end += length
            found.append((msg, payload))
            if msg.should_close:  # (what follows it is not read: the connection closes)
                return found
            pos = end


def _switched_for(msg: Any) -> bool:
    """aiohttp's llhttp wrapper switches protocols at the end of this upgrade request
    (CONNECT, or `Upgrade: websocket`, its ALLOWED_UPGRADES): the bytes after it are a
    tunnel's. It says so (`upgraded`) in the feed after, when the request filled the
    message queue."""
    if msg.method == "CONNECT":
        return True
    upgrade = msg.headers.get(hdrs.UPGRADE, "")
    return bool(msg.upgrade) and upgrade.isascii() and upgrade.lower() == "websocket"


def _chunked_end(parser: Any, payload: Any, data: bytes, pos: int) -> int | None:
    """Feed parser a chunked body from data[pos:], a line at a time (chunk data may hold
    line ends: fed in pieces, it is still read whole), up to its end; where it ends, or
    None when it does not end in data or is malformed."""
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        try:
            if parser.feed_data(data[pos:end])[0]:
                return None  # (a message after it: not at a line's end)
        except BadHttpMessage:
            return None
        pos = end
        if payload.is_eof():
            return pos
    return None


# A request head of at most this many bytes is kept with its message (HeadMemo): with its
# message's objects (the multidict, the field tuples, the URL) at most about 40 KiB (128
# fields of a few bytes each, by sys.getsizeof; a usual 100-byte head's about 1.5 KiB),
# one per process and set of limits.
HEAD_MEMO_MAX: Final = 4096


class HeadMemo:
    """The last request head the usual feed read (one whole request without a body that
    ends the read, no upgrade, not closing) from a parser in the state every such feed
    starts from, and llhttp's message of it. llhttp and aiohttp's wrapper make a message
    from the bytes, the parser's limits and its state alone, and the message is immutable
    (a RawRequestMessage of read-only slots, a CIMultiDictProxy, a tuple, a yarl URL): the
    same bytes, fed by a parser with the same limits in that state, give a message equal
    to it in every field, so that one is handed out again and llhttp is not called.

    Keyed on every input the message depends on: the bytes (compared whole), the limits
    (max line and field size, max fields: one HeadMemo per set, ``head_memo``), the
    queue's bound (the usual feed must not fill it), and the parser's state, which
    ``_FallbackParser`` checks itself: nothing fed yet, or the last feed was the usual
    one too, and nothing in flight. Not keyed on the connection: the message holds
    nothing of it (its payload is EMPTY_PAYLOAD, shared), so one connection's request is
    another's, plain or intercepted TLS alike. Holds one head of up to HEAD_MEMO_MAX bytes
    and its message; nothing of a connection or a stored response."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        # (bytes, (message, EMPTY_PAYLOAD)); None matches no feed
        self.last: tuple[bytes | None, Any] = (None, None)


_HEAD_MEMOS: dict[tuple[int, int, int, int], HeadMemo] = {}


def head_memo(max_line_size: int, max_field_size: int, max_headers: int, max_queue: int
              ) -> HeadMemo:
    """The process's HeadMemo for parsers with these limits (ClientConnection's are
    constants: one set); past 8 sets, a new one for the parser alone (the table bounded)."""
    key = (max_line_size, max_field_size, max_headers, max_queue)
    memo = _HEAD_MEMOS.get(key)
    if memo is None:
        memo = HeadMemo()
        if len(_HEAD_MEMOS) < 8:
            _HEAD_MEMOS[key] = memo
    return memo


class _FallbackParser:
    """Wraps llhttp. On a method it rejects, it switches to ``_StrictPythonParser``.

    ``_state`` says where llhttp is in the byte stream, in the stream's terms (bytes that
    llhttp keeps internally after a pause count as consumed):

    * ``bytes``: at a message boundary, plus these bytes of the next message;
    * ``int``: inside a Content-Length body with this many bytes still to come;
    * ``(bytes,)``: llhttp paused inside a Content-Length body whose last bytes came (its
      reader is full: flow control), and holds them, then these: a message boundary,
      once that body is read to its end;
    * ``None``: not known. A rejected method then stays a 400.

    ``settled``: the last feed was the usual one (llhttp gave one whole request without a
    body, ending the bytes fed) and left llhttp between messages with nothing held and no
    body open: ``in_body``, ``holding``, ``queue_full`` and ``head_begun`` are all False
    until the next feed. A slot read: ClientConnection reads it first on every read, where
    those four properties cost about 1,000 instructions each (a property is a Python call
    on 3.11).

    With a ``HeadMemo``, a feed of the very bytes of the last usual feed it kept, made
    where every usual feed starts (nothing fed yet, or the last feed was the usual one,
    and nothing in flight), is that feed's message again, llhttp not called (about 23,000
    instructions: llhttp, the fields' multidict, the URL), and leaves this wrapper as that
    feed would (settled, between messages). llhttp's wrapper counts the messages it
    handed out (its queue's bound) and has not counted this one: it is ``_unseen`` until
    consumed, and fed to llhttp for its count (``_count_unseen``) should a feed come
    first.
    """

    __slots__ = ("_answers_first", "_closed", "_end", "_failed", "_held", "_in_flight",
                 "_make_c", "_make_python", "_max_queue", "_memo", "_open", "_parser",
                 "_python", "_ready", "_state", "_unseen", "_upgrade_due", "_upgrading",
                 "settled")

    def __init__(
        self, c_parser: Any, make_python: Callable[[], _StrictPythonParser], max_queue: int,
        make_c: Callable[[], Any] | None = None, answers_first: bool = True,
        memo: HeadMemo | None = None,
    ) -> None:
        self._parser = c_parser
        self._make_python = make_python
        self._make_c = make_c  # a new llhttp, for _until_close
        # _until_close may hand back a refused request as its error, in the list of
        # messages, and end reading at a chunked one (ClientConnection's rules); not for
        # aiohttp's RequestHandler, which takes neither.
        self._answers_first = answers_first
        self._closed = False  # a request with Connection: close was handed back
        # Nothing after the last request handed back is read: it was malformed (handed
        # back as its error), or what followed it was lost (_after_upgrade).
        self._failed = False
        self._python: _StrictPythonParser | None = None
        self._max_queue = max_queue
        self._state: bytes | int | tuple[bytes] | None = b""
        self._open: Any = None  # payload of the last message while its body is incomplete
        self._in_flight = 0  # mirrors llhttp's count of completed, unconsumed messages
        self._held = False  # the last feed stopped on a full queue: bytes may wait
        self._end = b""  # the last 4 bytes fed
        # An upgrade request not switched to (h2c) whose body is still arriving: (message,
        # payload). llhttp pauses at its end (_after_upgrade).
        self._upgrading: tuple[Any, Any] | None = None
        self.settled = False
        # llhttp pauses at the first byte of the next feed: an upgrade request ended as its
        # message queue filled (_after_upgrade).
        self._upgrade_due = False
        self._memo = memo
        # The memo, where every usual feed starts (else None): nothing fed yet, or the last
        # feed was the usual one (not closing), so llhttp and its wrapper are between
        # messages with nothing left of the last (a chunked body's trailer field is: the
        # wrapper adds it to the next message).
        self._ready = memo
        self._unseen: bytes | None = None  # the head of a message handed out from the memo

    # The rest of the parsers' interface, passed on. (Not by __getattr__: a class with one
    # loses CPython's fast attribute paths, which cost about 1 µs a request here.)
    def feed_eof(self) -> Any:
        return (self._python or self._parser).feed_eof()

    def set_upgraded(self, val: bool) -> None:
        (self._python or self._parser).set_upgraded(val)

    def pause_reading(self) -> None:
        (self._python or self._parser).pause_reading()

    def message_consumed(self) -> None:
        if self._python is not None:
            self._python.message_consumed()
            return
        if self._unseen is not None:  # (the first in flight: llhttp never counted it)
            self._unseen = None
            return
        if self._in_flight > 0:
            self._in_flight -= 1
        self._parser.message_consumed()

    @property
    def holding(self) -> bool:
        """llhttp stopped on a full message queue (between messages) at the end of the last
        feed: what came after waits in it until messages are consumed and it is fed again
        (feed_data(b""))."""
        return self._python.holding if self._python is not None else self._held

    @property
    def in_body(self) -> bool:
        """The bytes fed last went to a request body (not yet whole)."""
        if self._python is not None:
            return self._python.in_body
        return self._open is not None and not self._open.is_eof()

    @property
    def head_begun(self) -> bool:
        """Bytes of a request head not yet whole were read, after the last whole message
        (its body too): in `_state`, when where that message ended is known."""
        if self._python is not None:
            return self._python.head_begun
        state = self._state
        return isinstance(state, bytes) and bool(state.lstrip(b"\r\n"))

    @property
    def queue_full(self) -> bool:
        """It stopped on a full message queue (llhttp: `holding`)."""
        return self._python.queue_full if self._python is not None else self._held

    def feed_data(self, data: bytes) -> _FeedResult:
        self.settled = False  # (until the usual feed's end says so)
        ready = self._ready
        if ready is not None:
            self._ready = None
            if data == (last := ready.last)[0] and self._unseen is None \
                    and not self._in_flight:
                # The last usual feed's bytes again, from where it started: its message
                # (HeadMemo), and this wrapper as that feed left it (_state b"", nothing
                # held or open, not closed: the usual feed's exit below, but for llhttp's
                # count).
                self._unseen, self._ready, self._end = data, ready, _CRLFCRLF
                self.settled = True
                return [last[1]], False, b""
            if self._unseen is not None:  # (rare) a feed before the memo's message was taken
                self._count_unseen()  # (only after a hit, which leaves it ready)
        if self._python is not None:
            return self._python.feed_data(data)
        if self._failed:  # nothing after a malformed request (or lost bytes) is read
            return [], False, b""
        state = self._state
        try:
            messages, upgraded, tail = self._parser.feed_data(data)
        except BadStatusLine as exc:
            replay = self._replay(state, data)
            if replay is not None and _is_method_rejection(exc) \
                    and _REQUEST_START.match(replay):
                python = self._make_python()
                try:
                    result = python.feed_data(replay)
                except BadHttpMessage as refused:
                    # Not a method llhttp lacks but a malformed request line (a byte in the
                    # method) after whole requests: those are answered first, as below.
                    closing = self._until_close(refused, replay)
                    if closing is None:
                        raise
                    return closing
                self._python = python
                return result
            # Another request line refused (a version, a byte in the method): the requests
            # before it in the same feed are still answered, as for any malformed request.
            closing = self._until_close(exc, replay)
            if closing is None:
                raise
            return closing
        except BadHttpMessage as exc:
            if self._closed and str(exc.message).startswith(_DATA_AFTER_CLOSE):
                return [], False, b""  # the close was handed back: nothing after it is read
            closing = self._until_close(exc, self._replay(state, data))
            if closing is None:
                raise
            return closing
        # Nearly every feed: one whole request without a body, and no body left open before
        # it, nor an upgrade (_after_upgrade). llhttp is then between messages, as _track
        # would find, without its walk.
        # (Every head not in the memo comes here: its message and llhttp's are read once,
        # and the preface's tail compared as a slice, not by bytes.endswith's argument
        # parsing.)
        if len(messages) == 1 and (first := messages[0])[1] is EMPTY_PAYLOAD \
                and not upgraded and self._open is None and data[-4:] == _CRLFCRLF \
                and self._in_flight + 1 < self._max_queue and not (msg := first[0]).upgrade:
            self._in_flight += 1
            self._end, self._state, self._held = _CRLFCRLF, b"", False
            if msg.should_close:
                self._closed = True
            elif data[_PREFACE_TAIL:] == _PREFACE_LINE:  # (rare) llhttp waits for its "SM"
                if self._answers_first:
                    return self._preface_behind(messages)
            elif (memo := self._memo) is not None:  # (never after a close: llhttp refuses)
                self._ready = memo
                # (Kept only from where a memo's message may be handed out: the same state.)
                if ready is not None and len(data) <= HEAD_MEMO_MAX and type(data) is bytes:
                    memo.last = (data, first)
            self.settled = True
            return messages, upgraded, tail
        if self._upgrade_due:  # (it paused at this feed's first byte: all of it dropped)
            self._upgrade_due = False
            return self._feed_again([], state + data)  # type: ignore[operator]  # (bytes)
        if not messages and isinstance(state, bytes) and len(state) + len(data) <= 64 \
                and _PREFACE_BEGUN.fullmatch(state + data):  # (rare: a short head begun)
            raise BadHttpMessage("HTTP/2 connection preface")  # (the log shows its line)
        upgrading = self._upgrading
        if upgraded:
            paused = False
        elif upgrading is not None:  # (rare) its body ended here: llhttp paused there
            paused = upgrading[1].is_eof()
        else:  # (rare: any upgrade request llhttp returned; the last, since it paused)
            # Not one aiohttp switches for that filled the message queue: `upgraded` comes
            # with the next feed, and what follows is the tunnel's, never fed again.
            paused = bool(messages) and messages[-1][0].upgrade \
                and not _switched_for(messages[-1][0])
        self._state = self._track(state, data, messages, upgraded, paused)
        self._held = self._in_flight >= self._max_queue
        if messages and messages[-1][0].should_close:
            self._closed = True
        elif messages and messages[-1][1] is EMPTY_PAYLOAD and not (upgraded or paused) \
                and not self._held and self._answers_first and data.endswith(_PREFACE_LINE):
            # (rare) the preface's line after the last request, which has no body: llhttp
            # read it and waits for its "SM" (as after one request, above)
            return self._preface_behind(messages)
        if paused:
            return self._after_upgrade(messages)
        return messages, upgraded, tail

    def _preface_behind(self, messages: Sequence[tuple[Any, Any]]) -> _FeedResult:
        """Requests, then HTTP/2's preface line and its empty line, in one read: llhttp
        read the preface line without a message, and waits for its "SM" to refuse it
        (RFC 9113 §3.4: no HTTP/1.x request begins so), so it is not between messages,
        and the head memo is not armed. The requests are answered, then the preface's 400
        at once, as for the preface alone or behind requests llhttp refused with it
        (_until_close); nothing after it is read. (aiohttp's RequestHandler takes no
        error among messages: there, the next feed meets llhttp's refusal.)"""
        refused = BadHttpMessage("HTTP/2 connection preface")
        refused.head = _PREFACE_LINE[1:]  # type: ignore[attr-defined]  # (the log's line)
        self._state, self._closed, self._failed = None, True, True
        return [*messages, (refused, EMPTY_PAYLOAD)], False, b""

    def _count_unseen(self) -> None:
        """The memo's message waits still, and llhttp is to read on: it reads the same
        bytes first, from the state the memo's were read in (nothing has been fed since),
        so that its count of messages in flight, and where its queue fills, are what they
        would be had it read them then. Its message, equal to the memo's, is dropped."""
        unseen, self._unseen = self._unseen, None
        self._parser.feed_data(unseen)
        self._in_flight += 1

    def _after_upgrade(self, messages: Sequence[tuple[Any, Any]]) -> _FeedResult:
        """llhttp pauses at the end of an upgrade request (with its body) that aiohttp does
        not switch for (`Upgrade: h2c`: answered in HTTP/1.1, and the connection goes on,
        RFC 9110 §7.8), and aiohttp's wrapper drops the bytes after it in the same feed.
        Those are requests pipelined behind it (RFC 9112 §9.3.2), so they are fed again,
        llhttp resuming between messages. They are `_state`, as _track found them after
        the upgrade request; where that is not known (after a chunked body, or where the
        stream's offset was lost before it) the upgrade request is answered with close,
        and nothing after it is read (RFC 9112 §9.6; the client sends the rest again on
        a new connection, §9.3.1).
        Likewise for one with close itself. Called with llhttp's messages of the feed when
        the upgrade request, or its body, ended in it (then it is the last of them)."""
        found = list(messages)
        upgrading, self._upgrading = self._upgrading, None
        if upgrading is None and not found[-1][1].is_eof():  # its body is still arriving
            if not isinstance(self._state, int):
                found[-1] = (found[-1][0]._replace(should_close=True), found[-1][1])
                self._closed = True  # (its end will not be found: nothing after is read)
            self._upgrading = found[-1]
            return found, False, b""
        msg = found[-1][0] if upgrading is None else upgrading[0]
        rest = self._state
        if not isinstance(rest, bytes) or msg.should_close:
            if not msg.should_close and found:  # (else handed back before, marked then)
                found[-1] = (msg._replace(should_close=True), found[-1][1])
            self._state, self._closed, self._failed = None, True, True
            return found, False, b""
        if self._held:  # the queue filled at its end: llhttp keeps rest for its next feed,
            self._upgrade_due = True  # where it pauses at once and drops it
            return found, False, b""
        return self._feed_again(found, rest)

    def _feed_again(self, found: list[tuple[Any, Any]], rest: bytes) -> _FeedResult:
        """The requests found, then those of rest, which llhttp dropped after an upgrade
        request: rest is fed again from a message boundary."""
        self._state = b""
        if not rest:
            return found, False, b""
        try:
            more, upgraded, tail = self.feed_data(rest)
        except HttpProcessingError as exc:
            if getattr(exc, "head", None) is None:
                exc.head = self.rejected(rest)  # type: ignore[attr-defined]  # (the log's)
            if not found:
                raise
            # The requests before a malformed one are answered, then its 400 (as
            # _until_close hands them back); for aiohttp's RequestHandler, which takes no
            # error among them, the upgrade request says close instead.
            self._state, self._closed, self._failed = None, True, True
            if self._answers_first:
                return [*found, (exc, EMPTY_PAYLOAD)], False, b""
            found[-1] = (found[-1][0]._replace(should_close=True), found[-1][1])
            return found, False, b""
        if found:  # (more than the one request `settled` vouches for: read in full)
            self.settled = False
        return [*found, *more], upgraded, tail

    def _until_close(self, exc: BadHttpMessage, replay: bytes | None) -> _FeedResult | None:
        """llhttp refuses data after a request with Connection: close (or an HTTP/1.0 one
        without keep-alive), or a malformed request, and drops the messages it completed
        in the same feed: the client's valid requests would get no answer. RFC 9112 §9.6:
        a request with close is answered (then the connection closes), and what follows
        it is not processed. So the requests up to it, or up to the malformed one, are
        parsed again from their first byte by a new llhttp, one at a time, and nothing
        after is fed; the malformed one is handed back as its error (a 400). None (the
        400 stands for all) where that cannot be done for sure: a chunked body, an
        upgrade, a body not all here.

        A request line llhttp refused for its version `HTTP/1.x`, x above 1, is read as
        HTTP/1.1 instead: RFC 9110 §2.5, a recipient SHOULD process a higher minor version
        of a major version it implements as the highest minor it conforms to (nginx and
        Squid do). The walk rewrites the digit of each such request line it meets (the
        head may not be whole yet), and where it would give up, the rewritten bytes are
        fed again from their first byte to a new llhttp."""
        if replay is None or self._make_c is None:
            return None
        after_close = str(exc.message).startswith(_DATA_AFTER_CLOSE)
        parser = self._make_c()
        found: list[tuple[Any, Any]] = []
        pos = 0
        rewritten: bytearray | None = None  # (in place: one copy, however many lines)

        def given_up() -> _FeedResult | None:
            if rewritten is None:
                return None
            self._parser, self._state, self._open = self._make_c(), b"", None  # type: ignore[misc]
            self._in_flight, self._held = 0, False
            return self.feed_data(bytes(rewritten))

        while True:
            # (RFC 9112 §2.2: empty lines before a request line are ignored, llhttp's too)
            pos = _LEADING_NEWLINES.match(replay, pos).end()  # type: ignore[union-attr]
            higher = _HIGHER_MINOR.match(replay, pos)
            if higher is not None:
                if rewritten is None:
                    replay = rewritten = bytearray(replay)
                rewritten[higher.start(1)] = 0x31  # "1"
            # In llhttp's strict mode a header section ends at the first CRLFCRLF. A head
            # not whole yet is fed too: when llhttp refused it, the requests before it
            # are answered as for a whole one.
            end = replay.find(_CRLFCRLF, pos)
            whole = end >= 0
            end = end + 4 if whole else len(replay)
            try:
                messages, upgraded, _ = parser.feed_data(bytes(replay[pos:end]))
                if whole and not messages and not upgraded:
                    # A whole head that gives no message: HTTP/2's preface (`PRI *
                    # HTTP/2.0`, RFC 9113 §3.4), after which llhttp waits for its "SM" to
                    # refuse it. Refused here, after the requests before it.
                    raise BadHttpMessage("HTTP/2 connection preface")
            except BadHttpMessage as bad:
                # (After a rewrite, the bytes fed again meet this head as any feed would:
                # an unknown method goes to the Python parser, a malformed head gets its
                # 400 after the requests before it.)
                if rewritten is not None or after_close or not self._answers_first \
                        or not (found or self._in_flight):
                    return given_up()
                # Requests before a malformed one in the same feed: llhttp dropped them
                # with it, where fed apart they are answered. They are, in order; then the
                # malformed one's 400, and nothing after it is read (the connection
                # closes after a 400). So too where it is the first of the feed but
                # requests read before still wait (a feed of what llhttp held at a full
                # queue): raised, it ended the connection before their answers.
                bad.head = bytes(replay[pos:end])  # type: ignore[attr-defined]  # (for the log)
                found.append((bad, EMPTY_PAYLOAD))
                self._parser, self._state, self._open = parser, None, None
                self._in_flight, self._held, self._closed = len(found) - 1, False, True
                self._failed = True
                return found, False, b""
            if not whole or upgraded or len(messages) != 1:
                return given_up()
            msg, payload = messages[0]
            if msg.chunked:
                # The last request read on its connection (ClientConnection._read_last):
                # its body is fed a line at a time to where it ends, and nothing after it.
                end = _chunked_end(parser, payload, replay, end)
                if end is None:
                    return given_up()
                if not self._answers_first and not msg.should_close:
                    # aiohttp's RequestHandler reads on after a chunked request: so does
                    # the walk, to the higher minors after it (else all got a 400)
                    found.append((msg, payload))
                    pos = end
                    continue
                if not self._answers_first:
                    return given_up()
                found.append((msg, payload))
                self._parser, self._state, self._open = parser, None, None
                self._in_flight, self._held, self._closed = len(found), False, True
                self._failed = True  # (nothing after it is read)
                return found, False, b""
            if payload is not EMPTY_PAYLOAD:
                length = msg.headers.get(hdrs.CONTENT_LENGTH)
                if length is None or end + int(length) > len(replay):
                    return given_up()
                if parser.feed_data(bytes(replay[end:end + int(length)]))[0]:
                    return given_up()
                end += int(length)
            found.append((msg, payload))
            if msg.should_close:  # the last one read: a new feed meets llhttp's refusal
                self._parser, self._state, self._open = parser, None, None
                self._in_flight, self._held, self._closed = len(found), False, True
                return found, False, b""
            pos = end

    def rejected(self, data: bytes) -> bytes | None:
        """After feed_data(data) raised: the bytes from the start of the message llhttp
        refused, when where it starts is known for sure (the log shows its request line).
        They may begin with a message before it (one _until_close could not answer): then
        their first head, fed alone, is a whole request, and None is the answer."""
        replay = None if self._python is not None else self._replay(self._state, data)
        if replay is None:
            return None
        pos = _LEADING_NEWLINES.match(replay).end()  # type: ignore[union-attr]
        end = replay.find(_CRLFCRLF, pos)
        if end < 0 or end + 4 == len(replay):
            return replay  # no head, or its own only
        if self._make_c is None:
            return None
        try:
            messages, upgraded, _ = self._make_c().feed_data(replay[:end + 4])
        except BadHttpMessage:
            return replay  # the first head is the one refused
        # No message nor refusal: HTTP/2's preface (RFC 9113 §3.4), refused at its "SM".
        return replay if not messages and not upgraded else None

    def _replay(self, state: bytes | int | tuple[bytes] | None, data: bytes) -> bytes | None:
        """The bytes from the start of the message llhttp rejected, if known."""
        if isinstance(state, bytes):
            return state + data
        if isinstance(state, tuple):  # (the body llhttp paused in ended: a boundary)
            return state[0] + data if self._open is not None and self._open.is_eof() \
                else None
        if isinstance(state, int) and len(data) > state and self._open.is_eof():
            return data[state:]  # the body ended inside data, then the rejected request
        return None

    def _track(
        self,
        state: bytes | int | tuple[bytes] | None,
        data: bytes,
        messages: Sequence[tuple[Any, Any]],
        upgraded: bool,
        paused: bool = False,
    ) -> bytes | int | tuple[bytes] | None:
        self._end = data[-4:] if len(data) >= 4 else (self._end + data)[-4:]
        # llhttp counts a message when it completes, and pauses (keeping the rest of the
        # data) once the count reaches max_queue. Count the same way.
        completed, previous = 0, self._open
        if previous is not None and previous.is_eof():
            completed, self._open = 1, None
        for _, payload in messages:
            if payload.is_eof():
                completed += 1
            else:
                self._open = payload
        self._in_flight += completed

        if upgraded:
            return None
        # Data that ends with an empty line, with every body complete and llhttp not
        # paused, leaves llhttp between messages: that empty line ends a header section,
        # a chunked body or nothing. This also finds the boundary again after "unknown".
        # (Not after an upgrade request: llhttp paused there, and dropped what followed.)
        if self._open is None and self._end == b"\r\n\r\n" and self._in_flight < self._max_queue \
                and not paused:
            return b""
        if isinstance(state, tuple):  # (rare) llhttp resumed the body it paused in, or not
            after = state[0] + data
            if previous is None:
                return None
            if not previous.is_eof():
                return (after,) if len(after) <= _MAX_REPLAY else None
            state, data = b"", after
        elif isinstance(state, int):
            if len(data) < state:
                return state - len(data)
            if not previous.is_eof():  # (rare) paused in it: its end is state bytes in
                return (data[state:],) if len(data) - state <= _MAX_REPLAY else None
            state, data = b"", data[state:]  # the body ended; data[state:] is new
        if isinstance(state, bytes):
            if messages:
                return self._after_messages(state + data, messages, paused)
            # (After an upgrade request, what follows is fed again at once, whatever its size.)
            return state + data if len(state) + len(data) <= _MAX_REPLAY or paused else None
        return None

    def _after_messages(
        self, buf: bytes, messages: Sequence[tuple[Any, Any]], paused: bool = False
    ) -> bytes | int | tuple[bytes] | None:
        """Find where the messages llhttp parsed from buf end.

        buf starts at a message boundary. In llhttp's strict request mode, a header
        section ends at the first CRLFCRLF after the request line: no field line can hold
        a CR or LF, and obs-fold is rejected. A body then has Content-Length bytes. After
        an upgrade request (the last: llhttp pauses there), what follows is the bytes it
        dropped (_after_upgrade).
        """
        pos = 0
        for msg, payload in messages:
            if msg.chunked or msg.version not in (HttpVersion10, HttpVersion11) \
                    or (msg.upgrade and _switched_for(msg)):
                return None  # chunked: length unknown here; HTTP/0.9: no header section;
                # a tunnel's bytes follow (no message boundary after it)
            if msg.upgrade and (payload is EMPTY_PAYLOAD) \
                    != (int(msg.headers.get(hdrs.CONTENT_LENGTH) or 0) == 0):
                return None  # (an llhttp that would not read an upgrade request's body)
            pos = _LEADING_NEWLINES.match(buf, pos).end()  # type: ignore[union-attr]
            if not buf.startswith(msg.method.encode("ascii") + b" ", pos):
                return None
            header_end = buf.find(b"\r\n\r\n", pos)
            if header_end < 0:
                return None
            pos = header_end + 4 + int(msg.headers.get(hdrs.CONTENT_LENGTH) or 0)
        if pos > len(buf):  # the last body is still arriving
            return pos - len(buf) if self._open is not None else None
        rest = buf[pos:]
        if self._open is not None:  # (rare) the last body ended in buf, llhttp paused in it
            return (rest,) if len(rest) <= _MAX_REPLAY and not paused else None
        return rest if len(rest) <= _MAX_REPLAY or paused else None


class _ProxyServer(web.Server):
    """A web.Server whose connections use ``_FallbackParser`` (or, without the C
    extension, ``_StrictPythonParser``)."""

    __slots__ = ()

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        auto_decompress: bool = self._kwargs.get("auto_decompress", True)

        def make(kind: Any) -> Any:
            # The same arguments as RequestHandler.__init__ gives its parser.
            return kind(
                handler,
                handler._loop,
                handler._read_bufsize,
                max_line_size=handler.max_line_size,
                max_field_size=handler.max_field_size,
                max_headers=handler.max_headers,
                payload_exception=RequestPayloadError,
                auto_decompress=auto_decompress,
                max_msg_queue_size=handler._max_msg_queue_size,
            )

        def make_python() -> _StrictPythonParser:
            return make(_StrictPythonParser)  # type: ignore[no-any-return]

        parser: Any
        if isinstance(handler._parser, HttpRequestParserPy):  # AIOHTTP_NO_EXTENSIONS=1
            parser = make_python()
        else:
            c_parser = type(handler._parser)
            parser = _FallbackParser(handler._parser, make_python, handler._max_msg_queue_size,
                                     lambda: make(c_parser), answers_first=False)
        handler._parser = parser
        return handler


class ProxyAppRunner(web.AppRunner):
    """web.AppRunner that serves any method token. Takes the same arguments."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if type(server) is not web.Server:
            raise TypeError(f"expected a plain web.Server, got {type(server)!r}")
        # Same object and settings; only __call__, which makes each connection's
        # handler, changes. _ProxyServer adds no fields, so the layout is the same.
        server.__class__ = _ProxyServer
        return server
