"""Step 2b: the upstream could not answer, or answered with an error: is a stale copy
the better answer? (RFC 5861 §4; RFC 9111 §4.2.4, §5.2.2.2)"""

from __future__ import annotations

from cacheproxy.http.flow.decisions import Failed, Forward, Refuse, ServeStale
from cacheproxy.http.flow.facts import CacheSettings, RequestFacts
from cacheproxy.http.reuse import may_serve_stale_on_error, stale_forbidden_by
from cacheproxy.http.stored import CachedResponse


def stale_on_error(
    stored: CachedResponse, req: RequestFacts, route: CacheSettings, now: float
) -> ServeStale | None:
    """RFC 5861 §4: stale-if-error (response or request) lets the stored response answer
    when the origin errs, unless stale is forbidden (§4.2.4). A fresh one (validated at
    the client's asking, §5.2.1.4, which is a preference) answers too, and says so: it is
    neither stale nor under stale-if-error (RFC 9211 §2.8 detail "fresh-on-error")."""
    age = stored.age(now)
    ttl = stored.lifetime - age
    if may_serve_stale_on_error(ttl=ttl, directives=stored.directives,
                                request=req.directives, shared=route.shared):
        return ServeStale(stored, age, ttl, refresh=False,
                          detail="fresh-on-error" if ttl > 0 else "stale-if-error")
    return None


def failed(
    fwd: Forward, *, status: int, message: str, req: RequestFacts, route: CacheSettings,
    now: float,
) -> Failed:
    """The upstream failed (status: 502 unreachable or broken, 504 timed out)."""
    stored = fwd.stored
    if stored is None:
        return Refuse(status, message)
    stale = stale_on_error(stored, req, route, now)
    if stale is not None:
        return stale
    forbidden = stale_forbidden_by(stored.directives, route.shared)
    if forbidden is not None:
        # §5.2.2.2 (§5.2.2.8, §5.2.2.10): no origin, and the directive that forbids stale
        # named in the text and in Cache-Status (RFC 9211 §2.8): 504, never the stale copy.
        return Refuse(504, f"upstream unavailable ({forbidden})", forbidden)
    return Refuse(status, message)
