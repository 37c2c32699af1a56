"""Misses answered by callback: a GET or HEAD the quick path planned forward (Planned) is
sent on an idle pooled connection from where it was parsed, with no task, and when the
origin's answer arrives whole and the flow passes it on unstored, the client gets it
from the upstream connection's read callback.

The decisions are the driver's own (Driver.decide: the flow's `answered`, hit-for-pass,
the account), and so is every step but the simplest: at a fixed point, the rest is
handed to a task that runs the driver from there, as the full path would have:

- no idle connection to the origin: nothing is sent here; the full path connects;
- a failure before the answer's head: driver.upstream_failed (an error, or a stale
  response, RFC 5861 §4), or the one retry exchange.send allows (driver.forward with
  first_sent: a reused connection the origin closed as it was used);
- a decision other than Pass (or Keep with nothing to serve), or a body still on its way:
  driver.perform with the answer, which stores, validates, streams with flow control;
  but a 304 that validated the stored response is answered here when nothing in it
  waits (Driver.validated_now: Keep, or Update with the memory store's put_now).

What is passed on here is what Exchange.relay sends for a Pass: the end-to-end fields,
marked (Cache-Status, X-Cache, Via), then the body; a HEAD's head alone.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Container
from typing import TYPE_CHECKING, Any, Protocol

from multidict import CIMultiDict

from cacheproxy.http.fields import HOP_BY_HOP, FieldList, end_to_end
from cacheproxy.http.flow import Answered, Forward, Keep, Pass, client_answer
from cacheproxy.http.stored import CachedResponse
from cacheproxy.observe.outcome import Outcome, note_served
from cacheproxy.proxy.downstream import Answer, ClientMessage
from cacheproxy.proxy.driver import Ctx, Driver
from cacheproxy.proxy.exchange import UpstreamResponse
from cacheproxy.proxy.forwarding import via_value
from cacheproxy.proxy.pool import Connection
from cacheproxy.proxy.respond import marks_of, put_marks

if TYPE_CHECKING:
    import asyncio

    from cacheproxy.proxy.handler import CacheProxy
    from cacheproxy.proxy.routing import RoutePlan
    from cacheproxy.proxy.upstream import UpstreamError


class Client(Protocol):
    """What a quick forward needs of the client connection (proxy/client_conn.py)."""

    def begin(self, status: int, reason: str | None, headers: CIMultiDict[str],
              head_only: bool) -> bytes: ...
    def begin_relayed(self, status: int, reason: str, fields: list[tuple[str, str]],
                      names: Container[str], marks: list[tuple[str, str]], plan: RoutePlan,
                      head_only: bool) -> bytes | None: ...
    def send_whole(self, head: bytes, body: bytes) -> None: ...
    def interim(self, status: int, reason: str, fields: list[tuple[str, str]]) -> None: ...
    def forwarded(self, answer: Answer | None) -> None: ...
    def send_stored(self, request: ClientMessage, plan: RoutePlan, entry: CachedResponse,
                    age: float, ttl: float, outcome: Outcome) -> bool: ...
    def hand_off(self, step: Awaitable[Answer | None]) -> None: ...


class QuickForward:
    """A request sent by callback; the client connection holds it while it is under
    way (no other request of that connection is answered meanwhile). A connection keeps
    one for its requests, one after the other (renew: making one costs a miss some 3,500
    instructions, renewing it about 1,000), until one is handed off to a task: that one
    stays the task's (hand_off's callback settles it later), and the next is new."""

    __slots__ = ("_done", "_interim", "_loop", "_marked", "_sent_at", "_settled", "client",
                 "conn", "ctx", "fwd", "proxy", "request_time", "reused")

    def __init__(self, proxy: CacheProxy, client: Client, ctx: Ctx, fwd: Forward,
                 conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.proxy, self.client, self.ctx, self.fwd, self.conn = proxy, client, ctx, fwd, conn
        self.reused = conn.used
        self._loop = loop
        # Where the origin's 1xx answers go: bound once, as the client is (a reference to
        # it, as self.client is: let go with the connection's _forwarder).
        self._interim = client.interim
        # Its end, for a graceful shutdown: made when one asks (done), not per request.
        self._done: asyncio.Future[None] | None = None
        self._settled = False
        self._sent_at = 0.0
        self.request_time = 0.0
        # The marks _pass_on made last, with what they were made from (see there).
        self._marked: tuple[tuple[int, int], str, str, str, list[tuple[str, str]]] | None \
            = None

    def renew(self, proxy: CacheProxy, ctx: Ctx, fwd: Forward, conn: Connection) -> None:
        """The next request of the same client connection (its last one answered here),
        as __init__ would make it; proxy: a reload since may have replaced it."""
        self.proxy, self.ctx, self.fwd, self.conn = proxy, ctx, fwd, conn
        self.reused = conn.used
        self._done = None
        self._settled = False

    @property
    def done(self) -> asyncio.Future[None]:
        """Done when the request is (a graceful stop waits for it)."""
        done = self._done
        if done is None:
            done = self._done = self._loop.create_future()
            if self._settled:
                done.set_result(None)
        return done

    def start(self, head: bytes) -> None:
        """Send head (gathered with the iteration's other requests); raises UpstreamError
        when the connection was closed meanwhile (nothing sent: the full path goes on)."""
        self.request_time = _wall()
        self._sent_at = _perf()
        self.conn.send_quick(head, self.fwd.method == "HEAD", self._arrived,
                             self.proxy.exchange.read_timeout, self._interim)

    def cancel(self) -> None:
        """Stopped (a graceful stop ran out of time): the answer is not waited for, and
        the request is not sent again."""
        self.conn.forget_quick()
        self.settle()

    def settle(self) -> None:
        """Done: a graceful stop waits no longer for this request."""
        self._settled = True
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    # -- the upstream connection's callback --------------------------------------------

    def _arrived(self) -> None:
        """The head is in (or the exchange failed): answer, or hand the rest on. The
        usual whole answer passed on is written from here, in this one frame (each
        Python call on a pass-through's way costs some 1,000 instructions)."""
        conn, ctx = self.conn, self.ctx
        try:
            fields = conn.answered()  # as received, in order
            if fields is None:
                failure = conn.head_failure()
                assert failure is not None  # (answered() said the exchange failed)
                answer = self._failed(failure)
            else:
                outcome = ctx.outcome
                outcome.upstream_ms = (time.perf_counter() - self._sent_at) * 1000
                outcome.fwd_status = status = conn.status
                length = conn.content_length  # llhttp checked it is one number
                try:
                    d = self.proxy.driver.decided(
                        ctx, self.fwd, status, fields,
                        int(length) if length is not None and length.isdigit() else None,
                        self.request_time)
                except BaseException:
                    conn.close()  # (UpstreamResponse.close's: closed, then released)
                    self.proxy.exchange.pool.release(conn)
                    raise
                # A plain relay (nothing stored, served from storage or evicted: a Pass,
                # or a Keep serving nothing) of a whole answer is written from here.
                kind = type(d)
                if (kind is Pass or (kind is Keep and d.serve is None)) and conn.whole:
                    self._pass_on(ctx, conn, status, fields)
                    answer = None
                else:
                    answer = self._perform(d)
        except Exception:  # a bug of ours: a 500, as the full path's guard answers
            conn.close()
            answer = self.proxy.internal_error(ctx.request, ctx.outcome)
        if answer is not _HANDED:  # (a handed-off one is done when its task is)
            self._settled = True  # (settle, inline)
            done = self._done
            if done is not None and not done.done():
                done.set_result(None)
            # Last: forwarded may start the connection's next request, renewing self.
            self.client.forwarded(answer)

    def _failed(self, failure: UpstreamError) -> Any:  # Answer, or _HANDED
        """No head came: the one retry exchange.send allows, else the driver's answer to
        the failure (an error, or a stale response)."""
        conn, ctx, fwd = self.conn, self.ctx, self.fwd
        driver, exchange = self.proxy.driver, self.proxy.exchange
        exchange.pool.release(conn)  # (closed: a failed connection is not reused)
        if exchange.retries(fwd.method, conn, self.reused, failure):
            return self._hand_off(driver.forward(ctx, fwd, first_sent=self._sent_at))
        return driver.upstream_failed(ctx, fwd, failure)

    def _perform(self, d: Answered) -> Any:  # Answer, or _HANDED
        """The driver carries out a decision other than a plain relay of a whole answer
        (a client that left still has its request carried out and logged, as the full
        path's task does: a 304 still updates the store)."""
        conn, ctx, driver, exchange = self.conn, self.ctx, self.proxy.driver, self.proxy.exchange
        if conn.whole:
            view = driver.validated_now(ctx, d, conn)
            if view is not None:  # a 304 (whole, no body) validated the stored response
                return self._reply(ctx, driver, view)
        # (made only for the driver's steps: an answer passed on or validated here needs
        # none)
        resp = UpstreamResponse(exchange.pool, conn, exchange.read_timeout, self._sent_at)
        return self._hand_off(driver.perform(ctx, d, resp))

    def _reply(self, ctx: Ctx, driver: Driver, view: CachedResponse) -> Answer | None:
        """The client's answer from storage after a validation (Driver.reply_validated's).
        When served's would be the response whole (a GET, no 304 to the client's own
        validators, §4.3.2, no Range, RFC 9110 §14.2), the client writes it as a replay,
        its head kept for the same inputs (client_conn.send_stored): None, sent. Else,
        and for a client that needs the Answer (a CORS grant), served's Answer."""
        age = view.age(time.time())  # §4.2.3
        ttl = view.lifetime - age
        facts, outcome, plan = ctx.facts, ctx.outcome, ctx.plan
        if facts.method == "GET" and not facts.bypass and client_answer(view, facts) is None:
            note_served(outcome, age, ttl)
            if self.client.send_stored(ctx.request, plan, view, age, ttl, outcome):
                return None
        return driver.served(facts, outcome, view, age, ttl, plan.forward.via,
                             plan.local_via)

    def _pass_on(self, ctx: Ctx, conn: Connection, status: int,
                 received: list[tuple[str, str]]) -> None:
        """Exchange.relay's Pass, with the whole body in hand: one write. A client gone
        before its head is written: the connection is closed, as Exchange.relay abandons
        it (UpstreamResponse.close)."""
        client, outcome, plan = self.client, ctx.outcome, ctx.plan
        pool = self.proxy.exchange.pool
        head_only = ctx.request.method == "HEAD"
        kept = received
        names: Container[str]
        if type(received) is FieldList and HOP_BY_HOP.isdisjoint(received.by_name):
            names = received.by_name  # (no hop-by-hop field, the usual case: as parsed)
        else:
            kept = end_to_end(received)
            names = {k.lower() for k, _ in kept}
        cache_name = plan.forward.via  # (the request's: a reload since renames nothing)
        # marks(): Via from the origin's version and the name, Cache-Status (the Outcome
        # sets what the log reads of it) and X-Cache. The connection's answers mostly get
        # the same three, so the list made last is taken again when all it is made from is
        # the same (the client head kept then compares it by identity, not field by field).
        member, x_cache, version = outcome.cache_status(cache_name), outcome.x_cache, \
            conn.version
        last = self._marked
        if last is not None and last[0] == version and last[1] == cache_name \
                and last[2] == member and last[3] == x_cache:
            marked = last[4]
        else:
            marked = marks_of(via_value(version, cache_name), member, x_cache)
            self._marked = (version, cache_name, member, x_cache, marked)
        try:
            head = client.begin_relayed(status, conn.reason, kept, names, marked, plan,
                                        head_only)
            if head is None:  # (a field to replace or remove, a body to frame: begin's)
                headers = CIMultiDict(kept)
                put_marks(headers, marked)
                head = client.begin(status, conn.reason, headers, head_only)
        except ConnectionError:  # the client left: as Exchange.relay abandons it
            conn.close()
            pool.release(conn)
            outcome.stored = False
            return
        body = conn.take_body()  # (whole: taken, the connection is pooled again)
        if head_only:
            # A HEAD client: no body. An answer to HEAD ends with its head (RFC 9112 §6.3
            # rule 1), one to a GET sent for it with the body taken: release pools
            # either, unless bytes came past its end (pool.py).
            body = b""
        pool.release(conn)
        try:
            client.send_whole(head, body)
        except ConnectionError:
            outcome.stored = False

    def _hand_off(self, step: Awaitable[Answer | None]) -> object:
        self.client.hand_off(step)
        return _HANDED


_HANDED: Any = object()  # _answer: the rest is a task's
_wall, _perf = time.time, time.perf_counter  # (read per request: one global each)

__all__ = ["Client", "QuickForward"]
