"""The request handler: looks up the store, applies the decisions in
cacheproxy.http, and drives the upstream exchange."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import aiohttp
from aiohttp import web

from cacheproxy.config import Config, ConfigError
from cacheproxy.http.cache_control import (
    NO_REQUEST_DIRECTIVES,
    RequestDirectives,
    parse_request_directives,
)
from cacheproxy.http.cache_key import origin_of, primary_key, select_variant
from cacheproxy.http.fields import Headers, combined_value
from cacheproxy.http.invalidation import invalidated_uris
from cacheproxy.http.reuse import (
    BYPASS_FIELDS,
    STALE_IF_ERROR_STATUSES,
    Action,
    Reuse,
    decide_reuse,
    may_serve_stale_on_error,
    shareable_validation,
    stale_forbidden,
)
from cacheproxy.http.revalidation import conditional_fields, merge_304, selects
from cacheproxy.http.stored import CachedResponse, make_stored_response, with_date
from cacheproxy.http.target import forwards_left, request_target
from cacheproxy.observe.observer import OUTCOME
from cacheproxy.proxy.collapse import PASS_REASONS, Collapser
from cacheproxy.proxy.exchange import Fill
from cacheproxy.proxy.forwarding import request_fields, via_value
from cacheproxy.proxy.local import final_answer
from cacheproxy.proxy.outcome import Outcome
from cacheproxy.proxy.policy_steps import inbound, rewrites_referer, upstream_fields
from cacheproxy.proxy.respond import HeaderBlocks, error_response, stored_response
from cacheproxy.proxy.routing import PLAN, Plans, RoutePlan
from cacheproxy.proxy.upstream import UpstreamError, make_session
from cacheproxy.store import Store, discard

log = logging.getLogger("cacheproxy")
# The authority of an absolute-form request, which replaces Host upstream (RFC 9112 §3.2.2).
EFFECTIVE_HOST = web.RequestKey("cacheproxy.host", str)


class CacheProxy:
    def __init__(self, config: Config, upstream: str, store: Store) -> None:
        self.store = store
        self.default_upstream = upstream.rstrip("/")  # the demo origin's when none is set
        self.blocks = HeaderBlocks()
        self.collapser = Collapser(config.cache.collapse_timeout)
        self.session: aiohttp.ClientSession | None = None
        # Set by the application (observe/): PURGE.
        self.purge: Callable[[web.Request, str, Outcome], Awaitable[web.Response]] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._refreshing: set[str] = set()  # keys with a background refresh under way
        self.reconfigure(config)

    def check_config(self, config: Config) -> None:
        """Raise ConfigError if config cannot be applied (reload checks before it changes
        anything): building the plans compiles every policy."""
        if not (config.proxy.upstream or self.default_upstream or config.catch_all_route):
            raise ConfigError("proxy.upstream", "is needed: no route catches every request "
                              "and no demo origin runs (it starts only with the process)")
        Plans.build(config, self.default_upstream, None, self.store)

    def reconfigure(self, config: Config) -> None:
        """Derive what requests read from config; called at start and on reload (SIGHUP).
        A request takes its route's plan once, when it starts, so one in flight finishes
        by the config it began with."""
        self.config = config
        self.cache_name = config.proxy.via
        # Via on responses the cache makes itself (replays, errors): it speaks HTTP/1.1.
        self.local_via = via_value((1, 1), config.proxy.via)
        self.plans = Plans.build(config, self.default_upstream, self.session, self.store)

    def cache_key(self, scheme: str, authority: str, target: str) -> str:
        """The key a request for target on authority (Host) is stored under (admin purge).
        A URL on an upstream's origin is a key as the entries list shows it: kept as is."""
        plans = self.plans
        if origin_of(scheme, authority) in plans.stored_origins():
            return primary_key(scheme, authority, target)
        return plans.match(authority, target).cache_key(scheme, authority, target)

    def upstreams(self) -> tuple[str, ...]:
        """Every origin this proxy sends to (readiness checks)."""
        return self.plans.upstreams()

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: the pooled upstream session lives as long as the app."""
        session = self.session = make_session(self.config.proxy)
        self.reconfigure(self.config)  # the exchanges need the session
        yield
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await session.close()

    # -- entry point ------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        outcome = request[OUTCOME] = Outcome()  # the request log reads it once sent
        return await self._respond(request, outcome)

    async def _respond(self, request: web.Request, outcome: Outcome) -> web.StreamResponse:
        h = request.headers
        raw = request.raw_path
        if raw == "*":  # asterisk-form (RFC 9112 §3.2.4)
            return self._server_options(request, outcome)
        host = h.get("Host")
        if host is None and request.version < (1, 1):
            host = self.plans.default.forward.upstream_host  # HTTP/1.0 may omit Host
        parsed = request_target(raw, host)
        if parsed is None:  # RFC 9112 §3.2: a missing or invalid Host is a 400
            outcome.status = "ERROR"
            return self._error(request, 400, "invalid Host or request target", outcome)
        target = outcome.target = parsed.path
        outcome.host = parsed.authority
        if parsed.absolute:  # §3.2.2: the request line's authority replaces Host
            request[EFFECTIVE_HOST] = parsed.authority
        plans = self.plans  # read once: a reload (SIGHUP) does not change a request midway
        plan = request[PLAN] = plans.match(parsed.authority, target)
        if plans.routed:
            outcome.route = plan.route.name
        outcome.secrets = plan.route.referer.strip_params
        key = plan.cache_key(request.scheme, parsed.authority, target)
        if request.method == "PURGE" and self.purge is not None:
            outcome.status = "BYPASS"
            return await self.purge(request, key, outcome)
        stopped = inbound(request, plan, outcome, target, parsed.authority, self.cache_name,
                          self.local_via)  # hotlink gate, CORS preflight: before the cache
        if stopped is not None:
            return stopped
        hops = forwards_left(request.method, h.get("Max-Forwards"))
        if hops == 0:  # RFC 9110 §7.6.2: the last hop answers itself
            outcome.status = "BYPASS"
            return final_answer(request, [("Via", self.local_via)])
        try:
            if (request.method in ("GET", "HEAD") and not request.body_exists
                    and not BYPASS_FIELDS.intersection(h.keys())):
                return await self._cached(request, key, target, outcome, collapse=True)
            # RFC 9211 §2.2: "method" for methods a cache cannot answer; ranges, bodies
            # and preconditions a cache cannot evaluate bypass it.
            outcome.status = "BYPASS"
            outcome.fwd = "bypass" if request.method in ("GET", "HEAD") else "method"
            return await self._pass(request, key, target, outcome)
        except UpstreamError as exc:
            outcome.status = "ERROR"
            return self._error(request, exc.status, exc.reason, outcome)
        except Exception:  # a bug of ours: log it, answer briefly, keep serving
            log.exception("internal error on %s %s", request.method, target)
            outcome.status = "ERROR"
            return self._error(request, 500, "internal proxy error", outcome)

    # -- GET / HEAD --------------------------------------------------------

    async def _cached(
        self, request: web.Request, key: str, target: str, outcome: Outcome, *, collapse: bool,
        validated_since: float | None = None,
    ) -> web.StreamResponse:
        h = request.headers
        plan = request[PLAN]
        req = (parse_request_directives(combined_value(h, "Cache-Control"), h.get("Pragma"))
               if "Cache-Control" in h or "Pragma" in h else NO_REQUEST_DIRECTIVES)
        variants = await self.store.get(key)
        entry = select_variant(variants, h)
        if entry is None:
            if req.only_if_cached:  # §5.2.1.7
                outcome.detail = "only-if-cached"
                return self._error(request, 504, "not in cache (only-if-cached)", outcome)
            outcome.fwd = "vary-miss" if variants else "uri-miss"
            reuse = None
        else:
            reuse = decide_reuse(
                lifetime=entry.lifetime, initial_age=entry.initial_age,
                response_time=entry.response_time, directives=entry.directives,
                request=req, now=time.time(), shared=plan.shared,
            )
            if (reuse.action is Action.REVALIDATE and reuse.forward == "request"
                    and validated_since is not None and entry.response_time >= validated_since):
                # A collapsed waiter whose own request asked for validation (no-cache,
                # max-age=0): the leader's, completed after it arrived, answers that.
                # Never for a response that demands validation per request (§5.2.2.4).
                reuse = reuse._replace(action=Action.SERVE)
            if reuse.action is Action.SERVE:
                outcome.status = "HIT" if reuse.ttl > 0 else "STALE"
                return self._serve(request, entry, reuse, outcome)
            if reuse.action is Action.SERVE_STALE_REVALIDATE:  # RFC 5861 §3
                if not req.no_store:  # §5.2.1.5: nothing of a no-store exchange is stored
                    self._refresh_in_background(request, key, target, entry)
                outcome.status, outcome.detail = "UPDATING", "stale-while-revalidate"
                return self._serve(request, entry, reuse, outcome)
            if reuse.action is Action.UNUSABLE:  # §5.2.1.7
                outcome.detail = "only-if-cached"
                return self._error(request, 504, "stale in cache (only-if-cached)", outcome)
            outcome.fwd = reuse.forward
        if (collapse and plan.route.cache.collapse and request.method == "GET"
                and not self.collapser.passes(key) and (entry is None or shareable_validation(
                    no_cache=entry.directives.no_cache, lifetime=entry.lifetime, reuse=reuse))):
            return await self._collapsed(request, key, target, outcome, req, entry, reuse)
        return await self._forward(request, key, target, outcome, req, entry, reuse)

    def _serve(
        self, request: web.Request, entry: CachedResponse, reuse: Reuse, outcome: Outcome
    ) -> web.Response:
        outcome.hit = outcome.fwd is None  # RFC 9211 §2.1: answered without going forward
        outcome.from_cache = True
        outcome.ttl, outcome.age = reuse.ttl, reuse.age
        return stored_response(request, entry, reuse.age, outcome, self.cache_name,
                               self.local_via, self.blocks)

    async def _collapsed(
        self, request: web.Request, key: str, target: str, outcome: Outcome,
        req: RequestDirectives, entry: CachedResponse | None, reuse: Reuse | None,
    ) -> web.StreamResponse:
        """One upstream request per key at a time; the others wait, then look again."""
        collapser = self.collapser
        fut, leading = collapser.join(key)
        if not leading:
            arrived = time.time()
            await collapser.wait(fut, request[PLAN].route.cache.collapse_timeout)
            outcome.collapsed = True
            # Served from what the leader stored, or upstream alone when it stored nothing usable.
            return await self._cached(request, key, target, outcome, collapse=False,
                                      validated_since=arrived)
        try:
            return await self._forward(request, key, target, outcome, req, entry, reuse,
                                       release=lambda: collapser.release(key, fut))
        finally:
            collapser.release(key, fut)
            if outcome.stored:
                collapser.unmark_pass(key)
            elif (outcome.detail in PASS_REASONS and not req.no_store
                  and "Authorization" not in request.headers):
                collapser.mark_pass(key)  # the response itself is not storable

    async def _forward(
        self, request: web.Request, key: str, target: str, outcome: Outcome,
        req: RequestDirectives, entry: CachedResponse | None, reuse: Reuse | None,
        release: Callable[[], None] | None = None,
    ) -> web.StreamResponse:
        fill = Fill(key=key, request=req, request_headers=request.headers, release=release)
        if entry is not None and reuse is not None:
            return await self._revalidate(request, target, outcome, fill, entry, reuse)
        outcome.status = "EXPIRED" if entry is not None else "MISS"
        return await self._fetch(request, target, outcome, fill)

    async def _fetch(
        self, request: web.Request, target: str, outcome: Outcome, fill: Fill
    ) -> web.StreamResponse:
        """A full request upstream; the response streams to the client and may be stored.
        A HEAD is sent as GET so that its answer can be stored for both (as nginx does);
        the HEAD client gets no body (relay)."""
        plan = request[PLAN]
        assert plan.exchange is not None
        may_store = request.method in ("GET", "HEAD") and not fill.request.no_store
        if not may_store:
            fill.done()  # nothing will be stored: waiters need not wait for the body
        method = "GET" if may_store else request.method
        fields = self._fields(request, strip_conditionals=may_store)
        request_time = time.time()
        resp = await plan.exchange.send(method, plan.upstream + target, fields, None, outcome)
        return await plan.exchange.relay(request, resp, outcome, fill if may_store else None,
                                         request_time, upstream_method=method)

    async def _revalidate(
        self, request: web.Request, target: str, outcome: Outcome, fill: Fill,
        entry: CachedResponse, reuse: Reuse,
    ) -> web.StreamResponse:
        """§4.3: ask the origin (conditionally when we hold validators); a 304 freshens
        the stored response, an error may be answered with it (RFC 5861 §4)."""
        plan = request[PLAN]
        assert plan.exchange is not None
        fields = self._fields(request, strip_conditionals=True, extra=conditional_fields(entry))
        request_time = time.time()
        try:
            resp = await plan.exchange.send("GET", plan.upstream + target, fields, None, outcome)
        except UpstreamError as exc:
            return self._stale_on_error(request, entry, reuse, outcome, fill, exc.status, exc)
        pairs = list(resp.headers.items())
        if resp.status == 304 and selects(entry, pairs):
            resp.release()
            outcome.status, outcome.fwd_status = "REVALIDATED", 304
            updated = await self._update_stored(plan, entry, pairs, request_time, fill, outcome)
            age = updated.initial_age + max(0.0, time.time() - updated.response_time)
            return self._serve(request, updated, Reuse(Action.SERVE, age, updated.lifetime - age,
                                                       ""), outcome)
        if resp.status in STALE_IF_ERROR_STATUSES and may_serve_stale_on_error(
            ttl=reuse.ttl, directives=entry.directives, request=fill.request, shared=plan.shared
        ):  # RFC 5861 §4: the origin erred
            resp.release()
            return self._stale_on_error(request, entry, reuse, outcome, fill, resp.status, None)
        outcome.status = "EXPIRED"
        if resp.status == 304:  # a 304 for another representation: fetch it whole (§4.3.4)
            resp.release()
            return await self._fetch(request, target, outcome, fill)
        # Sent as GET even for a HEAD: the answer may be stored (relay sends no body to HEAD).
        return await plan.exchange.relay(request, resp, outcome, fill, request_time,
                                         replaces=entry, upstream_method="GET")

    def _stale_on_error(
        self, request: web.Request, entry: CachedResponse, reuse: Reuse, outcome: Outcome,
        fill: Fill, status: int, exc: UpstreamError | None,
    ) -> web.StreamResponse:
        fill.done()
        outcome.fwd_status = status if exc is None else None
        shared = request[PLAN].shared
        if may_serve_stale_on_error(ttl=reuse.ttl, directives=entry.directives,
                                    request=fill.request, shared=shared):
            outcome.status, outcome.detail = "STALE", "stale-if-error"
            return self._serve(request, entry, reuse, outcome)
        if exc is None:  # unreachable: only 5xx from the origin gets here with stale allowed
            raise UpstreamError(502, "upstream error")
        outcome.status = "ERROR"
        if stale_forbidden(entry.directives, shared):
            # §5.2.2.2: must-revalidate and no origin: 504, never the stale copy.
            return self._error(request, 504, "upstream unavailable (must-revalidate)", outcome)
        return self._error(request, exc.status, exc.reason, outcome)

    async def _update_stored(
        self, plan: RoutePlan, entry: CachedResponse, pairs: list[tuple[str, str]],
        request_time: float, fill: Fill, outcome: Outcome,
    ) -> CachedResponse:
        """§4.3.4: the stored response takes the 304's fields (§3.2) and fresh timings.
        The merged response is judged like a new one (§3): a 304 may bring Set-Cookie,
        private fields or no-store. Returns what this client gets."""
        exchange = plan.exchange
        assert exchange is not None
        response_time = time.time()
        merged = merge_304(entry, with_date(pairs, response_time))
        view = make_stored_response(
            key=entry.key, vary=entry.vary, vary_values=entry.vary_values, status=entry.status,
            pairs=merged, body=entry.body, request_time=request_time,
            response_time=response_time, shared=plan.shared, heuristics=plan.heuristics,
        )
        store_plan = exchange.plan("GET", entry.status, merged, len(entry.body), fill,
                                   request_time, outcome)
        if store_plan is not None:
            await exchange.put(replace(store_plan, response_time=response_time), entry.body)
        else:
            await discard(self.store, entry.key)
        fill.done()
        return view

    def _refresh_in_background(
        self, request: web.Request, key: str, target: str, entry: CachedResponse
    ) -> None:
        """RFC 5861 §3: one background revalidation per key at a time."""
        if key in self._refreshing:
            return
        self._refreshing.add(key)
        # The client's own cache directives were about its answer, not this refresh.
        fields = [(k, v) for k, v in self._fields(
            request, strip_conditionals=True, extra=conditional_fields(entry))
            if k.lower() not in ("cache-control", "pragma")]
        refresh = self._refresh(request[PLAN], key, target, entry, fields, request.headers)
        task = asyncio.get_running_loop().create_task(refresh)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(
        self, plan: RoutePlan, key: str, target: str, entry: CachedResponse,
        fields: list[tuple[str, str]], headers: Headers,
    ) -> None:
        exchange = plan.exchange
        assert exchange is not None
        try:
            request_time = time.time()
            resp = await exchange.send("GET", plan.upstream + target, fields, None)
            pairs = list(resp.headers.items())
            fill = Fill(key=key, request=RequestDirectives(), request_headers=headers)
            if resp.status == 304 and selects(entry, pairs):
                resp.release()
                await self._update_stored(plan, entry, pairs, request_time, fill, Outcome())
            else:
                await exchange.consume(resp, fill, request_time, replaces=entry)
        except UpstreamError as exc:
            log.info("background revalidation of %s failed: %s", key, exc.reason)
        except Exception:  # a bug of ours must not end as "Task exception was never retrieved"
            log.exception("background revalidation of %s failed", key)
        finally:
            self._refreshing.discard(key)

    # -- other methods -----------------------------------------------------

    async def _pass(
        self, request: web.Request, key: str, target: str, outcome: Outcome
    ) -> web.StreamResponse:
        """Forward as is; a non-error answer to an unsafe method invalidates (§4.4)."""
        plan = request[PLAN]
        assert plan.exchange is not None
        body = request.content if request.body_exists else None
        fields = self._fields(request)
        resp = await plan.exchange.send(request.method, plan.upstream + target, fields, body,
                                        outcome)
        try:
            for uri in invalidated_uris(request.method, resp.status, key,
                                        resp.headers.get("Location"),
                                        resp.headers.get("Content-Location")):
                await discard(self.store, uri)
        except BaseException:
            resp.close()
            raise
        return await plan.exchange.relay(request, resp, outcome, None, time.time())

    def _server_options(self, request: web.Request, outcome: Outcome) -> web.Response:
        """RFC 9110 §9.3.7: "OPTIONS *" is about the server in general, and to the
        client this proxy is the server; other methods cannot target "*"."""
        outcome.status = "BYPASS"
        if request.method != "OPTIONS":
            return self._error(request, 400, "only OPTIONS may target *", outcome)
        return final_answer(request, [("Via", self.local_via)])

    # -- helpers -------------------------------------------------------------

    def _fields(
        self, request: web.Request, *, strip_conditionals: bool = False,
        extra: list[tuple[str, str]] | None = None,
    ) -> list[tuple[str, str]]:
        plan = request[PLAN]
        fields = request_fields(
            list(request.headers.items()), policy=plan.forward, version=request.version,
            client_ip=request.remote, scheme=request.scheme,
            strip_conditionals=strip_conditionals, extra=extra,
            host=request.get(EFFECTIVE_HOST),
            max_forwards=forwards_left(request.method, request.headers.get("Max-Forwards")),
        )
        return upstream_fields(fields, plan) if rewrites_referer(plan) else fields

    def _error(
        self, request: web.Request, status: int, message: str, outcome: Outcome
    ) -> web.Response:
        return error_response(status, message, outcome, self.cache_name, self.local_via)
