"""What the quick path (proxy/quick.py) learns of a request before any I/O, and hands on:
the route a (Host, target) pair resolves to, and the plan for a request that goes
forward (CacheProxy.planned carries it on from the driver's forward step)."""

from __future__ import annotations

import weakref
from typing import NamedTuple

from cacheproxy.http.flow import Forward, RequestFacts
from cacheproxy.http.stored import CachedResponse
from cacheproxy.policies.referer import redact
from cacheproxy.proxy.routing import RoutePlan


class Route:
    """What a (Host, target) pair resolves to: the same for every request with them."""

    __slots__ = ("authority", "key", "logged", "plan", "replayed", "route_name", "secrets",
                 "target")

    def __init__(self, plan: RoutePlan, key: str, authority: str, target: str,
                 route_name: str) -> None:
        self.plan, self.key, self.authority, self.target = plan, key, authority, target
        self.route_name = route_name
        self.secrets = plan.route.referer.strip_params
        self.logged = redact(target, self.secrets) or "-"  # the path as the log shows it
        # The last plain hit's head, for the next one: the entry (weakly: the store may
        # evict it), what else the head was made from, the head, its Cache-Status member.
        self.replayed: tuple[weakref.ref[CachedResponse], tuple[object, ...], bytes, str] \
            | None = None


class Planned(NamedTuple):
    """A GET or HEAD that goes forward: its route and facts, lookup's Forward, and the
    variants (by identity) it was decided on."""

    route: Route
    facts: RequestFacts
    forward: Forward
    variants: tuple[CachedResponse, ...]
