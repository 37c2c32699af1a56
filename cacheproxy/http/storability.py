"""May this response be stored? (RFC 9111 §3, §3.5, §5.2)."""

from __future__ import annotations

from dataclasses import dataclass

from cacheproxy.http.cache_control import RequestDirectives, ResponseDirectives
from cacheproxy.http.freshness import HEURISTICALLY_CACHEABLE

# Status codes whose semantics this cache understands (§5.2.2.3 must-understand).
UNDERSTOOD_STATUS = HEURISTICALLY_CACHEABLE | frozenset({302, 303, 307})
# RFC 9110 §9.3.3, §8.7: a POST response "is only cacheable when [it includes] explicit
# freshness information and a Content-Location header field that has the same value as
# the POST's target URI"; it then holds the resource's new representation, which a later
# GET may get: a 200 (or 203) is one, a 201 or 204 answers the POST alone.
POST_STORED_STATUS = frozenset({200, 203})
# RFC 6585 §3-§6: "Responses with the 428 [429, 431, 511] status code MUST NOT be stored
# by a cache", whatever freshness they carry: each answers one client's request (its
# rate, its headers, its network login), and replayed it would refuse every client.
NEVER_STORED_STATUS = frozenset({428, 429, 431, 511})
# §5.2.2.7 lets a shared cache store a response without the fields a qualified private
# names; not one whose content cannot be read without them (its coding, RFC 9110 §8.4;
# the part it is, §14.4): replayed without them, it would be served undecodable.
CONTENT_READ_WITH = frozenset({"content-encoding", "content-range"})


@dataclass(frozen=True, slots=True)
class StorePolicy:
    shared: bool = True
    set_cookie: str = "bypass"  # "bypass": never store; "strip": store without Set-Cookie


@dataclass(frozen=True, slots=True)
class Verdict:
    storable: bool
    reason: str  # why not (for Cache-Status detail and the log), "" when storable
    # The reason is the request's (its method, no-store, Authorization): it says nothing
    # about responses already stored for other requests (§5.2.1.5).
    by_request: bool = False


_YES = Verdict(True, "")
# Every "no", made once: a frozen dataclass costs some 5,000 instructions to make, and
# every answer that is not stored (each pass-through) gets one.
_METHOD = Verdict(False, "method", by_request=True)
_STATUS = Verdict(False, "status")
_NO_STORE_BY_REQUEST = Verdict(False, "no-store", by_request=True)
_MUST_UNDERSTAND = Verdict(False, "must-understand")
_NO_STORE = Verdict(False, "no-store")
_PRIVATE = Verdict(False, "private")
_AUTHORIZATION = Verdict(False, "authorization", by_request=True)
_VARY_STAR = Verdict(False, "vary-star")
_SET_COOKIE = Verdict(False, "set-cookie")


def storability(
    method: str,
    status: int,
    request: RequestDirectives,
    response: ResponseDirectives,
    has_authorization: bool,
    has_expires: bool,
    has_set_cookie: bool,
    vary_star: bool,
    policy: StorePolicy,
    names_target: bool = False,
) -> Verdict:
    """§3: all of these must hold for a cache to store a response. names_target: its
    Content-Location is the request's target URI (what a POST response needs)."""
    if method == "POST":  # RFC 9110 §9.3.3
        if not (names_target and status in POST_STORED_STATUS and _explicit_freshness(
                response, has_expires, policy.shared)):
            return _METHOD
    elif method != "GET":  # §3: the method must be cacheable; HEAD is answered from GET
        return _METHOD
    if status < 200 or status in (206, 304):  # §3: final, and no partial content kept
        return _STATUS
    if status in NEVER_STORED_STATUS:  # RFC 6585 §3-§6
        return _STATUS
    if request.no_store:  # §5.2.1.5: must-understand does not lift the request's no-store
        return _NO_STORE_BY_REQUEST
    if response.must_understand:
        # §5.2.2.3: must-understand overrides no-store for understood status codes only.
        if status not in UNDERSTOOD_STATUS:
            return _MUST_UNDERSTAND
    elif response.no_store:  # §5.2.2.5
        return _NO_STORE
    if policy.shared and (response.private  # §5.2.2.7
                          or CONTENT_READ_WITH.intersection(response.private_fields)):
        return _PRIVATE
    if policy.shared and has_authorization and not (
        response.public or response.s_maxage is not None or response.must_revalidate
    ):  # §3.5
        return _AUTHORIZATION
    if vary_star:  # §4.1: "Vary: *" never matches, storing it is pointless
        return _VARY_STAR
    if policy.shared and has_set_cookie and policy.set_cookie == "bypass" and (
            "set-cookie" not in response.private_fields):
        # A cookie is one client's; a shared cache never replays it (RFC 9111 §7.3). An
        # origin's private="Set-Cookie" says the rest is anyone's: stored without the
        # cookie (§5.2.2.7, excluded_fields).
        return _SET_COOKIE
    # §3: something must make it cacheable: explicit freshness, public, or a
    # heuristically cacheable status (private is fine for a private cache).
    if (
        _explicit_freshness(response, has_expires, policy.shared)
        or response.public
        or (response.private and not policy.shared)
        or status in HEURISTICALLY_CACHEABLE
    ):
        return _YES
    return _STATUS


def is_event_stream(content_type: str | None) -> bool:
    """An event stream (HTML "Server-sent events" §9.2, text/event-stream): live, never
    whole, its requests sent with Cache-Control: no-cache "to bypass any caches" (§9.2.3).
    Stored, it would only be filled without end while other subscribers waited for it
    (§4's collapsing), or replayed with old events; a cache MAY decline to store (§3)."""
    if content_type is None:
        return False
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


def _explicit_freshness(response: ResponseDirectives, has_expires: bool, shared: bool
                        ) -> bool:
    """§4.2.1: a freshness lifetime the origin gave, not a heuristic one."""
    return (has_expires or response.max_age is not None
            or (shared and response.s_maxage is not None))


def excluded_fields(response: ResponseDirectives, policy: StorePolicy) -> frozenset[str]:
    """Fields left out of the stored copy (§3.1 and the policies above)."""
    if not policy.shared:
        # A private cache stores a Set-Cookie answer (§3) but never sets the cookie again
        # from storage: a hit would put back a value the origin has replaced since (a
        # session or CSRF cookie rotated at login). Browsers' caches store such answers
        # without their cookies too (Chromium: PERSIST_SANS_COOKIES); §3.1 lets a cache
        # leave out fields whose semantics forbid forwarding them again.
        return _COOKIE_ONLY
    strip = policy.set_cookie == "strip"
    if not (strip or response.private_fields):
        return _NOTHING  # (the usual: every store and every 304 asks)
    out: set[str] = set(response.private_fields)  # §5.2.2.7 qualified private
    if strip:
        out.add("set-cookie")
    return frozenset(out)


_COOKIE_ONLY = frozenset({"set-cookie"})
_NOTHING: frozenset[str] = frozenset()
