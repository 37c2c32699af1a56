"""The request flow's driver: runs the steps of cacheproxy.http.flow in order and performs
each decision (reply from storage, forward, store, update, evict, relay). Every branch
here is on a decision type; the rules that choose them live in the flow."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from multidict import CIMultiDict

from cacheproxy.config import masked_url
from cacheproxy.http.cache_key import Variant, answered_variant, variant_id, wait_group
from cacheproxy.http.fields import Headers, end_to_end, times_via
from cacheproxy.http.flow import (
    Answered,
    Evict,
    Failed,
    Forward,
    Freshen,
    Keep,
    Pass,
    PreconditionFailed,
    Refetch,
    Refuse,
    RequestFacts,
    Serve,
    ServeStale,
    Store,
    Update,
    Waited,
    answered,
    background_refresh,
    client_answer,
    failed,
    freshened_still_held,
    in_background,
    lookup,
    range_answer,
    range_behind_fill,
    refresh_may_store,
    stale_on_error,
    still_held,
)
from cacheproxy.http.invalidation import as_derived_from
from cacheproxy.http.stored import CachedResponse
from cacheproxy.http.upgrade import refused_switch
from cacheproxy.observe.clock_skew import ClockSkew
from cacheproxy.observe.outcome import Outcome, note_answered, note_failed, note_lookup, note_served
from cacheproxy.policies.referer import redact
from cacheproxy.proxy.collapse import (
    LEADER_FAILED,
    LEADER_LEFT,
    Collapser,
    Release,
    Result,
    Slot,
    Stored,
)
from cacheproxy.proxy.downstream import Answer, ClientGone, ClientMessage, Downstream
from cacheproxy.proxy.exchange import Exchange, UpstreamResponse
from cacheproxy.proxy.forwarding import via_value
from cacheproxy.proxy.pool import Connection
from cacheproxy.proxy.respond import HeaderBlocks, error_response, stored_response
from cacheproxy.proxy.routing import RoutePlan
from cacheproxy.proxy.upstream import Refusal, UpstreamError
from cacheproxy.store import Store as Storage
from cacheproxy.store import discard

log = logging.getLogger("cacheproxy")
Fields = list[tuple[str, str]]


def _nothing(failed: bool = False, left: bool = False) -> None:
    pass


def _unheard(upstream_ms: float) -> None:
    pass


def _as_failed(release: Release) -> Release:
    """release, for a leader whose answer was the origin's error (Pass.erred): its waiters
    are released as behind a leader that got no answer."""
    return lambda failed=False, left=False: release(failed=True)


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Ctx(NamedTuple):
    """One request as the driver carries it (a NamedTuple: immutable, and made per
    request at a third of a frozen dataclass's cost)."""

    request: ClientMessage
    out: Downstream  # where a relayed response streams to
    plan: RoutePlan
    key: str
    target: str
    facts: RequestFacts
    outcome: Outcome
    # The fields to send upstream for a forward (hop-by-hop, forwarding, Referer policy).
    fields: Callable[[Forward], Fields]
    # The URL's key under the other scheme, behind a trusted TLS front (RoutePlan.scheme_twin)
    twin: str | None = None
    # Of the keys an unsafe request's Location / Content-Location name, those its route's
    # upstream serves (Plans.derived_owner); None: all
    owns: Callable[[str], bool] | None = None


class Driver:
    def __init__(self, store: Storage, exchange: Exchange, collapser: Collapser) -> None:
        self.store = store  # (sets _put_now and _peek too)
        self.exchange = exchange
        self.collapser = collapser
        self.blocks = HeaderBlocks()
        self.cache_name = self.local_via = ""
        self._background: set[asyncio.Task[None]] = set()
        # (key, variant) with a background refresh under way: each Vary variant is
        # revalidated with its own request fields (RFC 9111 §4.1, RFC 5861 §3)
        self._refreshing: set[tuple[str, Variant]] = set()
        # Set by the application (observe/): the response time of a request no client's
        # log line carries (a background refresh), for cacheproxy_upstream_response_seconds.
        self.upstream_answered: Callable[[float], None] = _unheard
        self.clock_skew = ClockSkew()  # (a WARNING when an origin's Date lags ours)

    @property
    def store(self) -> Storage:
        return self._storage

    @store.setter
    def store(self, store: Storage) -> None:
        self._storage = store
        # A store that puts and reads without I/O (the memory store's put_now and peek):
        # validated_now answers a 304 where it was read. Looked up once per store, not per
        # revalidation.
        self._put_now: Callable[[CachedResponse], bool] | None = getattr(
            store, "put_now", None)
        self._peek: Callable[[str], tuple[CachedResponse, ...]] | None = getattr(
            store, "peek", None)
        self._touch_held: Callable[[CachedResponse], bool] | None = getattr(
            store, "touch_held", None)

    def rename(self, cache_name: str, local_via: str) -> None:
        """proxy.via (also the Cache-Status name); Via on responses the cache makes itself."""
        self.cache_name = cache_name
        self.local_via = local_via

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- step 1: lookup ----------------------------------------------------------

    async def cached(self, ctx: Ctx, waited: Waited | None = None,
                     deadline: float | None = None) -> Answer | None:
        """deadline: a collapsed waiter's (time.monotonic()), when it may wait again."""
        variants = await self.store.get(ctx.key, ctx.facts.selecting)  # (those it may select)
        d = lookup(ctx.facts, variants, now=time.time(), route=ctx.plan.cache,
                   recently_passed=self.collapser.passes(ctx.key, ctx.facts.selecting),
                   waited=waited, passed_here=self._passed_here(ctx.facts.headers))
        note_lookup(ctx.outcome, d)
        if isinstance(d, Serve):
            return self.reply(ctx, d.entry, d.age, d.ttl)
        if isinstance(d, ServeStale):
            if d.refresh:
                self._refresh_in_background(ctx, d.entry)
            return self.reply(ctx, d.entry, d.age, d.ttl)
        if isinstance(d, Refuse):
            return self.error(ctx, d.status, d.message)
        if isinstance(d, PreconditionFailed):  # RFC 9110 §13.2.2, from storage
            return self.error(ctx, 412, "precondition failed")
        return await self.forward_or_collapse(ctx, d, deadline, variants)

    def _passed_here(self, headers: Headers) -> bool:
        """The request's Via names this cache (lookup's passed_here)."""
        return "Via" in headers and times_via(headers.getall("Via"), self.cache_name) > 0

    async def forward_or_collapse(
        self, ctx: Ctx, d: Forward, deadline: float | None = None,
        variants: tuple[CachedResponse, ...] = (),
    ) -> Answer | None:
        """Lookup said forward: alone, or collapsed with others for the key. variants:
        what storage held under the key when it was looked up."""
        if d.collapse:
            return await self._collapsed(ctx, d, deadline, variants)
        return await self.forward(ctx, d)

    async def _collapsed(self, ctx: Ctx, fwd: Forward, deadline: float | None,
                         variants: tuple[CachedResponse, ...]) -> Answer | None:
        """One upstream request per key (per variant, once the key is known to vary) at a
        time; the others wait, then look again. deadline: a waiter's, from its first wait
        (it waits again for its own variant)."""
        collapser = self.collapser
        slot = (ctx.key, wait_group(variants, ctx.facts.selecting))
        fut, leading = collapser.join(slot)
        if leading:
            return await self._lead(ctx, fwd, fut, slot)
        if (alone := range_behind_fill(ctx.facts, fwd)) is not None:
            note_lookup(ctx.outcome, alone)  # (RFC 9211 fwd=bypass)
            return await self.forward(ctx, alone)
        arrived = time.monotonic()
        if deadline is None:
            deadline = arrived + (ctx.plan.route.cache.collapse_timeout or collapser.timeout)
        while True:
            # Collapsed only when the leader's answer came: a timed-out wait goes alone.
            # Its client leaving ends the wait at once (Downstream.watch_gone).
            left: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            ctx.out.watch_gone(partial(_settle, left))
            try:
                done = await collapser.wait(fut, max(deadline - time.monotonic(), 1e-3), left)
            finally:
                ctx.out.watch_gone(None)
            if left.done():  # nothing goes upstream for it, nor is looked up (logged 499)
                ctx.outcome.collapsed = True
                return None
            result = fut.result() if fut.done() and not fut.cancelled() else None
            if not done or (result is not LEADER_FAILED and result is not LEADER_LEFT) \
                    or time.monotonic() >= deadline:
                break
            # RFC 5861 §4: the leader's failure is the cache's error too: a stored response
            # usable on error answers the waiter now, as it answered the leader, instead of
            # each waiter trying the failing origin in turn. (Not when the leader sent
            # nothing, its client gone: no error was encountered.)
            stale = stale_on_error(fwd.stored, ctx.facts, ctx.plan.cache, time.time()) \
                if fwd.stored is not None and result is LEADER_FAILED else None
            if stale is not None:
                ctx.outcome.collapsed = True
                note_failed(ctx.outcome, stale)
                return self._failed(ctx, stale)
            # The leader got (or sought) no answer: one waiter tries again, the others
            # wait for it.
            fut, leading = collapser.join(slot)
            if leading:
                return await self._lead(ctx, fwd, fut, slot)
        ctx.outcome.collapsed = done
        stored = result if isinstance(result, Stored) else None
        # (its leader stored an answer: lookup has it wait again when that was another
        # variant, RFC 9111 §4.1)
        again = stored is not None and time.monotonic() < deadline
        return await self.cached(ctx, Waited(stored and stored.since(arrived), again),
                                 deadline)

    async def _lead(self, ctx: Ctx, fwd: Forward, fut: asyncio.Future[Result], slot: Slot
                    ) -> Answer | None:
        collapser = self.collapser
        try:
            answer = await self.forward(
                ctx, fwd, release=lambda failed=False, left=False: collapser.release(
                    slot, fut, failed, left))
        except BaseException:  # (cancelled with its client, say): no answer for the others
            collapser.release(slot, fut, failed=True)
            raise
        collapser.release(slot, fut)
        return answer

    # -- step 2: forward, then what the upstream said ----------------------------

    async def forward(
        self, ctx: Ctx, fwd: Forward, release: Release = _nothing,
        first_sent: float | None = None,
    ) -> Answer | None:
        """first_sent: this is the one retry of a request first sent then (Exchange.send)."""
        request, plan = ctx.request, ctx.plan
        if ctx.outcome.collapsed:  # it waited, and what came did not answer it (§2.6)
            ctx.outcome.went_on = True
        body = request.content if ctx.facts.has_body else None
        request_time = time.time()
        # An answer for its client alone: when it leaves first (a long poll given up),
        # the origin is let go at once, as nginx does (a miss that may be stored is
        # fetched on, for the requests after it, once sent: one whose client left while
        # it waited for a connection is not sent, as nginx finalizes a request that has
        # no upstream connection yet; its collapsed waiters go on as behind a failure).
        alone = fwd.for_client_alone
        try:  # (a ClientBodyError is the client's: its connection answers it)
            resp = await self.exchange.send(fwd.method, plan.upstream + ctx.target,
                                            ctx.fields(fwd), body, ctx.outcome, first_sent,
                                            getattr(request, "body_timeout", None),
                                            ctx.out.interim,
                                            watch=ctx.out.watch_gone if alone else None,
                                            unsent_watch=ctx.out.watch_gone)
        except ClientGone:  # (logged 499: no answer was written)
            # Nor is anything invalidated: RFC 9111 §4.4 invalidates on a non-error status
            # received, and none was (as after a reset or a timeout). Otherwise any client
            # could purge any URL by sending `POST /it` and leaving before the origin's
            # refusal (a 405) came back. Its waiters try again: no error was encountered.
            release(failed=True, left=True)
            return None
        except Refusal as exc:  # forward mode: refused by the address its name resolved to
            release()
            ctx.outcome.status, ctx.outcome.policy = "DENIED", f"forward: {exc.reason}"
            return self.error(ctx, exc.status, exc.reason)
        except UpstreamError as exc:
            return self.upstream_failed(ctx, fwd, exc, release)
        try:
            d = self.decide(ctx, fwd, resp, request_time)
        except BaseException:
            resp.close()
            raise
        return await self.perform(ctx, d, resp, release)

    async def upgrade(self, ctx: Ctx, key: str, idle_timeout: float) -> Answer | None:
        """A WebSocket opening handshake (http/upgrade.py) goes to the origin with its
        Upgrade, past the cache (RFC 9211 fwd=bypass: nothing is looked up or stored).
        The origin's 101 that answers key makes the connection a tunnel (ctx.out's
        switch) for as long as the WebSocket lasts; any other answer is relayed as a
        pass-through's, and the client's connection closes after it."""
        fwd = Forward("bypass", ctx.facts.method)
        note_lookup(ctx.outcome, fwd)
        fields = [*ctx.fields(fwd), ("Connection", "upgrade"), ("Upgrade", "websocket")]
        request_time = time.time()
        try:  # (for its client alone: given up when it leaves first, as nginx does)
            resp = await self.exchange.send(fwd.method, ctx.plan.upstream + ctx.target,
                                            fields, None, ctx.outcome,
                                            interim=ctx.out.interim, upgrade=True,
                                            watch=ctx.out.watch_gone)
        except ClientGone:  # (logged 499: no answer was written)
            return None
        except Refusal as exc:
            ctx.outcome.status, ctx.outcome.policy = "DENIED", f"forward: {exc.reason}"
            return self.error(ctx, exc.status, exc.reason)
        except UpstreamError as exc:
            return self.upstream_failed(ctx, fwd, exc)
        if resp.status != 101:
            try:
                d = self.decide(ctx, fwd, resp, request_time)
            except BaseException:
                resp.close()
                raise
            return await self.perform(ctx, d, resp)
        refused = refused_switch(key, resp.fields)
        detached = None if refused else resp.detach()
        if detached is None:
            resp.close()
            return self.upstream_failed(ctx, fwd, UpstreamError(
                502, refused or "connection closed after its 101"))
        ctx.outcome.status = "TUNNEL"
        headers = CIMultiDict(end_to_end(resp.fields))
        headers.add("Via", via_value(resp.version, ctx.plan.forward.via))
        await ctx.out.switch(resp.reason, headers, detached,  # type: ignore[attr-defined]
                             idle_timeout)
        return None

    def upstream_failed(self, ctx: Ctx, fwd: Forward, exc: UpstreamError,
                        release: Release = _nothing) -> Answer:
        """No answer came: an error of ours, or a stale response (RFC 5861 §4)."""
        release(failed=True)
        plan = ctx.plan
        f = failed(fwd, status=exc.status, message=exc.reason, req=ctx.facts,
                   route=plan.cache, now=time.time())
        note_failed(ctx.outcome, f)
        # One line per failure, naming the upstream, the request and the cause; and what
        # its client was answered, unless it had left (its line says 499, written then).
        log.warning("upstream %s failed for %s %s: %s; %s", masked_url(plan.upstream),
                    fwd.method, redact(ctx.target, ctx.outcome.secrets), exc.reason,
                    "its client had left: nothing answered" if ctx.out.left
                    else f"answered from storage ({f.detail})" if isinstance(f, ServeStale)
                    else f"answered {f.status}")
        return self._failed(ctx, f)

    def decide(self, ctx: Ctx, fwd: Forward, resp: UpstreamResponse, request_time: float
               ) -> Answered:
        """What the upstream's answer (its head) to fwd means (the flow's answered)."""
        return self.decided(ctx, fwd, resp.status, resp.fields, resp.content_length,
                            request_time)

    def decided(self, ctx: Ctx, fwd: Forward, status: int, fields: Fields,
                content_length: int | None, request_time: float) -> Answered:
        """decide, given the answer's head as read (a quick forward's, which makes no
        UpstreamResponse for an answer it passes on)."""
        now = time.time()
        key = ctx.key
        # (by position: the flow's keywords cost every answer some 1,500 instructions)
        d = answered(fwd, status, fields, content_length, ctx.facts, ctx.plan.cache, key,
                     request_time, now)
        # Hit-for-pass: after an answer that could not be stored for any request, the
        # requests of its variant (RFC 9111 §4.1) stop waiting behind each other for a
        # while; one stored for them ends it. (By exact type, as observe/outcome.py
        # notes decisions; inline, not a method: a call per answer saved.)
        kind = type(d)
        if kind is Pass:  # (a pass-through's, the usual miss's, first)
            if d.hit_for_pass:  # (the variant by answered_variant: §4.1 decided there)
                self.collapser.mark_pass(key, answered_variant(fields, ctx.facts.selecting))
        elif kind is Store or kind is Update:
            entry = d.entry
            if entry.born + entry.lifetime <= now:  # stale on arrival (rare): a clock?
                self.clock_skew.arrived_stale(
                    ctx.plan.upstream, redact(key, ctx.plan.route.referer.strip_params),
                    entry, fields, request_time, now)
            self.collapser.unmark_pass(key, entry)
            self.collapser.note_stored(key, entry)
        elif (kind is Keep or kind is Evict or kind is Refetch) and d.hit_for_pass:
            self.collapser.mark_pass(key, answered_variant(fields, ctx.facts.selecting))
        note_answered(ctx.outcome, d, now)
        return d

    def validated_now(self, ctx: Ctx, d: Answered, conn: Connection
                      ) -> CachedResponse | None:
        """_perform's step for a 304 (whole: conn is done with it) that validated the
        stored response, when nothing in carrying it out waits: Keep serving the merged
        view, or Update with a store that puts without I/O (the memory store's put_now).
        The connection is pooled again, the store updated as _put_validated would; the
        response the client gets (reply_validated's view). None: d is _perform's, and
        nothing was done."""
        if type(d) is Update:
            put_now, peek = self._put_now, self._peek  # (the memory store's: now)
            if put_now is None or peek is None:
                return None
            self.exchange.pool.release(conn)  # (UpstreamResponse.release's, none made)
            touch = self._touch_held
            entry = d.entry
            if entry is d.stored and not d.others and touch is not None and touch(entry):
                # A 304 that refreshed the response into itself (stored.refreshed), which
                # the key still holds alone: what freshened_still_held and put_now make of
                # it (§4.3.4: it is to be stored; the put marks it recently used), in one
                # look at the store.
                ctx.outcome.stored = True
                return d.view
            stored = False
            for entry in freshened_still_held(d, peek(ctx.key)):  # (as _put_validated)
                put = put_now(entry)
                stored = put if entry is d.entry else stored
            ctx.outcome.stored = stored
            return d.view
        if type(d) is Keep and d.serve is not None:
            self.exchange.pool.release(conn)
            return d.serve
        return None

    async def perform(self, ctx: Ctx, d: Answered, resp: UpstreamResponse,
                      release: Release = _nothing) -> Answer | None:
        try:
            return await self._perform(ctx, d, resp, release)
        except BaseException:
            resp.close()
            raise

    async def _perform(
        self, ctx: Ctx, d: Answered, resp: UpstreamResponse, release: Release
    ) -> Answer | None:
        exchange = self.exchange
        max_object = ctx.plan.cache.max_object_bytes
        if isinstance(d, Store) and d.invalidates:  # §4.4, before a POST's answer is stored
            # (which counts as sent after its own invalidation: the new representation)
            resp.sent = await self._invalidate(ctx, d.invalidates)
        if isinstance(d, Store):
            answer = await self._store(ctx, d, resp, release)
            if d.outdates and resp.unstored:
                # The new representation was not stored after all (too big, or no room in
                # the fill budget): the response it replaces goes as well (Store.outdates),
                # as for one announced too big; kept, stale-if-error would serve it.
                await discard(self.store, ctx.key)
            return answer
        if isinstance(d, Refetch):  # §4.3.4: once, unconditionally
            resp.release()
            if d.outdates:  # (Store.outdates: its whole answer was not stored)
                await discard(self.store, ctx.key)
            return await self.forward(ctx, d.forward, release)
        if isinstance(d, Update):
            resp.release()
            ctx.outcome.stored = await self._put_validated(ctx.key, d, ctx.facts.selecting)
            release()
            return self.reply_validated(ctx, d.view)
        if isinstance(d, Freshen) and still_held(
                d.stored, await self.store.get(ctx.key, ctx.facts.selecting)):
            await self.store.put(d.entry)  # §4.3.5: the HEAD's answer goes on as it is
        if isinstance(d, Evict):
            if d.invalidation:  # §4.4: fills under way do not store either
                await self._invalidate(ctx, d.keys)
            else:
                for key in d.keys:
                    await discard(self.store, key)
        if isinstance(d, ServeStale):  # a 5xx answered by the stored response (RFC 5861 §4)
            resp.release()
            # The origin erred: its waiters are released as behind a leader that got no
            # answer, so they are answered stale as it was, not sent to the origin at once.
            release(failed=True)
            return self.reply(ctx, d.entry, d.age, d.ttl)
        serve = d.serve if isinstance(d, (Keep, Evict)) else None
        if serve is not None:  # a 304 validated it: the client gets the merged response
            resp.release()
            release()
            return self.reply_validated(ctx, serve)
        if isinstance(d, (Keep, Pass)) and d.erred:  # (its waiters go on one at a time)
            release = _as_failed(release)
        return await exchange.relay(ctx.out, ctx.request, resp, ctx.outcome, None, max_object,
                                    release, upstream=ctx.plan.upstream, target=ctx.target,
                                    name=ctx.plan.forward.via)

    async def _store(self, ctx: Ctx, d: Store, resp: UpstreamResponse, release: Release
                     ) -> Answer | None:
        """Store: the client's answer as the body streams (or cut from it, or a 304 to
        its own validators), the body stored once whole."""
        exchange = self.exchange
        max_object = ctx.plan.cache.max_object_bytes
        if d.whole_first:  # a Range, cut from the stored whole
            part, length = d.part, resp.content_length
            if part is not None and length is not None and exchange.budget.admits(length):
                return await exchange.relay(ctx.out, ctx.request, resp, ctx.outcome,
                                            d.entry, max_object, release,
                                            upstream=ctx.plan.upstream, target=ctx.target,
                                            name=ctx.plan.forward.via, part=part)
            try:
                whole = await exchange.fill(resp, d.entry, max_object, ctx.outcome)
            except BaseException:  # its body broke off: no whole answer for the waiters
                release(failed=True)
                raise
            release()  # (stored, or given up for its size: no failure)
            if whole is None:  # too big after all, or no room in the fill budget:
                # the origin answers the Range itself (RFC 9211 fwd=bypass).
                return await self.forward(ctx, Forward("bypass", ctx.facts.method))
            return self.reply_validated(ctx, whole)
        current = client_answer(d.entry, ctx.facts)  # the client's own validators
        if current is not None:
            return await exchange.not_modified(resp, ctx.outcome, current, d.entry,
                                               max_object, release, ctx.plan.forward.via)
        return await exchange.relay(ctx.out, ctx.request, resp, ctx.outcome, d.entry,
                                    max_object, release, upstream=ctx.plan.upstream,
                                    target=ctx.target, name=ctx.plan.forward.via)

    async def _put_validated(self, key: str, d: Update, headers: Headers) -> bool:
        """§4.3.4: the responses the 304 freshened (the one validated, the other variants
        with its strong tag), each where the store still holds it as read at lookup: a
        304 that comes late must not put an older response back over a newer one stored
        meanwhile. Whether the one validated was stored. headers: the request's selecting
        fields (the store reads what it may select for it, as at lookup)."""
        stored = False
        for entry in freshened_still_held(d, await self.store.get(key, headers)):
            put = await self.store.put(entry)
            stored = put if entry is d.entry else stored
        return stored

    async def _invalidate(self, ctx: Ctx, keys: tuple[str, ...]) -> float:
        """§4.4: forget keys, and (marked first) what fills of them sent before now would
        store (Exchange.put); when that was. Behind a trusted TLS front, the other scheme's
        keys of the same URLs too: the change was to the resource, whichever scheme the
        front terminated (as a purge of a path removes both)."""
        if ctx.owns is not None:  # (ctx.key is the request's own, first)
            keys = (keys[0], *filter(ctx.owns, keys[1:]))
        if ctx.twin is not None:
            keys = (*keys, *as_derived_from(keys, ctx.key, ctx.twin))
        now = time.perf_counter()
        for key in keys:
            self.exchange.invalidations.key(key, now)
        for key in keys:
            await discard(self.store, key)
        return now

    def _failed(self, ctx: Ctx, f: Failed) -> Answer:
        if isinstance(f, ServeStale):
            return self.reply(ctx, f.entry, f.age, f.ttl)
        return self.error(ctx, f.status, f.message)

    # -- step 3: what the client gets --------------------------------------------

    def reply(self, ctx: Ctx, entry: CachedResponse, age: float, ttl: float) -> Answer:
        plan = ctx.plan  # (its names: a reload since the request began renames no answer)
        return self.served(ctx.facts, ctx.outcome, entry, age, ttl, plan.forward.via,
                           plan.local_via)

    def served(self, facts: RequestFacts, outcome: Outcome, entry: CachedResponse,
               age: float, ttl: float, name: str = "", via: str = "") -> Answer:
        """What the client gets from storage: the whole response, a 304 to its own
        validators (§4.3.2), or the part its Range asks for (RFC 9110 §14.2). Also what
        a quick hit (proxy/quick.py) sends, under the running names (name, via: the
        request's plan's, when given)."""
        note_served(outcome, age, ttl)
        return stored_response(facts.method, entry, age, outcome, name or self.cache_name,
                               via or self.local_via, self.blocks, client_answer(entry, facts),
                               range_answer(entry, facts) if facts.bypass else None)

    def reply_validated(self, ctx: Ctx, view: CachedResponse) -> Answer:
        age = view.age(time.time())
        plan = ctx.plan  # (as reply, without its call: every revalidation answers here)
        return self.served(ctx.facts, ctx.outcome, view, age, view.lifetime - age,
                           plan.forward.via, plan.local_via)

    def error(self, ctx: Ctx, status: int, message: str) -> Answer:
        plan = ctx.plan
        return error_response(status, message, ctx.outcome, plan.forward.via, plan.local_via)

    # -- RFC 5861 §3: the refresh behind stale-while-revalidate ------------------

    def _refresh_in_background(self, ctx: Ctx, entry: CachedResponse) -> None:
        """One background revalidation per variant at a time."""
        refreshing = (ctx.key, variant_id(entry))
        if refreshing in self._refreshing:
            return
        self._refreshing.add(refreshing)
        facts, fwd = background_refresh(ctx.facts, entry)
        # The client's own cache directives were about its answer, not this refresh. Made
        # now, while the request is at hand: the validators' fields, and those of the
        # unconditional request a 304 for another representation calls for (§4.3.4).
        fields = [(k, v) for k, v in ctx.fields(fwd)
                  if k.lower() not in ("cache-control", "pragma")]
        validators = {k.lower() for k, _ in fwd.conditional}
        plain = [(k, v) for k, v in fields if k.lower() not in validators]
        task = asyncio.get_running_loop().create_task(
            self._refresh(ctx.plan, refreshing, ctx.target, facts, fwd, fields, plain))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(
        self, plan: RoutePlan, refreshing: tuple[str, Variant], target: str,
        facts: RequestFacts, fwd: Forward, fields: Fields, plain: Fields,
    ) -> None:
        exchange = self.exchange
        key = refreshing[0]
        stored = fwd.stored  # (what the refresh validates: a 5xx leaves it be)

        async def ask(fwd: Forward) -> tuple[UpstreamResponse, Answered]:
            request_time = time.time()
            sent = fields if fwd.conditional else plain
            timed = Outcome()
            resp = await exchange.send("GET", plan.upstream + target, sent, None, timed)
            if timed.upstream_ms is not None:
                self.upstream_answered(timed.upstream_ms)
            return resp, in_background(answered(
                fwd, status=resp.status, fields=resp.fields, length=resp.content_length,
                req=facts, route=plan.cache, key=key, request_time=request_time,
                response_time=time.time()), resp.status, stored)
        try:
            resp, d = await ask(fwd)
            if isinstance(d, Refetch) and resp.status == 304:
                # §4.3.4: a 304 for another representation: once more, unconditionally, as
                # in the foreground (not the refetch of a Range, which no client awaits).
                resp.release()
                resp, d = await ask(d.forward)
            if isinstance(d, Store):
                body = await exchange.read_whole(resp, plan.cache.max_object_bytes)
                # (a newer answer stored meanwhile, by a reload, stays: RFC 9111 §4)
                if body is not None and stored is not None and refresh_may_store(
                        stored, d.entry, await self.store.get(key, facts.selecting)):
                    await exchange.put(d.entry.replace(body=body), resp)
                elif d.outdates and resp.unstored:  # (as in the foreground)
                    await discard(self.store, key)
                return
            resp.release()  # a 304 is whole: its connection goes back to the pool
            if resp.status >= 500:  # (as an UpstreamError is: the stored response stays)
                log.info("background revalidation of %s failed: the origin answered %d",
                         redact(key, plan.route.referer.strip_params), resp.status)
            if isinstance(d, Update):
                await self._put_validated(key, d, facts.selecting)
            elif isinstance(d, Evict):
                for doomed in d.keys:
                    await discard(self.store, doomed)
        except UpstreamError as exc:  # (the key's session ids redacted, as in every log line)
            log.info("background revalidation of %s failed: %s",
                     redact(key, plan.route.referer.strip_params), exc.reason)
        except Exception:  # a bug of ours must not end as "Task exception was never retrieved"
            log.exception("background revalidation of %s failed",
                          redact(key, plan.route.referer.strip_params))
        finally:
            self._refreshing.discard(refreshing)
