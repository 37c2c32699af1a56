"""The upstream exchange's I/O: send a request over the connection pool, stream the answer
to the client, and store the body when the flow decided to (Store) and it arrives whole
within the object-size limit. It performs decisions; it makes none."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from functools import lru_cache, partial

from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from cacheproxy.config import ProxyConfig, masked_url
from cacheproxy.http.fields import end_to_end
from cacheproxy.http.flow import NotModified
from cacheproxy.http.ranges import NOT_ON_PART, Partial, content_range
from cacheproxy.http.storability import is_event_stream
from cacheproxy.http.stored import CachedResponse, first_value
from cacheproxy.observe.outcome import Outcome
from cacheproxy.policies.referer import redact
from cacheproxy.proxy.collapse import Release
from cacheproxy.proxy.downstream import (
    Answer,
    Body,
    ClientBodyError,
    ClientGone,
    ClientMessage,
    Downstream,
)
from cacheproxy.proxy.fill import Fill, FillBudget
from cacheproxy.proxy.forwarding import OwnFields, via_value
from cacheproxy.proxy.invalidations import Invalidations
from cacheproxy.proxy.pool import IDEMPOTENT, Connection, Interim, Origin, Pool
from cacheproxy.proxy.respond import mark
from cacheproxy.proxy.upstream import UpstreamError
from cacheproxy.store import Store
from cacheproxy.tls.upstream import upstream_ssl_context

log = logging.getLogger("cacheproxy")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_WITH_CONTENT = frozenset({"POST", "PUT", "PATCH"})
# Downstream.watch_gone: what to call when the client leaves (None: nothing).
Watch = Callable[[Callable[[], None] | None], None]
_REPLAYABLE = 64 * 1024  # request bodies up to this size are kept for a second attempt
_MEMO_URL = 2048  # upstream URLs up to this long are parsed once (1,024 kept)


class UpstreamResponse:
    """The head of the upstream's answer, and its body as it arrives."""

    __slots__ = ("_conn", "_done", "_pool", "_timeout", "content_length", "fields", "reason",
                 "sent", "status", "unstored", "version")

    def __init__(self, pool: Pool, conn: Connection, read_timeout: float, sent: float
                 ) -> None:
        self._pool, self._conn, self._timeout, self._done = pool, conn, read_timeout, False
        # When its request was first sent (time.perf_counter()): an invalidation or purge
        # of its key since then means it is not stored (proxy/invalidations.py).
        self.sent = sent
        # Why its body, to be stored, was not: "too-big" or "fill-budget" (Fill.why_not);
        # either way the response it outdates goes (Store.outdates)
        self.unstored = ""
        self.status = conn.status
        self.reason = conn.reason
        self.version = conn.version
        self.fields = conn.fields()  # as received, in order
        length = conn.content_length  # llhttp checked it is one number
        self.content_length = int(length) if length is not None and length.isdigit() else None

    async def readany(self) -> bytes:
        """The next body bytes, b"" at the end; UpstreamError when the body broke off."""
        return await self._conn.read_chunk(self._timeout)

    def release(self) -> None:
        """Done with it: the connection is pooled again if its answer was read whole."""
        if not self._done:
            self._done = True
            self._pool.release(self._conn)

    def interrupt(self, exc: BaseException) -> None:
        """A readany waiting for the origin raises exc now. Once released or closed, the
        connection may carry another request already (relay stores the body after its
        release): this client's leaving is nothing to that one."""
        if not self._done:
            self._conn.interrupt(exc)

    def unbounded(self) -> None:
        """It may last for hours: its connection counts against max_connections no more
        (Pool.unbounded)."""
        self._pool.unbounded(self._conn)

    def close(self) -> None:
        """Done with it before its end: the connection is closed."""
        if not self._done:
            self._conn.close()
            self.release()

    def detach(self) -> tuple[asyncio.Transport, bytes] | None:
        """A 101's connection and the bytes read after it, for a tunnel: out of the pool
        for good (Connection.detach); None when it closed meanwhile."""
        self._done = True
        return self._conn.detach()


def _request_head(method: str, target: str, fields: Sequence[tuple[str, str]], chunked: bool,
                  own: OwnFields | None = None, after: Sequence[tuple[str, str]] = ()
                  ) -> bytes:
    """own: the proxy's fields, sent after fields, their lines made (OwnFields.lines);
    after: fields sent after those."""
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in fields:
        lines.append(f"{name}: {value}")
    ends = 0
    if own is not None:  # (its lines hold no CR or LF but their ends: OwnFields checks)
        lines.append(own.lines)  # type: ignore[arg-type]
        ends = own.count - 1
    for name, value in after:
        lines.append(f"{name}: {value}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines.append("\r\n")
    text = "\r\n".join(lines)
    # No CR or LF but the line ends (no request splitting): one scan of the whole head, in
    # C, rather than four per field.
    ends += len(lines)
    if text.count("\r") != ends or text.count("\n") != ends:
        name = next((n for n, v in (*fields, *after) if "\r" in n + v or "\n" in n + v),
                    method)
        raise UpstreamError(502, f"a field cannot be sent ({name!r})")
    # Field values were decoded as UTF-8 with surrogateescape: the bytes go back as received.
    return text.encode("utf-8", "surrogateescape")


@lru_cache(maxsize=1024)
def _upstream_target(url: str) -> tuple[Origin, str, str | None]:
    """Where a request for url goes, its request target, and the Basic credentials its
    userinfo gives (None without any). Memoised: the same URLs come again and again."""
    # "OPTIONS *" forwarded (RFC 9112 §3.2.4) comes as the origin's URL and "*": no path.
    asterisk = url.endswith("*") and "/" not in url.partition("://")[2]
    parsed = URL(url[:-1] if asterisk else url, encoded=True)
    scheme = parsed.scheme
    origin = Origin(scheme, parsed.raw_host or "",
                    parsed.explicit_port or _DEFAULT_PORTS.get(scheme, 80))
    credentials = None if parsed.raw_user is None else _basic(parsed)
    target = "*" if asterisk else parsed.raw_path_qs or "/"
    if url.endswith("?") and not parsed.raw_query_string:
        target += "?"  # yarl drops an empty query, which the key keeps (RFC 3986 §6.2.3)
    return origin, target, credentials


# Request lines made by request_head_again, by (method, url): the same few URLs come
# again and again. Bounded: emptied when full (a crawl's URLs each come once).
_LINES: dict[tuple[str, str], bytes] = {}
_MAX_LINES = 1024


def _request_line(method: str, url: str) -> bytes:
    """The request line for method and url (kept in _LINES when the URL is short enough
    to be memoised); no CR or LF in it (no request splitting)."""
    short = len(url) <= _MEMO_URL
    target = (_upstream_target if short else _upstream_target.__wrapped__)(url)[1]
    if "\r" in target or "\n" in target:
        raise UpstreamError(502, "the request target cannot be sent")
    line = f"{method} {target} HTTP/1.1\r\n".encode("utf-8", "surrogateescape")
    if short:
        if len(_LINES) >= _MAX_LINES:
            _LINES.clear()
        _LINES[method, url] = line
    return line


def _basic(url: URL) -> str:
    """RFC 7617: the upstream URL's user and password as Basic credentials."""
    pair = f"{url.user or ''}:{url.password or ''}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _timed(body: Body, timeout: float) -> AsyncIterator[bytes]:
    """The client's body as it arrives, each read within timeout: nginx's
    client_body_timeout bounds the wait between two successive reads, not the whole body
    (a slow but steady upload takes as long as it takes). ClientBodyError when it stalls
    (408), breaks its framing (400) or its client leaves mid-body (499): the client's
    failure, not the origin's."""
    while True:
        try:
            async with asyncio.timeout(timeout):
                data = await body.readany()
        except TimeoutError:
            raise ClientBodyError(408, "the request body stalled", timeout) from None
        except ConnectionError:
            raise ClientBodyError(499, "the client left mid-body") from None
        except HttpProcessingError:  # (set by the client connection's parser)
            raise ClientBodyError(400, "the request body broke its framing") from None
        if not data:
            return
        yield data


async def _read_whole(body: Body, timeout: float) -> bytes:
    """A small body, read whole before it is sent (it may be sent twice), by _timed."""
    return b"".join([data async for data in _timed(body, timeout)])


async def _read_upto(body: Body, timeout: float, limit: int) -> bytes | None:
    """A body read whole, by _timed; None once it passes limit bytes (the rest unread)."""
    parts, size = [], 0
    async for data in _timed(body, timeout):
        size += len(data)
        if size > limit:
            return None
        parts.append(data)
    return b"".join(parts)


async def _framed(body: Body, chunked: bool, timeout: float) -> AsyncIterator[bytes]:
    """RFC 9112 §7.1: a body of unknown length goes upstream chunked."""
    async for data in _timed(body, timeout):
        yield b"%x\r\n%b\r\n" % (len(data), data) if chunked else data
    if chunked:
        yield b"0\r\n\r\n"


def _nothing(failed: bool = False, left: bool = False) -> None:
    pass


class Exchange:
    """One per proxy: the pooled upstream session and the store."""

    def __init__(self, config: ProxyConfig, store: Store, fill_buffer_bytes: int) -> None:
        self.config = config
        self.store = store
        self.read_timeout = config.read_timeout
        self.send_timeout = config.send_timeout
        # Requests that do not say their own (ClientRequest.body_timeout: the client
        # connection's, as configured when it connected) get this one; a reload sets it.
        self.client_body_timeout = config.client_body_timeout
        self.budget = FillBudget(fill_buffer_bytes)
        self.invalidations = Invalidations()
        self.pool = Pool(config.max_connections, config.connect_timeout,
                         config.upstream_keepalive_timeout,
                         upstream_ssl_context(config.upstream_ca_file))

    async def close(self) -> None:
        self.pool.close()

    @staticmethod
    def origin_of(url: str) -> Origin:
        """Where a request for url goes."""
        return (_upstream_target if len(url) <= _MEMO_URL else _upstream_target.__wrapped__)(
            url)[0]

    @staticmethod
    def request_head(method: str, url: str, fields: list[tuple[str, str]], body: bool
                     ) -> tuple[Origin, bytes, str | None]:
        """Where the request goes, its head, and the Content-Length it has (a body
        without one goes chunked; None for a request without content and of a method
        without: nothing is framed by it)."""
        origin, target, credentials = (_upstream_target if len(url) <= _MEMO_URL
                                       else _upstream_target.__wrapped__)(url)
        # A request without content has no length to frame it with, unless its method
        # calls for one (below): the fields are searched only then (not per GET).
        length = next((v for k, v in fields if k.lower() == "content-length"), None) \
            if body or method in _WITH_CONTENT else None
        if not body and length is None and method in _WITH_CONTENT:
            # RFC 9110 §8.6: a POST (PUT, PATCH) without content says so; servers such
            # as IIS answer 411 to one that does not.
            fields = [*fields, ("Content-Length", "0")]
        if credentials is not None:  # credentials in proxy.upstream / a route's URL
            fields = [(k, v) for k, v in fields if k.lower() != "authorization"]
            # RFC 9110 §9.3.8: never in a TRACE, whose answer echoes them to the client.
            if method != "TRACE":
                fields.append(("Authorization", credentials))
        return origin, _request_head(method, target, fields, body and length is None), length

    @staticmethod
    def request_head_parts(method: str, url: str, fields: list[tuple[str, str]],
                           own: OwnFields, after: Sequence[tuple[str, str]]) -> bytes:
        """request_head's head for a request without content (GET, HEAD) whose fields are
        request_field_parts's (fields, own) then after: the proxy's own lines as they
        were made once (OwnFields.lines), not formatted again per request."""
        target, credentials = (_upstream_target if len(url) <= _MEMO_URL
                               else _upstream_target.__wrapped__)(url)[1:]
        if own.lines is None or credentials is not None or method in _WITH_CONTENT:
            # (request_head's own cases: credentials, a length to frame; a field with CR)
            return Exchange.request_head(method, url, [*fields, *own, *after], False)[1]
        return _request_head(method, target, fields, False, own, after)

    @staticmethod
    def request_head_again(method: str, url: str, field_lines: bytes) -> bytes:
        """The head of a request without content (GET, HEAD) whose field lines, after its
        request line, are field_lines: those request_head made for an earlier request
        with the same fields, reused (ClientConnection._upstream_head). The request line
        alone is made; it holds no CR or LF (no request splitting), as _request_head
        checks of the whole head."""
        line = _LINES.get((method, url))
        if line is None:
            line = _request_line(method, url)
        return line + field_lines

    async def send(
        self, method: str, url: str, fields: list[tuple[str, str]], body: Body | None,
        outcome: Outcome | None = None, first_sent: float | None = None,
        body_timeout: float | None = None, interim: Interim | None = None,
        upgrade: bool = False, watch: Watch | None = None,
        unsent_watch: Watch | None = None,
    ) -> UpstreamResponse:
        """Send the request and return the answer's head. A request that failed on a reused
        connection before any byte of the answer came is sent once more on a new one, when
        nothing of it was written or it is idempotent without a body (the origin may have
        closed the idle connection just then). first_sent: this is that second time, and
        the first went out then (time.perf_counter(): upstream_ms counts from it).
        body_timeout: proxy.client_body_timeout for this request (else the exchange's).
        interim: where the 1xx answers before the final one go (the client's, Downstream).
        upgrade: the request asks to switch protocols; a 101 is its answer (detach()).
        watch: the client's Downstream.watch_gone, for a request the proxy gives up when
        its client leaves before the answer (ClientGone; the connection is closed).
        unsent_watch: the same, for one given up only when its client leaves before it
        has a connection (a miss that may be stored, sent, is fetched on for others).
        Raises ClientBodyError when the client's body stalls or breaks off: the upstream
        connection, if one carried part of it, is closed, never reused."""
        timeout = self.client_body_timeout if body_timeout is None else body_timeout
        retry = first_sent is None
        started = time.perf_counter() if first_sent is None else first_sent
        origin, head, length = self.request_head(method, url, fields, body is not None)
        chunked = body is not None and length is None
        # A small body of an idempotent request is read first, so it can be sent again.
        kept: bytes | None = None
        if chunked and self.pool.speaks_http10(origin):
            # RFC 9112 §6.1: no Transfer-Encoding to a server not known to handle HTTP/1.1
            # (its last answer said HTTP/1.0: it would read no body, or take the chunks
            # for one). Sent with its length, as nginx does; Squid's 411 past 64 KB.
            assert body is not None
            kept = await _read_upto(body, timeout, _REPLAYABLE)
            if kept is None:
                raise UpstreamError(411, "a chunked request body over 64 KiB cannot go to"
                                         " an HTTP/1.0 origin")
            origin, head, length = self.request_head(
                method, url, [*fields, ("Content-Length", str(len(kept)))], True)
            chunked = False
        elif (body is not None and method in IDEMPOTENT and length is not None
                and length.isdigit() and int(length) <= _REPLAYABLE):
            kept = await _read_whole(body, timeout)  # (nothing upstream started yet)
        replayable = body is None or kept is not None
        for attempt in (1, 2) if retry else (2,):
            # The retry on a new connection: the pool's other idle ones may be as dead
            # as the one that failed (an origin restarted, a NAT that dropped them).
            conn = await self._acquire(origin, watch or unsent_watch, fresh=attempt == 2)
            reused = conn.used
            stream = None if body is None else _once(kept) if kept is not None \
                else _framed(body, chunked, timeout)
            if watch is not None:
                watch(partial(conn.interrupt, ClientGone("client connection lost")))
            try:
                await conn.send(head, stream, method == "HEAD", self.read_timeout, interim,
                                upgrade)
            except (ClientBodyError, ClientGone):
                self.pool.release(conn)  # (closed: the origin has an incomplete message)
                raise
            except UpstreamError as exc:
                self.pool.release(conn)
                if attempt == 1 and self.retries(method, conn, reused, exc, replayable):
                    continue  # the origin closed the pooled connection as it was used
                raise
            finally:
                if watch is not None:
                    watch(None)
            break
        if outcome is not None:
            outcome.upstream_ms = (time.perf_counter() - started) * 1000
            outcome.fwd_status = conn.status
        return UpstreamResponse(self.pool, conn, self.read_timeout, started)

    async def _acquire(self, origin: Origin, watch: Watch | None, fresh: bool = False
                       ) -> Connection:
        """pool.acquire; with watch, ClientGone when the client left before a connection
        was found (all in use, a connect under way): nothing is sent for it, and the wait
        ends when it leaves, not when a connection comes free or connect_timeout passes
        (nginx finalizes a request without an upstream connection at its client's close).
        fresh: a new connection, not an idle one (Pool.acquire)."""
        pool = self.pool
        if watch is None:
            return await pool.acquire(origin, fresh)
        conn = None if fresh else pool.idle(origin)  # the common case: no wait
        if conn is not None:
            return conn
        acquiring = asyncio.ensure_future(pool.acquire(origin, fresh))
        left: list[bool] = []

        def gone() -> None:
            left.append(True)
            acquiring.cancel()

        watch(gone)  # (told at once if it left already)
        try:
            conn = await acquiring
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if left and (task is None or not task.cancelling()):
                raise ClientGone("client connection lost") from None
            raise
        finally:
            watch(None)
        if left:  # (a connection came as it left)
            pool.release(conn)  # (unused: idle again, or closed if never used)
            raise ClientGone("client connection lost")
        return conn

    @staticmethod
    def retries(method: str, conn: Connection, reused: bool, exc: UpstreamError,
                replayable: bool = True) -> bool:
        """Whether a request that failed on conn goes once more: it was reused, nothing of
        the answer came, and nothing of it was written or it may be sent again
        (replayable: no body, or a small one kept). Not after a timeout (a 504): a slow
        origin would get the request twice."""
        return reused and exc.status == 502 and not conn.received_any \
            and (not conn.written or (method in IDEMPOTENT and replayable))

    async def put(self, entry: CachedResponse, resp: UpstreamResponse) -> bool:
        """Store entry (its body filled), unless its key was invalidated (§4.4) or purged since
        resp's request was sent: the answer predates that, and would be served as fresh
        after it."""
        if self.invalidations.since(entry.key, resp.sent):
            return False
        return await self.store.put(entry)

    async def relay(
        self, out: Downstream, request: ClientMessage, resp: UpstreamResponse,
        outcome: Outcome, store: CachedResponse | None, max_object: int,
        release: Release = _nothing, *, upstream: str, target: str, name: str,
        part: Partial | None = None,
    ) -> None:
        """_relay, told at once when the client leaves (a quiet stream's next byte may be
        minutes away: nginx closes the upstream then too)."""
        out.watch_gone(partial(resp.interrupt, ClientGone("client connection lost")))
        try:
            await self._relay(out, request, resp, outcome, store, max_object, release,
                              upstream=upstream, target=target, name=name, part=part)
        finally:
            out.watch_gone(None)

    async def _relay(
        self, out: Downstream, request: ClientMessage, resp: UpstreamResponse,
        outcome: Outcome, store: CachedResponse | None, max_object: int,
        release: Release, *, upstream: str, target: str, name: str, part: Partial | None,
    ) -> None:
        """Stream the upstream response to the client; with store (the Store decision's
        entry), keep a copy and store it once whole. release wakes collapsed waiters once
        the store is settled either way. A HEAD client gets no body (its request may
        have been sent as GET so that the answer could be stored, RFC 9110 §9.3.2).
        upstream and target (with its query) name the request in the log, as the
        driver's line for a failure before the head does. part: the one range of the
        (whole, known-length) 200 the client asked for, sent as a 206 (RFC 9110 §15.3.7)
        as the body streams."""
        if resp.content_length is None and is_event_stream(first_value(resp.fields,
                                                                       "content-type")):
            resp.unbounded()  # (an event stream: live for as long as its client stays)
        fill = None if store is None else self.budget.fill(max_object, resp.content_length)
        if fill is not None and fill.why_not:  # no room for what it announced
            outcome.stored, outcome.detail = False, fill.why_not
            resp.unstored = fill.why_not
            fill = None
        if fill is None:
            release()
        send_body = request.method != "HEAD"
        headers = CIMultiDict(end_to_end(resp.fields))
        status, reason = resp.status, resp.reason
        window = None  # (the part's first byte, and the one after its last)
        if part is not None:
            first, last = part.ranges[0]
            window = (first, last + 1)
            status, reason = 206, "Partial Content"
            for field in ("Content-Length", *NOT_ON_PART):  # (not `name`: the cache's)
                headers.popall(field, None)
            headers["Content-Range"] = content_range(first, last, part.length)
            headers["Content-Length"] = str(last + 1 - first)
        # RFC 9110 §7.6.3: the protocol it was received with; name: the request's plan's
        mark(headers, outcome, name, via_value(resp.version, name))
        gone = False  # the client left: a fill goes on without it (below)
        answered = False  # the client's part was sent whole (the rest is only stored)
        offset = 0  # of the whole body read so far (a part is cut from it)
        try:
            await out.start(status, reason, headers, not send_body)
        except ConnectionError:
            if fill is None:
                return self._abandon(resp, outcome, release, fill)
            send_body, gone = False, True
        while send_body or fill is not None:  # a HEAD reads the body only to store it
            try:
                chunk = await resp.readany()
            except ClientGone:  # (what is being stored goes on, as for a client gone below)
                if fill is None:
                    return self._abandon(resp, outcome, release, fill)
                send_body, gone = False, True
                continue
            except UpstreamError as exc:
                # The body broke off: store nothing, and end the client's message
                # abnormally so it cannot mistake the truncated body for a whole one.
                log.warning("upstream %s body for %s %s broke off: %s", masked_url(upstream),
                            request.method, redact(target, outcome.secrets), exc.reason)
                if request.method == "HEAD" and not gone:
                    # Only the fill broke: the client's answer, a head, went whole; its
                    # connection goes on (closed, it dropped the requests pipelined
                    # after the HEAD, and raced the client's next one).
                    self._abandon(resp, outcome, release, fill, failed=True)
                    with contextlib.suppress(ConnectionError):
                        await out.finish()
                    return None
                if not answered:
                    outcome.status = "ERROR"
                    out.abort()
                return self._abandon(resp, outcome, release, fill, failed=True)
            except ClientBodyError:
                # The origin answered before the request body's end, then that body
                # stalled or its client left: neither message can be completed.
                out.abort()
                self._abandon(resp, outcome, release, fill)
                raise  # (the client connection says what happened, and logs it)
            if not chunk:
                break
            if fill is not None and not fill.add(chunk):  # too big, or over the budget
                outcome.stored, outcome.detail = False, fill.why_not
                resp.unstored = fill.why_not
                fill = None
                release()
            if not send_body:
                continue  # (and stops once nothing will be stored)
            if window is not None:
                start, end = window
                whole, offset = offset, offset + len(chunk)
                chunk = chunk[max(start - whole, 0):max(end - whole, 0)]
                if not chunk:
                    continue
            try:
                await out.write(chunk)
                outcome.bytes_sent += len(chunk)
                if window is not None and offset >= window[1]:
                    # The part is whole: the client's answer ends now (a body breaking
                    # off later only costs the copy being stored); the rest is stored.
                    send_body, answered = False, True
                    await out.finish()
            except ConnectionError:
                # The client went away. What is being stored is still read to its end and
                # stored, as Varnish's fetch goes on without its client: requests collapsed
                # behind this one wait for it, and would all go to the origin otherwise.
                if fill is None:
                    return self._abandon(resp, outcome, release, fill)
                send_body, gone = False, True
            except TimeoutError:  # the client stopped reading: it holds nothing longer
                log.warning("client %s read nothing of %s %s for %gs: connection closed",
                            request.remote, request.method, request.path, self.send_timeout)
                out.abort()
                if fill is None:  # (what is being stored goes on, as for a client gone)
                    return self._abandon(resp, outcome, release, fill)
                send_body, gone = False, True
        # (A HEAD with nothing to store: the rest of a body is not wanted. release() closes
        # a connection whose answer is not all read, and pools one to a HEAD sent as HEAD,
        # which ends with its head: RFC 9112 §6.3 rule 1, pool.py.)
        resp.release()
        if store is not None and fill is not None:
            outcome.stored = await self.put(store.replace(body=fill.body()), resp)
        release()
        if not gone and not answered:
            with contextlib.suppress(ConnectionError):  # the client left at the very end
                await out.finish()

    @staticmethod
    def _abandon(
        resp: UpstreamResponse, outcome: Outcome, release: Release,
        fill: Fill | None, failed: bool = False,
    ) -> None:
        if fill is not None:
            fill.drop()
        resp.close()
        outcome.stored = False  # the log says what happened: nothing was stored
        release(failed)

    async def not_modified(
        self, resp: UpstreamResponse, outcome: Outcome, answer: NotModified,
        store: CachedResponse, max_object: int, release: Release, name: str,
    ) -> Answer:
        """The client's own validators (stripped upstream) match what is being stored:
        304 (§4.3.2), once the body is in the store."""
        headers = CIMultiDict(answer.fields)
        # The cookie is this client's even when the stored copy leaves it out ("strip").
        for field, value in resp.fields:  # (not `name`: the cache's, marked below)
            if field.lower() == "set-cookie":
                headers.add(field, value)
        outcome.stored = False  # until it is: a body that breaks off stores nothing
        try:
            outcome.stored = await self.consume(resp, store, max_object)
        except BaseException:  # its body broke off: no whole answer for the waiters
            release(failed=True)
            raise
        release()  # (stored, or given up for its size: no failure)
        mark(headers, outcome, name, via_value(resp.version, name))
        return Answer(304, headers)

    async def fill(
        self, resp: UpstreamResponse, entry: CachedResponse, max_object: int, outcome: Outcome
    ) -> CachedResponse | None:
        """Read the whole body (no client is sent it as it streams), store the entry with
        it, and return that entry; None when the body did not fit."""
        outcome.stored = False
        body = await self.read_whole(resp, max_object)
        if body is None:
            return None
        whole = entry.replace(body=body)
        outcome.stored = await self.put(whole, resp)
        return whole

    async def consume(
        self, resp: UpstreamResponse, store: CachedResponse, max_object: int
    ) -> bool:
        """Read a response no client is waiting for and store it; True once stored."""
        body = await self.read_whole(resp, max_object)
        return body is not None and await self.put(store.replace(body=body), resp)

    async def read_whole(self, resp: UpstreamResponse, max_object: int) -> bytes | None:
        """The whole body, within max_object and the fill budget; None (and the connection
        closed) when it does not fit. The budget is given back however this ends."""
        fill = self.budget.fill(max_object, resp.content_length)
        try:
            while not fill.why_not and (chunk := await resp.readany()):
                fill.add(chunk)
            if fill.why_not:
                resp.unstored = fill.why_not
                resp.close()
                return None
            resp.release()
            return fill.body()
        except BaseException:
            resp.close()
            raise
        finally:
            fill.drop()  # nothing is held any more once body() took the chunks


__all__ = ["Exchange", "UpstreamError"]
