"""May a stored response answer this request? (RFC 9111 §4, §4.2.4, §5.2; RFC 5861)."""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from cacheproxy.http.cache_control import (
    NO_REQUEST_DIRECTIVES,
    RequestDirectives,
    ResponseDirectives,
)
from cacheproxy.http.freshness import current_age

# RFC 5861 §4: the error statuses stale-if-error covers.
STALE_IF_ERROR_STATUSES = frozenset({500, 502, 503, 504})


class Action(Enum):
    SERVE = "serve"                      # fresh, or stale where the client allows it
    SERVE_STALE_REVALIDATE = "swr"       # RFC 5861 §3: serve now, revalidate in the background
    REVALIDATE = "revalidate"            # §4.3: ask the origin before reusing
    UNUSABLE = "unusable"                # only-if-cached and nothing usable: 504 (§5.2.1.7)


# The members by module name, for the flow's hot paths: on Python 3.11 each read off the
# class (Action.SERVE) goes through the enum type's attribute lookup, about 900
# instructions; a global is a dict look-up. (A revalidation read six per request.)
SERVE, SERVE_STALE_REVALIDATE = Action.SERVE, Action.SERVE_STALE_REVALIDATE
REVALIDATE, UNUSABLE = Action.REVALIDATE, Action.UNUSABLE


class Reuse(NamedTuple):  # a NamedTuple: built on every cache hit, and cheaply
    action: Action
    age: float
    ttl: float        # freshness left; negative when stale (RFC 9211 §2.5)
    forward: str      # RFC 9211 fwd reason when not served: "stale" or "request"


def stale_forbidden(d: ResponseDirectives, shared: bool) -> bool:
    """§4.2.4: must-revalidate, and for shared caches proxy-revalidate or s-maxage
    (§5.2.2.2, §5.2.2.8, §5.2.2.10), forbid serving stale without validation."""
    return d.must_revalidate or (shared and (d.proxy_revalidate or d.s_maxage is not None))


def stale_forbidden_by(d: ResponseDirectives, shared: bool) -> str | None:
    """The directive that forbids serving stale (stale_forbidden), by name; None: none."""
    if d.must_revalidate:  # §5.2.2.2
        return "must-revalidate"
    if shared and d.proxy_revalidate:  # §5.2.2.8
        return "proxy-revalidate"
    if shared and d.s_maxage is not None:  # §5.2.2.10
        return "s-maxage"
    return None


def decide_reuse(
    *,
    lifetime: float,
    initial_age: float,
    response_time: float,
    directives: ResponseDirectives,
    request: RequestDirectives,
    now: float,
    shared: bool,
) -> Reuse:
    age = current_age(initial_age, response_time, now)
    ttl = lifetime - age
    # (Reuse made as the tuple it is: its Python-level __new__ costs some 1,100
    # instructions more, on every lookup of a stored response)
    if ttl > 0 and not directives.no_cache and request is NO_REQUEST_DIRECTIVES:
        return _made(Reuse, (SERVE, age, ttl, ""))  # fresh, and nothing asked: the common hit
    action, forward = _action(ttl, age, directives, request, shared)
    if action is REVALIDATE and request.only_if_cached:
        action = UNUSABLE  # §5.2.1.7: the client refuses a forward
    return _made(Reuse, (action, age, ttl, forward))


_made = tuple.__new__
assert len(Reuse._fields) == 4  # (decide_reuse gives each by position)


def _action(
    ttl: float, age: float, d: ResponseDirectives, req: RequestDirectives, shared: bool
) -> tuple[Action, str]:
    if d.no_cache:  # §5.2.2.4: always validate before reuse
        return REVALIDATE, "stale"
    if req.no_cache:  # §5.2.1.4
        return REVALIDATE, "request"
    # §5.2.1.1: max-age=0 (a browser reload) asks for validation.
    if req.max_age is not None and (req.max_age == 0 or age > req.max_age):
        return REVALIDATE, "request"
    if ttl > 0:  # §4.2: fresh when freshness_lifetime > current_age
        if req.min_fresh is not None and ttl < req.min_fresh:  # §5.2.1.3
            return REVALIDATE, "request"
        return SERVE, ""
    if not stale_forbidden(d, shared):
        staleness = -ttl
        if req.max_stale is not None and staleness <= req.max_stale:  # §5.2.1.2
            return SERVE, ""
        swr = d.stale_while_revalidate
        if swr is not None and staleness <= swr:  # RFC 5861 §3
            if req.max_stale is not None or req.min_fresh is not None:
                # The client said how stale (§5.2.1.2) or how fresh (§5.2.1.3) an
                # answer it takes; this one is not: the origin's leave to serve it stale
                # does not override that (§4.2.4: stale only where permitted).
                return REVALIDATE, "request"
            return SERVE_STALE_REVALIDATE, "stale"
    return REVALIDATE, "stale"


def may_serve_stale_on_error(
    *, ttl: float, directives: ResponseDirectives, request: RequestDirectives, shared: bool
) -> bool:
    """RFC 5861 §4: stale-if-error (response or request) covers an error or an
    unreachable origin, unless stale is forbidden (§4.2.4)."""
    if directives.no_cache:  # §5.2.2.4: never reused without successful validation
        return False
    if ttl > 0:
        return True
    if stale_forbidden(directives, shared):
        return False
    staleness = -ttl
    windows = (directives.stale_if_error, request.stale_if_error, request.max_stale)
    return any(w is not None and staleness <= w for w in windows)


def shareable_validation(
    *, no_cache: bool, lifetime: float, reuse: Reuse | None
) -> bool:
    """Can a request waiting on another's upstream request use its result? Yes for a
    miss, or when the waiter itself asked for validation (§5.2.1.4, §5.2.1.1); not when
    the stored response demands validation per request (no-cache, or never fresh):
    another request's validation was not made for this one (§5.2.2.4, §4.2.4)."""
    if reuse is None or reuse.forward == "request":
        return True
    return not (no_cache or lifetime <= 0)
