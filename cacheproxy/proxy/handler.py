"""The request handler: names the resource and its route, applies the policies that act
before the cache, and hands the request to the flow's driver."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

from aiohttp import web
from multidict import CIMultiDict

from cacheproxy.config import Config, ConfigError, masked_url, parse_listen
from cacheproxy.http.fields import LOOP_HOPS, loops_back
from cacheproxy.http.flow import Forward, bypass, request_facts
from cacheproxy.http.front_scheme import front_scheme
from cacheproxy.http.invalidation import SAFE_METHODS
from cacheproxy.http.origins import keyed_authority
from cacheproxy.http.target import asks_whole_server, forwards_left, request_target
from cacheproxy.http.upgrade import websocket_key
from cacheproxy.observe.outcome import (
    OUTCOME,
    Outcome,
    forwarded_outcome,
    note_lookup,
)
from cacheproxy.policies.forward import (
    Allowed,
    ForwardAccess,
    ForwardDecision,
    Refused,
    connect_decision,
    names_this_server,
    target_decision,
)
from cacheproxy.policies.referer import redact
from cacheproxy.proxy.collapse import Collapser
from cacheproxy.proxy.destinations import Lookups, address_refused
from cacheproxy.proxy.downstream import (
    Answer,
    ClientBodyError,
    ClientMessage,
    Downstream,
    StatefulMessage,
    local_port,
    text_answer,
)
from cacheproxy.proxy.driver import Ctx, Driver, Fields
from cacheproxy.proxy.exchange import Exchange
from cacheproxy.proxy.forwarding import OwnFields, request_field_parts, via_value
from cacheproxy.proxy.local import final_answer
from cacheproxy.proxy.policy_steps import inbound
from cacheproxy.proxy.pool import Origin
from cacheproxy.proxy.respond import error_response
from cacheproxy.proxy.routed import Planned
from cacheproxy.proxy.routing import PLAN, Plans, RoutePlan, keyed_origin
from cacheproxy.proxy.upstream import Refusal, UpstreamError
from cacheproxy.proxy.web_adapter import WebDownstream, answer_of, web_response
from cacheproxy.store import Store

log = logging.getLogger("cacheproxy")


def check_plans(config: Config, default_upstream: str, demo_upstream: str) -> None:
    """Raise ConfigError if a process could not route by config: every request needs an
    upstream (demo_upstream: the demo origin's URL, when one runs), and building the plans
    compiles every policy. The --workers supervisor checks a reload with it too."""
    if not (config.proxy.upstream or demo_upstream or config.catch_all_route):
        raise ConfigError("proxy.upstream", "is needed: no route catches every request "
                          "and no demo origin runs (it starts only with the process)")
    Plans.build(config, default_upstream)


class CacheProxy:
    def __init__(self, config: Config, upstream: str, store: Store) -> None:
        self.store = store
        self.default_upstream = upstream.rstrip("/")  # the demo origin's when none is set
        # The demo origin runs only when the start had no proxy.upstream: a reload may then
        # leave it empty; otherwise an empty one is refused (nothing would follow it).
        self.demo_upstream = "" if config.proxy.upstream else self.default_upstream
        self.exchange = Exchange(config.proxy, store, config.cache.fill_buffer_bytes)
        self.driver = Driver(store, self.exchange, Collapser(config.cache.collapse_timeout))
        # Set by the application (observe/): PURGE.
        self.purge: Callable[[web.Request, list[str], Outcome], Awaitable[web.Response]] \
            | None = None
        self.reconfigure(config)

    def check_config(self, config: Config) -> None:
        """Raise ConfigError if config cannot be applied (reload checks before it changes
        anything): building the plans compiles every policy."""
        check_plans(config, self.default_upstream, self.demo_upstream)

    def reconfigure(self, config: Config) -> None:
        """Derive what requests read from config; called at start and on reload (SIGHUP).
        A request takes its route's plan once, when it starts, so one in flight finishes
        by the config it began with."""
        self.config = config
        self.cache_name = config.proxy.via
        # Via on responses the cache makes itself (replays, errors): it speaks HTTP/1.1.
        self.local_via = via_value((1, 1), config.proxy.via)
        self.driver.rename(self.cache_name, self.local_via)
        # (the lean plane's connections carry their own, as configured when they came)
        self.exchange.client_body_timeout = config.proxy.client_body_timeout
        # (Stored entries hold the upstream's own CORS fields whatever cors.mode: the new
        # plans' mode applies to them on the way out, no purge needed: routing.plan_route.)
        self.plans = Plans.build(config, self.default_upstream)
        self._access: dict[int, ForwardAccess] = {}
        # Where routes send: what a forward client names elsewhere is vetted by address.
        routed = getattr(self, "_routed", frozenset())
        self._routed = frozenset(self.exchange.origin_of(url) for url in self.plans.upstreams())
        # Idle connections to an origin no route sends to any more would sit out their
        # keepalive (forward mode's, to origins clients name, are not routed ones: kept).
        self.exchange.pool.close_idle(routed - self._routed, self._routed)
        self.exchange.pool.vet = self._vet if config.forward.enabled else None
        # Forward clients' names: c-ares, not the loop's resolver threads (destinations).
        if not hasattr(self, "lookups"):
            self.lookups = Lookups()
        self.lookups.configure(config.forward.resolver, config.proxy.connect_timeout)
        self.exchange.pool.lookups = self.lookups

    def cache_key(self, scheme: str, authority: str, target: str) -> str:
        """The key a request for target on authority (Host) is stored under (admin purge).
        A URL on an upstream's origin is a key as the entries list shows it: kept as is."""
        plans = self.plans
        user, _, host = authority.rpartition("@")  # (a route's credentials' user, as listed)
        origin = keyed_origin(scheme, host, user or None)
        if origin in plans.stored_origins() or "#" in target:
            return origin + (target or "/")  # a listed key ("…#private:…")
        return plans.match(authority, target).cache_key(scheme, authority, target)

    def forward_access(self, port: int) -> ForwardAccess:
        """[forward] compiled with the port this request came in on (its listener)."""
        access = self._access.get(port)
        if access is None:
            host = parse_listen(self.config.proxy.listen)[0]
            admin = self.config.admin.listen  # the control plane: never reached through us
            access = self._access[port] = ForwardAccess.from_config(
                self.config.forward, host, port,
                other_listeners=[parse_listen(admin)] if admin else ())
        return access

    def _forward_target(self, request: ClientMessage, raw: str, authority: str
                        ) -> ForwardDecision | None:
        """Forward mode's decision on an absolute-form target; None when it names this
        listener itself over http (policies/forward.py names_this_server): the request is
        then this server's own, routed as in origin-form (a browser whose proxy is this
        one opening the site behind it at the proxy's address)."""
        scheme = raw.partition(":")[0].lower()
        access = self.forward_access(local_port(request))
        d = target_decision(access, scheme, authority)
        if isinstance(d, Refused) and d.status == 508 \
                and names_this_server(access, scheme, authority):
            return None
        return d

    def _vet(self, origin: Origin) -> Callable[[str], UpstreamError | None] | None:
        """The pool's check of what an origin a forward client named resolves to
        (address_refusal), by the config in force and every listener requests came in on;
        None for the routes' own upstreams (the operator's, not a client's choice)."""
        if origin in self._routed:
            return None
        accesses = tuple(self._access.values()) or (self.forward_access(0),)
        name = f"[{origin.host}]" if ":" in origin.host else origin.host

        def check(address: str) -> UpstreamError | None:
            for access in accesses:
                refused = address_refused(access, name, address, origin.port)
                if refused is not None:
                    return Refusal(refused.status, refused.reason)
            return None
        return check

    def upstreams(self) -> tuple[str, ...]:
        """Every origin this proxy sends to (readiness checks)."""
        return self.plans.upstreams()

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: the upstream pool's connections close with the app."""
        yield
        await self.driver.stop()
        await self.exchange.close()
        await self.lookups.close()

    # -- entry point ------------------------------------------------------

    async def serve(self, request: ClientMessage, out: Downstream, started: float,
                    planned: Planned | None = None) -> Answer | None:
        """The answer to request, or None when it was streamed through out. planned: the
        quick path routed it and looked it up already (proxy/quick.py), and then request
        is a connection's ClientRequest."""
        if planned is not None:
            ctx = self.planned(request, out, planned, started)  # type: ignore[arg-type]
            return await self.guarded(ctx.request, ctx.outcome,
                                      self.driver.forward_or_collapse(
                                          ctx, planned.forward, None, planned.variants),
                                      out)
        # The request log reads it once the response went out.
        outcome = request[OUTCOME] = Outcome(started=started)
        return await self.guarded(request, outcome, self._respond(request, out, outcome), out)

    async def guarded(self, request: ClientMessage, outcome: Outcome,
                      step: Awaitable[Answer | None], out: Downstream | None = None
                      ) -> Answer | None:
        """step's answer; an error answer (logged) when it fails. out: where it goes
        (whether its client is still there, for the failure's line)."""
        try:
            return await step
        except ClientBodyError:  # the client's body stalled or it left: neither an error
            raise  # of ours nor the origin's; its connection answers it (body_failed)
        except Refusal as exc:  # (a refetch's origin, refused by its address: no failure)
            return self.refused(exc, outcome)
        except UpstreamError as exc:  # the upstream failed mid-exchange (a body being
            # stored first, a refetch): one line, as the driver's for a failure before
            # the head, naming the upstream, the request and the cause
            plan = request.get(PLAN)
            log.warning("upstream %s failed for %s %s: %s; %s",
                        masked_url(plan.upstream) if plan is not None else "-", request.method,
                        redact(request.raw_path, outcome.secrets), exc.reason,
                        "its client had left: nothing answered" if out is not None
                        and out.left else f"answered {exc.status}")
            outcome.status = "ERROR"
            return self._error(exc.status, exc.reason, outcome, plan)
        except Exception:  # a bug of ours: log it, answer briefly, keep serving
            return self.internal_error(request, outcome)

    def refused(self, exc: Refusal, outcome: Outcome) -> Answer:
        """A forward destination refused by what its name resolved to: DENIED, with the
        reason as policy, as a name refused as written (no upstream failed)."""
        outcome.status = "DENIED"
        outcome.policy = f"forward: {exc.reason}"
        return self._error(exc.status, exc.reason, outcome)

    def internal_error(self, request: ClientMessage, outcome: Outcome) -> Answer:
        """A bug of ours (the exception being handled): logged, a brief 500."""
        log.exception("internal error on %s %s", request.method, request.raw_path)
        outcome.status = "ERROR"
        return self._error(500, "internal proxy error", outcome)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The proxy as an aiohttp handler (PURGE, and apps that embed it)."""
        out = WebDownstream(request, self.exchange.send_timeout)
        try:
            answer = await self.serve(request, out, time.perf_counter())
        except ClientBodyError as exc:
            body_failed(request, exc)
            if out.response is not None:  # its head went out; the relay closed it
                return out.response
            response = web_response(self.body_failed_answer(request[OUTCOME], exc.status)) \
                if exc.status in (400, 408) else web.Response(status=499)  # (nobody reads)
            response.force_close()  # the rest of the body is not waited for
            return response
        if answer is None:
            assert out.response is not None
            return out.response
        return web_response(answer)

    async def _respond(self, request: ClientMessage, out: Downstream, outcome: Outcome
                       ) -> Answer | None:
        h = request.headers
        raw = request.raw_path
        tunnel: Allowed | None = getattr(request, "tunnel", None)
        if raw == "*" and (tunnel is None or request.method != "OPTIONS"):
            # Asterisk-form (RFC 9112 §3.2.4) asks this server; inside an intercepted
            # CONNECT it asks the origin the client believes it talks to, which answers.
            return self._server_options(request, outcome)
        host = h.get("Host")
        if host is None and request.version < (1, 1):
            host = self.plans.default.forward.upstream_host  # HTTP/1.0 may omit Host
        parsed = request_target("/" if raw == "*" else raw, host)  # ("*": Host checked)
        if parsed is None:  # RFC 9112 §3.2: a missing or invalid Host is a 400
            outcome.status = "ERROR"
            outcome.secrets = self.plans.secrets  # no route chosen: any route's redacted
            # Refused before the cache, as the parser's 400s: no Cache-Status, no X-Cache
            # (README), since no lookup was made and nothing was forwarded.
            return text_answer(400, "400 invalid Host or request target\n",
                               CIMultiDict({"Cache-Control": "no-store"}))
        target = outcome.target = "*" if raw == "*" else parsed.path
        authority = outcome.host = parsed.authority
        plans = self.plans  # read once: a reload (SIGHUP) does not change a request midway
        outcome.secrets = plans.secrets  # (for a refusal before the route is chosen)
        scheme = request.scheme
        if tunnel is not None:  # inside an intercepted CONNECT: that origin (https, or
            # http for a client that spoke plain HTTP in it: connect.py)
            refused = self._tunnel_refused(tunnel, local_port(request))
            if refused is not None:  # the config in force now (a reload since the CONNECT)
                outcome.status = "DENIED"
                outcome.policy = f"forward: {refused.reason}"
                return self._error(refused.status, refused.reason, outcome)
            plan = plans.forward_to(scheme, tunnel.host, tunnel.port)
            authority = outcome.host = plan.forward.upstream_host  # (not the client's Host)
        elif parsed.absolute and self.config.forward.enabled \
                and (d := self._forward_target(request, raw, authority)) is not None:
            scheme = raw.partition(":")[0].lower()
            if isinstance(d, Refused):  # [forward] allow_hosts / deny_hosts, or a loop
                outcome.status = "DENIED"
                outcome.policy = f"forward: {d.reason}"
                return self._error(d.status, d.reason, outcome)
            plan = plans.forward_to(scheme, d.host, d.port)
            authority = outcome.host = plan.forward.upstream_host  # as keyed: one spelling
            if asks_whole_server(request.method, raw):  # RFC 9112 §3.2.4: sent on as "*"
                target = outcome.target = "*"
        else:
            plan = plans.match(authority, target)
            if plan.forward.trust_forwarded:  # behind a TLS terminator of one's own: the
                scheme = front_scheme(h) or scheme  # scheme it says is the request's
        request[PLAN] = plan
        if plans.routed:
            outcome.route = plan.route.name
        outcome.secrets = plan.route.referer.strip_params
        key = plan.cache_key(scheme, authority, target)
        # Behind a trusted TLS front both schemes' entries exist for the URL: a purge and
        # an invalidation cover both, as the admin API's purge of a path does (Varnish's
        # PURGE too: its hash has no scheme), wherever the request came in. (Safe methods
        # remove nothing: their hits are not kept waiting for a second key.)
        unsafe = request.method not in SAFE_METHODS
        twin = plan.scheme_twin(scheme, authority, target) if unsafe else None
        if request.method == "PURGE" and self.purge is not None:
            outcome.status = "BYPASS"
            return answer_of(await self.purge(request, [key] if twin is None else [key, twin],
                                              outcome))
        stopped = inbound(request, plan, outcome, target, authority, self.cache_name,
                          self.local_via)  # hotlink gate, CORS preflight: before the cache
        if stopped is not None:
            return stopped
        hops = forwards_left(request.method, h.get("Max-Forwards"))
        if hops == 0:  # RFC 9110 §7.6.2: the last hop answers itself
            outcome.status = "BYPASS"
            return final_answer(request, [("Via", self.local_via)])
        if "Via" in h and loops_back(h.getall("Via"), self.cache_name):
            outcome.status = "ERROR"  # RFC 5842 §7.2, as forward mode answers a loop
            return self._error(508, "loop detected: the request passed this proxy "
                               f"{LOOP_HOPS} times (Via)", outcome)
        facts = request_facts(request.method, h, has_body=request.body_exists,
                              referer_sent=plan.cache.referer_sent)
        ctx = Ctx(request, out, plan, key, target, facts, outcome,
                  _partial(_fields, self, request, plan, authority, scheme), twin,
                  plans.derived_owner(plan) if unsafe else None)
        if "Upgrade" in h and self.config.proxy.websocket:  # (rare: one look per request)
            key = _websocket_key(request, out)
            if key is not None:
                return await self.driver.upgrade(ctx, key,
                                                 self.config.proxy.websocket_idle_timeout)
        passing = bypass(facts)  # RFC 9211 §2.2: methods, bodies, ranges, preconditions
        if passing is None:
            return await self.driver.cached(ctx)
        note_lookup(outcome, passing)
        return await self.driver.forward(ctx, passing)

    def planned(self, request: StatefulMessage, out: Downstream, planned: Planned,
                started: float) -> Ctx:
        """An origin-form GET or HEAD the quick path routed (as _respond does) and looked
        up, as the driver carries it on from its forward step."""
        route, facts, fwd, _ = planned
        plan = route.plan
        outcome = forwarded_outcome(  # (routed_outcome, then note_lookup of fwd)
            started, route.authority, route.target, route.route_name, route.secrets, fwd)
        # (request[PLAN], request[OUTCOME]: the state's dict written without a Python-level
        # __setitem__ call each, about 1,000 instructions a quick miss; only a connection's
        # ClientRequest is planned)
        state = request.state
        state[PLAN] = plan
        state[OUTCOME] = outcome
        # (made as the tuple it is, every field given: Ctx's Python-level __new__ costs
        # every quick miss some 1,700 instructions more; its fields a partial, not a
        # lambda: no closure cells for this frame's names, made and freed per miss; of
        # the function, not of a bound method made per miss for it)
        return _made(Ctx, (request, out, plan, route.key, route.target, facts, outcome,
                           _partial(_fields, self, request, plan, route.authority,
                                    route.scheme),
                           None, None))

    def _tunnel_refused(self, tunnel: Allowed, port: int) -> Refused | None:
        """A request inside an intercepted CONNECT is checked as its CONNECT was, by the
        config in force: a reload that refuses the host (or ends forward mode) applies to
        tunnels already open, as Squid's http_access does to each bumped request."""
        if not self.config.forward.enabled:
            return Refused(403, "forward mode is off ([forward] enabled)")
        host = f"[{tunnel.host}]" if ":" in tunnel.host else tunnel.host
        d = connect_decision(self.forward_access(port), f"{host}:{tunnel.port}")
        return d if isinstance(d, Refused) else None

    def _server_options(self, request: ClientMessage, outcome: Outcome) -> Answer:
        """RFC 9110 §9.3.7: "OPTIONS *" is about the server in general, and to the
        client this proxy is the server; other methods cannot target "*"."""
        outcome.status = "BYPASS"
        if request.method != "OPTIONS":
            return self._error(400, "only OPTIONS may target *", outcome)
        return final_answer(request, [("Via", self.local_via)])

    # -- helpers -------------------------------------------------------------

    def _fields(self, request: ClientMessage, plan: RoutePlan, authority: str,
                scheme: str | None, fwd: Forward) -> Fields:
        """What goes upstream for fwd: the client's end-to-end fields (its conditionals
        replaced by ours when the cache fills or validates, §4.3.1-§4.3.2), the Host and
        X-Forwarded-Proto made from the authority and scheme the key names (`GET https://…`
        sent in plain text is stored under the https URL: the origin is told https), and
        the route's Referer policy: field_parts's, joined. A Ctx's fields: a partial of it
        given all but fwd (one frame per forward, no closure made per request)."""
        fields, own = self.field_parts(request, plan, authority, scheme, fwd)
        fields += own
        fields += fwd.conditional
        return fields

    def field_parts(self, request: ClientMessage, plan: RoutePlan, authority: str,
                    scheme: str | None, fwd: Forward) -> tuple[Fields, OwnFields]:
        """_fields in the parts request_field_parts gives (the client's fields, the
        proxy's own), fwd.conditional to follow them: what the quick forward makes its
        head of (exchange.request_head_parts)."""
        scheme = scheme or request.scheme
        return request_field_parts(
            request.headers.items(), policy=plan.forward, version=request.version,
            client_ip=request.remote, scheme=scheme,
            strip_conditionals=fwd.strips_client_conditionals,
            host=keyed_authority(scheme, authority),
            max_forwards=forwards_left(request.method, request.headers.get("Max-Forwards")),
            # (every route: a user:password@ and a fragment go whatever strip_params holds)
            referer=plan.route.referer,
            content=request.body_exists,
        )

    def _error(self, status: int, message: str, outcome: Outcome,
               plan: RoutePlan | None = None) -> Answer:
        """plan: the request's, whose names it answers under (a reload may rename us)."""
        if plan is not None:
            return error_response(status, message, outcome, plan.forward.via, plan.local_via)
        return error_response(status, message, outcome, self.cache_name, self.local_via)

    def body_failed_answer(self, outcome: Outcome, status: int) -> Answer:
        """The answer to a request whose body stalled (408, RFC 9110 §15.5.9) or broke its
        framing (400, RFC 9112 §7.1). Logged ERROR: an answer of the proxy's own, as the
        400 of a malformed head is, never one from the origin."""
        outcome.status = "ERROR"
        if status == 408:
            return self._error(408, "request timeout", outcome)
        return self._error(400, "bad request body", outcome)

    def stopped_answer(self, outcome: Outcome) -> Answer:
        """The answer to a request still unanswered when a graceful stop ran out of
        proxy.shutdown_timeout (RFC 9110 §15.6.4: unavailable for now, try again)."""
        outcome.status = "ERROR"
        return self._error(503, "shutting down", outcome)


_made = tuple.__new__
_partial = partial
_fields = CacheProxy._fields
# (planned() gives Ctx every field by position: a field added must be given there too)
assert len(Ctx._fields) == 10


def _websocket_key(request: ClientMessage, out: Downstream) -> str | None:
    """The key of a WebSocket opening handshake that out can switch to a tunnel for (the
    lean plane's connections can; the aiohttp runner's cannot: there the Upgrade goes no
    further, as any hop-by-hop field), else None."""
    switchable = getattr(out, "switchable", None)
    if switchable is None or not switchable():
        return None
    h = request.headers
    # RFC 9110 §5.3: several lines of a field are one list (`Connection: keep-alive` then
    # `Connection: Upgrade`), read whole as §7.6.1 reads Connection.
    joined = {name: ", ".join(h.getall(name, ())) for name in ("Upgrade", "Connection")}
    return websocket_key(request.method, request.version, joined,
                         h.getall("Sec-WebSocket-Key", ()), request.body_exists)


def body_failed(request: ClientMessage, exc: ClientBodyError) -> None:
    """The one log line for a request body that stopped before its end: a WARNING for a
    client that stalled (408), INFO for one that left (499, as nginx logs its "client
    prematurely closed connection"); never an ERROR, never an upstream's failure."""
    if exc.status == 408:
        log.warning("client %s sent nothing of the body of %s %s for %gs: 408, connection "
                    "closed", request.remote, request.method, request.path, exc.timeout)
    elif exc.status == 400:
        log.info("client %s sent a body that broke its framing in %s %s: 400",
                 request.remote, request.method, request.path)
    else:
        log.info("client %s left before the end of the body of %s %s", request.remote,
                 request.method, request.path)
