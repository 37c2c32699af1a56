"""What the handler needs per route, built once per config: the route's upstream, how
requests are forwarded to it, and its cache settings as the request flow reads them.
Plain values: the pooled session and the store belong to the handler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from urllib.parse import urlsplit

from aiohttp import web
from yarl import URL

from cacheproxy.config import Config
from cacheproxy.http.cache_key import origin_of, primary_key
from cacheproxy.http.flow import CacheSettings
from cacheproxy.http.storability import StorePolicy
from cacheproxy.http.stored import Heuristics
from cacheproxy.http.targeted import Targeting, downstream_removed, surrogate_capability
from cacheproxy.policies.cors import CorsPolicy
from cacheproxy.policies.referer import forwarded_referer
from cacheproxy.policies.routes import Route, RouteTable
from cacheproxy.proxy.forwarding import ForwardPolicy, via_value


@dataclass(frozen=True, slots=True)
class RoutePlan:
    route: Route
    upstream: str             # without a trailing "/": the target is appended
    upstream_scheme: str
    upstream_path: str        # the upstream URL's path, without a trailing "/"
    forward: ForwardPolicy
    cache: CacheSettings
    # Response fields this cache consumes and removes on the way out (Surrogate-Control)
    removed: frozenset[str] = frozenset()
    # Forward mode's plan for an origin a client named (Plans.forward_to)
    forwarded: bool = False
    # The upstream's origin as a key names it: with the user its URL's credentials name
    # ("http://alice@api"), since the origin answers for that account (never the password)
    key_origin: str = ""
    # Via on the answers the cache makes itself (replays, errors; it speaks HTTP/1.1), as
    # this config names the cache (forward.via): a request in flight at a reload answers
    # under the name it went upstream with
    local_via: str = ""

    def cache_key(self, scheme: str, authority: str, target: str) -> str:
        """RFC 9111 §2: the primary key is the URI of the response; here, everything the origin
        sees that selects it. When the origin sees the client's Host (host_header = pass, or
        X-Forwarded-Host, which an origin may build links from), that Host is in the key, as
        the client's URL: one Host's answer is never another's. Otherwise every Host reaches
        the same upstream URL, which is the key (nginx's $proxy_host key): replicas reached by
        different names share entries. A private-cache route (shared = false, the default
        route too) keys apart, so what it may keep for one user never reaches a shared
        route's users. Forward mode's entries ("#forward": the answers of the origin a
        client named) are keyed apart from reverse mode's, whose key may name the same
        URL for the upstream's answer to a Host any client may send. scheme: the one the
        request is for, which the origin is told (X-Forwarded-Proto): this hop's, or the
        one a trusted front proxy says (http/front_scheme.py); an https client's answer
        (no redirect to https, https links) is never an http client's, nor the reverse."""
        if self.client_host_seen:
            key = primary_key(scheme, authority, target)
        else:
            key = self.key_origin + self.upstream_path + target
            if scheme == "https" and not self.forwarded:  # (the listener speaks no TLS:
                key += "#https"  # only a trusted front says https; forward mode's is the URL's)
        if self.forwarded:
            key += "#forward"
        return key if self.cache.shared else f"{key}#private:{self.route.name}"

    def scheme_twin(self, scheme: str, authority: str, target: str) -> str | None:
        """The URL's key under the other scheme, when it may hold an entry: behind a trusted
        TLS front (proxy.trust_forwarded) one URL has an http clients' and an https
        clients' entry, and what removes one (a purge, an invalidation) removes both."""
        if not self.forward.trust_forwarded or self.forwarded:
            return None
        twin = self.cache_key("https" if scheme == "http" else "http", authority, target)
        return None if twin == self.cache_key(scheme, authority, target) else twin

    @property
    def client_host_seen(self) -> bool:
        return self.forward.pass_host or self.forward.x_forwarded_host


# X-Forwarded-For goes upstream with the client's address, which no key holds.
_REWRITTEN = frozenset({"x-forwarded-for"})


def plan_route(route: Route, config: Config, default_upstream: str) -> RoutePlan:
    upstream = (route.upstream or default_upstream).rstrip("/")
    up = URL(upstream)
    cache = route.cache
    targeting = Targeting(tuple(f.lower() for f in cache.targeted_fields), config.proxy.via)
    upstream_host = up.raw_authority.rpartition("@")[2]
    return RoutePlan(
        route=route,
        upstream=upstream,
        key_origin=keyed_origin(up.scheme, upstream_host, up.raw_user),
        upstream_scheme=up.scheme,
        upstream_path=up.raw_path.rstrip("/"),
        local_via=via_value((1, 1), config.proxy.via),
        forward=ForwardPolicy(
            via=config.proxy.via,
            upstream_host=upstream_host,
            pass_host=config.proxy.host_header == "pass",
            x_forwarded_for=config.proxy.x_forwarded_for,
            x_forwarded_proto=config.proxy.x_forwarded_proto,
            x_forwarded_host=config.proxy.x_forwarded_host,
            trust_forwarded=config.proxy.trust_forwarded,
            surrogate_capability=surrogate_capability(targeting),
        ),
        cache=CacheSettings(
            policy=StorePolicy(shared=cache.shared, set_cookie=cache.set_cookie),
            heuristics=Heuristics(cache.heuristic_fraction, cache.heuristic_max_age),
            max_object_bytes=cache.max_object_bytes,
            collapse=cache.collapse,
            # The upstream's CORS fields are stored as it sent them, whatever cors.mode
            # says (RFC 9111 §3: the response is stored): the mode in force when an entry
            # goes out applies to it (policy_steps.outbound_fields, on a replay's head
            # too, made per plan), so a reload that switches it changes the next hit, as
            # nginx's add_header and Varnish's vcl_deliver do. A grant naming an origin
            # was made for the request's, so it varies on Origin (Fetch §3.2).
            grant_varies=True,
            rewritten=_REWRITTEN if config.proxy.x_forwarded_for else frozenset(),
            targeting=targeting,
            # (what handler._fields forwards: request_fields with the route's policy)
            referer_sent=partial(forwarded_referer, route.referer),
        ),
        removed=downstream_removed(targeting, cache.strip_targeted),
    )


def keyed_origin(scheme: str, host: str, user: str | None) -> str:
    """The origin of the keys named after an upstream URL: origin_of's, with the user of
    the credentials the URL carries (sent as Basic on every request), so that two routes
    to one API as two accounts never share an answer. Not the password: keys are listed."""
    origin = origin_of(scheme, host)
    return f"{scheme}://{user}@{origin[len(scheme) + 3:]}" if user else origin


PLAN = web.RequestKey("cacheproxy.plan", RoutePlan)  # the request's route, set first
MAX_FORWARDED_PLANS = 4096


@dataclass(frozen=True, slots=True)
class Plans:
    """The route table and each route's plan, swapped whole on reload."""

    table: RouteTable
    by_name: dict[str, RoutePlan]
    default: RoutePlan
    routed: bool  # any [[routes]] at all: then the log names the route
    config: Config | None = None
    # Forward mode: a plan per origin a client named, made on first use.
    forwarded: dict[str, RoutePlan] = field(default_factory=dict)
    # Every route's referer.strip_params: what the log redacts in a request refused before
    # its route is chosen.
    secrets: frozenset[str] = frozenset()

    @classmethod
    def build(cls, config: Config, default_upstream: str) -> Plans:
        table = RouteTable.from_config(config)
        by_name = {r.name: plan_route(r, config, default_upstream)
                   for r in (*table.routes, table.default)}
        secrets = frozenset().union(*(p.route.referer.strip_params for p in by_name.values()))
        return cls(table, by_name, by_name[table.default.name], bool(table.routes), config,
                   secrets=secrets)

    def forward_to(self, scheme: str, host: str, port: int) -> RoutePlan:
        """Forward mode: the plan for an origin a client named (absolute-form, or a CONNECT
        tunnel's): the default route's rules but its targeted fields, that origin as
        upstream, keyed by its URL."""
        name = f"[{host}]" if ":" in host else host
        default_port = 443 if scheme == "https" else 80
        origin = f"{scheme}://{name}" if port == default_port else f"{scheme}://{name}:{port}"
        plan = self.forwarded.get(origin)
        if plan is None:
            assert self.config is not None
            if len(self.forwarded) >= MAX_FORWARDED_PLANS:
                self.forwarded.clear()
            # Not the site's CDN nor its surrogate (RFC 9213 §2, Edge Architecture §1):
            # its CDN-Cache-Control / Surrogate-Control speak to the caches it runs, which
            # it keys and purges; here Cache-Control alone applies, and none is announced.
            # Nor its operator: [cors] grants and the hotlink gate are written for the
            # reverse upstream's pages. Made for every site, a grant to one origin (with
            # credentials) would let its scripts read any site the user is logged in to;
            # a forward proxy (Squid) makes none. The Referer's privacy rules (strip_params,
            # upstream_referer, Referrer-Policy) are the user's, and stay.
            default = self.table.default
            route = replace(default, upstream=origin,
                            cache=replace(default.cache, targeted_fields=()),
                            cors=CorsPolicy(),
                            referer=replace(default.referer, protect_paths=()))
            plan = self.forwarded[origin] = replace(plan_route(route, self.config, origin),
                                                    forwarded=True)
        return plan

    def match(self, authority: str, target: str) -> RoutePlan:
        if not self.routed:
            return self.default
        return self.by_name[self.table.match(authority, target).name]

    def upstreams(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.upstream for p in self.by_name.values()))

    def derived_owner(self, plan: RoutePlan) -> Callable[[str], bool] | None:
        """For an unsafe request routed by plan: which of the keys its answer's Location
        and Content-Location name (RFC 9111 §4.4, same origin) it may invalidate, or None
        for all of them. Keyed by the client's URL, one host's paths may be routed to
        other upstreams: what one origin server says of a URL another one serves is no
        "same host" (§4.4's defence against denial of service, §7.2), and would let an
        API that echoes a `Location` purge the site's pages. Keyed by the upstream's URL,
        a key names that upstream's resources only."""
        if not self.routed or plan.forwarded or not plan.client_host_seen:
            return None
        return partial(self._same_upstream, plan.key_origin)

    def _same_upstream(self, key_origin: str, key: str) -> bool:
        """Whether the client URL key names is routed to the upstream of key_origin."""
        parts = urlsplit(key.partition("#")[0])
        return self.match(parts.netloc, parts.path or "/").key_origin == key_origin

    def stored_origins(self) -> frozenset[str]:
        """The origins of keys named after an upstream (admin: a listed key is taken as is)."""
        return frozenset(p.key_origin for p in self.by_name.values() if not p.client_host_seen)
