"""What the quick path (proxy/quick.py) learns of a request before any I/O, and hands on:
the route a (Host, target) pair resolves to, and the plan for a request that goes
forward (CacheProxy.planned carries it on from the driver's forward step)."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, NamedTuple

from cacheproxy.http.flow import Forward, RequestFacts
from cacheproxy.http.stored import CachedResponse
from cacheproxy.policies.referer import redact
from cacheproxy.proxy.routing import RoutePlan

if TYPE_CHECKING:
    from cacheproxy.proxy.pool import Origin

# The largest plain hit head a route keeps: a few times a usual one (a few hundred bytes).
# A larger one is made again per hit, from its stored part encoded once (replay.py).
PLAIN_HEAD_MAX = 8192


def _forget_replayed(ref: weakref.KeyedRef[weakref.ref[Route], CachedResponse]) -> None:
    """An entry a route kept the head of was freed: the head goes with it."""
    route = ref.key()
    if route is not None and route.replayed is not None and route.replayed[0] is ref:
        route.replayed = None


class Route:
    """What a (Host, target) pair resolves to (and the scheme, when a trusted front proxy
    says https): the same for every request with them."""

    __slots__ = ("__weakref__", "authority", "key", "logged", "plan", "replayed",
                 "route_name", "scheme", "secrets", "target", "upstream")

    def __init__(self, plan: RoutePlan, key: str, authority: str, target: str,
                 route_name: str, scheme: str = "http") -> None:
        self.plan, self.key, self.authority, self.target = plan, key, authority, target
        self.scheme = scheme  # the one the key names (a trusted front proxy's https)
        self.route_name = route_name
        self.secrets = plan.route.referer.strip_params
        self.logged = redact(target, self.secrets) or "-"  # the path as the log shows it
        # The last plain hit's head, for the next one: the entry (weakly: the store may
        # evict it), what else the head was made from, the head, its Cache-Status member.
        self.replayed: tuple[weakref.ref[CachedResponse], tuple[object, ...], bytes, str] \
            | None = None
        # The upstream URL a forward of it asks for (plan.upstream + target) and the origin
        # that URL names, made by its first forward: both follow from plan and target alone.
        self.upstream: tuple[str, Origin] | None = None

    def keep_replayed(self, entry: CachedResponse, made: tuple[object, ...], head: bytes,
                      member: str) -> None:
        """Keep a plain hit's head for the next one. It goes when its entry is freed, and
        a large one is not kept: up to MEMO_SIZE routes (quick.py) hold one each, and a
        head repeats its entry's fields (up to 128 KiB of them), in memory cache.max_bytes
        does not count; many Hosts may route to one entry. (The route is held weakly by
        the reference: route -> reference -> route would be a cycle.)"""
        if len(head) > PLAIN_HEAD_MAX:
            self.replayed = None
            return
        ref = weakref.KeyedRef(entry, _forget_replayed, weakref.ref(self))
        self.replayed = (ref, made, head, member)


class Planned(NamedTuple):
    """A GET or HEAD that goes forward: its route and facts, lookup's Forward, and the
    variants (by identity) it was decided on."""

    route: Route
    facts: RequestFacts
    forward: Forward
    variants: tuple[CachedResponse, ...]
