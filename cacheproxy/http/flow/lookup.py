"""Step 1: may a stored response answer the request, or must it go forward?
(RFC 9111 §4, §4.2, §4.3.1, §5.2.1; RFC 5861 §3; RFC 9211 §2.2)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cacheproxy.http.cache_control import NO_REQUEST_DIRECTIVES
from cacheproxy.http.cache_key import holds_any, select_variant
from cacheproxy.http.codings import coding_refused
from cacheproxy.http.conditional import precondition_fails
from cacheproxy.http.flow.decisions import (
    Forward,
    Lookup,
    PreconditionFailed,
    Refuse,
    Serve,
    ServeStale,
)
from cacheproxy.http.flow.facts import CacheSettings, RequestFacts
from cacheproxy.http.reuse import (
    REVALIDATE,
    SERVE,
    SERVE_STALE_REVALIDATE,
    UNUSABLE,
    decide_reuse,
    shareable_validation,
)
from cacheproxy.http.revalidation import validating_fields
from cacheproxy.http.stored import CachedResponse

_ONLY_IF_CACHED = "only-if-cached"
_made = tuple.__new__  # (a NamedTuple's own __new__ is a Python call around this)
assert len(Forward._fields) == 8  # (_reuse_or_forward gives each by position)


@dataclass(frozen=True, slots=True)
class Waited:
    """The request waited for another's upstream answer (collapsed). stored: (born,
    values) of a response stored from an answer that arrived after it began to wait,
    if one was (proxy/collapse.py Stored). again: the answer it waited for was stored,
    with time left to wait once more: a miss for its variant (the answer waited for was stored for
    another variant, under Vary) waits behind the next request for the key, rather
    than go upstream beside every other waiter for that variant (README "Concurrent
    misses?")."""

    stored: tuple[float, tuple[str, ...]] | None
    again: bool = False


def bypass(req: RequestFacts) -> Forward | None:
    """RFC 9211 §2.2: a method a cache cannot answer goes forward as "method"; a body,
    a range or a precondition only the origin evaluates (§4.3.2) as "bypass". None: look
    it up (a HEAD that goes forward as it is is looked up too: its 200 updates the stored
    GET response, §4.3.5; a GET's Range may be answered from a stored response)."""
    if req.method not in ("GET", "HEAD"):
        return Forward("method", req.method)
    if req.has_body and req.method != "HEAD":
        return Forward("bypass", req.method)
    return None


def lookup(
    req: RequestFacts,
    variants: tuple[CachedResponse, ...],
    *,
    now: float,
    route: CacheSettings,
    recently_passed: bool = False,
    waited: Waited | None = None,
    passed_here: bool = False,
) -> Lookup:
    """§4: the stored variants under the request's key (newest first) against the request:
    all of them, or a Selectable (those the request may select, and how many others).

    recently_passed: this key's last answer could not be stored (hit-for-pass), so the
    request does not wait behind another's. waited: this is the second look of a request
    that waited for another's upstream answer (collapsed); it does not collapse again,
    but for a miss of its own variant while it has time left (Waited.again).
    passed_here: the request came through this cache before (its Via names it, RFC 9110
    §7.6.3), so it does not collapse either: in a loop back into this process it would
    wait for its own earlier hop, which waits for it (each hop for collapse_timeout,
    before the loop's 508); in a chain of instances the front one collapsed it already."""
    global _last_validating
    last = _last_validating
    if last is not None and last[5] is req and last[2] is route \
            and last[6] is recently_passed and waited is None and not passed_here \
            and len(variants) == 1 and variants[0] is last[0]:
        return last[7]  # (the same request's facts again: _last_validating says why)
    d = inner = _reuse_or_forward(req, variants, now, route, recently_passed, waited,
                                  passed_here)
    if req.preconditioned:
        d = _preconditions(req, d)
    if req.bypass and isinstance(d, Forward) and not d.may_store:
        # RFC 9110 §14.2: a range the cache will not answer is the origin's; a cache
        # stores no partial content. (One that may fill fetches the whole representation
        # and answers the range from it: answered() sends it on as it is otherwise.)
        d = Forward("bypass", req.method, head_of=d.head_of)
    last = _last_validating
    if last is not None and inner is last[4] and waited is None and not passed_here \
            and len(variants) == 1:
        # (inline, and without slicing last: every request with facts of its own is here)
        _last_validating = (last[0], last[1], last[2], last[3], last[4], req,
                            recently_passed, d)
    return d


def range_behind_fill(req: RequestFacts, fwd: Forward) -> Forward | None:
    """A Range that would wait for another request's fetch of the key: it goes to the
    origin as it is (RFC 9110 §14.2 lets a cache pass a range on; the fetch in flight
    stores the whole). Waiting held it until the whole representation had come, or for
    collapse_timeout and then a fetch of it all again from byte 0: a media element's
    seek, or a second viewer's first bytes, stalled for seconds on a large file (Squid
    sends the Range on as it is; Varnish answers it as the object streams). None: wait.

    Not when the fetch validates a stored response (fwd.stored): the Range waits for it
    (mostly a 304), and on the origin's failure gets the stored response where
    stale-if-error allows (RFC 5861 §4), as the request it waited for does; a bypass
    would relay the origin's error."""
    if req.range is None or fwd.stored is not None:
        return None
    return Forward("bypass", req.method)


def _preconditions(req: RequestFacts, d: Lookup) -> Lookup:
    """RFC 9110 §13.2.2 (RFC 9111 §4.3.2): If-Match / If-Unmodified-Since are evaluated
    against the stored response the client would get (412 when false); without one they
    are the origin's: the request goes as it is and nothing is stored."""
    if isinstance(d, Serve | ServeStale):
        if precondition_fails(d.entry, req.if_match, req.if_unmodified_since):
            return PreconditionFailed(d.entry, d.age, d.ttl)
        return d
    if isinstance(d, Forward):
        head_of = (d.stored or d.head_of) if req.method == "HEAD" else None
        return Forward("bypass", req.method, head_of=head_of)
    return d


def _reuse_or_forward(
    req: RequestFacts, variants: tuple[CachedResponse, ...], now: float, route: CacheSettings,
    recently_passed: bool, waited: Waited | None, passed_here: bool = False,
) -> Lookup:
    # §4.1 (a key holding nothing, every uri-miss, has nothing to select: no call)
    entry = select_variant(variants, req.selecting) if variants else None
    refused = entry is not None and coding_refused(entry, req.headers)
    if refused:
        # RFC 9110 §12.5.3: a coded response stored without Vary: Accept-Encoding is not
        # reused for a client that does not take its coding; the origin answers it
        # (Varnish never hands gzip to one; nginx's proxy_cache does).
        entry = None
    if req.has_body:  # RFC 9110 §9.3.2: content no key holds; its answer updates nothing
        return Forward("bypass", req.method)
    may_store = not req.directives.no_store  # §5.2.1.5
    # A waiter still refused what the key holds does not wait again: an origin that codes
    # whatever the request says (pre-compressed files) stores a coded answer each time,
    # and its refusing waiters would go one after the other, each behind the last.
    # A no-store request neither leads nor waits (§5.2.1.5): its answer is stored for no
    # one, so requests behind it would wait for nothing, then all go upstream at once.
    may_collapse = (route.collapse and may_store and req.method == "GET"
                    and not recently_passed and not passed_here
                    and (waited is None or (waited.again and entry is None
                                            and holds_any(variants) and not refused)))
    if entry is None:
        # (a store may leave out the variants it cannot select; asked only here: a
        # response found, every revalidation, needs no answer)
        held = holds_any(variants)
        if req.directives.only_if_cached:  # §5.2.1.7
            return Refuse(504, "not in cache (only-if-cached)", _ONLY_IF_CACHED)
        if (recently_passed or req.authorization) and (req.validating or req.bypass):
            # §4.3.2 strips the client's conditionals, and RFC 9110 §14.2 its Range, only
            # so that the cache can fill from a full answer. When it most likely cannot
            # (the key's last answer was not storable for anyone, or the request carries
            # Authorization, §3.5), the request goes as it is (Varnish's pass) and the
            # origin's 304 or 206 reaches the client, instead of a full answer the cache
            # would only pass on, or abandon to ask again with the Range.
            return _forward("bypass", req.method, False, False)
        if recently_passed and req.method == "HEAD":
            # Filling is why a HEAD goes as GET; the key's last answer was not storable
            # (too big, private, ...), so it goes as it is (Varnish's pass): not a whole
            # body started and abandoned per HEAD (a download counted, a file read).
            return _forward("bypass", "HEAD", False, False)
        # RFC 9110 §9.3.2: a HEAD that may fill is sent as GET, so both can be answered.
        # (RFC 9211 §2.2: a response refused for its coding matched URI and Vary: "miss".)
        return _forward("miss" if refused else "vary-miss" if held else "uri-miss",
                        "GET" if may_store else req.method, may_store, may_collapse)
    last = _last_validating
    if last is not None and last[0] is entry and last[1] is req.directives \
            and last[2] is route and last[3] is may_collapse and waited is None \
            and len(variants) < 2:
        return last[4]  # (_last_validating: what it was decided from)
    reuse = decide_reuse(
        lifetime=entry.lifetime, initial_age=0.0, response_time=entry.born,
        directives=entry.directives,
        request=req.directives, now=now, shared=route.shared,
    )
    action = reuse.action
    if action is SERVE:
        return Serve(entry, reuse.age, reuse.ttl)
    if (action is REVALIDATE and reuse.forward == "request"
            and waited is not None and waited.stored == (entry.born, entry.values)):
        # A collapsed waiter whose own request asked for validation (no-cache,
        # max-age=0): the response stored from an answer that came after it began to
        # wait (the leader's, validated after the waiter's request was made) answers
        # that. Compared by value: the Redis store reads a new object on every look.
        # Never for a response that demands validation per request (§5.2.2.4).
        return Serve(entry, reuse.age, reuse.ttl)
    if action is SERVE_STALE_REVALIDATE:  # RFC 5861 §3
        return ServeStale(entry, reuse.age, reuse.ttl, refresh=may_store,
                          detail="stale-while-revalidate")
    if action is UNUSABLE:  # §5.2.1.7
        return Refuse(504, "stale in cache (only-if-cached)", _ONLY_IF_CACHED)
    shareable = shareable_validation(no_cache=entry.directives.no_cache,
                                     lifetime=entry.lifetime, reuse=reuse)
    # §4.3.1: validate with the stored validators; sent as GET even for a HEAD, so that
    # a new representation can be stored (the HEAD client gets no body). (By position,
    # in Forward's order: a NamedTuple's keywords cost a revalidation 2,500 instructions;
    # made as the tuple it is, without its Python-level __new__, some 1,100 fewer.)
    fwd = _made(Forward, (reuse.forward, "GET", entry, validating_fields(entry), may_store,
                          may_collapse and shareable, None, _siblings(entry, variants)))
    if entry.directives.no_cache and waited is None and len(variants) < 2 \
            and len(entry.body) <= _VALIDATING_BODY_MAX:
        _remember_validating(entry, req, route, may_collapse, fwd)
    return fwd


# The last Forward that validates a stored response demanding validation on every use
# (§5.2.2.4 no-cache), with what it was decided from, for the next request for it: the
# stored response (by identity, as the memory store holds it; held, as the Forward holds
# it, so only with a body of up to _VALIDATING_BODY_MAX), the request's directives
# (§5.2.1: only-if-cached, no-store; parsed once per value: identity), the route (shared,
# collapse) and may_collapse (what it was made from: the method, hit-for-pass, a loop).
# Not the time: decide_reuse validates a no-cache response whatever its age (§5.2.2.4,
# before any freshness; tests/test_review_perfreval5_regressions.py pins it), and the
# Forward carries no age. Only for a request that did not wait for another's answer and
# a key holding one response (no siblings, §4.3.4). One entry, so bounded.
# Then lookup() adds what it made of that Forward for one request's facts (by identity:
# the quick path hands out the same RequestFacts for the same field lines, method and
# route, quick.py) and recently_passed: its whole decision (§13.2.2 preconditions and
# §14.2's bypass applied, both read from the facts alone), for the same facts, route,
# stored response (the key holding it alone) and recently_passed again, with nothing
# waited for nor a loop (waited, passed_here), made the same without selecting,
# checking the coding or judging the response again. The facts hold one request's
# fields (its header section: at most 64 KiB, client_conn.MAX_HEAD_BYTES; the quick
# path's last ones, which it holds anyway), no connection, until the next no-cache
# validation replaces them; the response is the one held above, nothing more.
_last_validating: tuple[Any, ...] | None = None
_VALIDATING_BODY_MAX = 64 * 1024


def _remember_validating(entry: CachedResponse, req: RequestFacts, route: CacheSettings,
                         may_collapse: bool, fwd: Forward) -> None:
    global _last_validating
    _last_validating = (entry, req.directives, route, may_collapse, fwd, None, None, None)


def _forward(reason: str, method: str, may_store: bool, collapse: bool) -> Forward:
    """A Forward that validates nothing: the same value for the same four, so made once
    (a NamedTuple costs some 3,500 instructions to make; every miss gets one)."""
    made = _FORWARDS.get((reason, method, may_store, collapse))
    if made is None:
        made = Forward(reason, method, None, (), may_store, collapse)
        if len(_FORWARDS) < _FORWARDS_MAX:  # (a guard: lookup sees GET and HEAD alone)
            _FORWARDS[reason, method, may_store, collapse] = made
    return made


_FORWARDS: dict[tuple[str, str, bool, bool], Forward] = {}
_FORWARDS_MAX = 64


def _siblings(entry: CachedResponse, variants: tuple[CachedResponse, ...]
              ) -> tuple[CachedResponse, ...]:
    """§4.3.4: the other variants with entry's strong entity tag (a 304 with that tag
    updates every one of them)."""
    if len(variants) < 2:  # (the usual key: one response, no tag to read)
        return ()
    tag = entry.etag
    if not tag or tag.startswith("W/"):
        return ()
    return tuple(v for v in variants if v is not entry and v.etag == tag)


# The request fields lookup() and client_answer() read, besides the ones a Vary names:
# request_facts' directives (§5.2.1, Pragma §5.4), credentials (§3.5), preconditions and
# validators (RFC 9110 §13) and ranges (§14.2).
DECISIVE_FIELDS = ("Cache-Control", "Pragma", "Authorization", "Range", "If-Range",
                   "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since")


def plain_serve(entry: CachedResponse, now: float) -> tuple[float, float] | None:
    """What lookup() decides for a GET that carries none of DECISIVE_FIELDS when entry,
    without Vary nor Content-Encoding (whose acceptance the request's Accept-Encoding
    decides, codings.py), is the only response stored under the key: Serve at (age, ttl) while
    it is fresh (§4.2: freshness_lifetime > current_age) and does not demand validation
    (§5.2.2.4: no-cache); else None, as lookup() then serves nothing as it is stored
    (with no request directive, stale is never served without validation, §4.2.4: a
    stale-while-revalidate answer is ServeStale). Nothing else of the request counts,
    so a caller may skip building its facts (proxy/quick.py)."""
    if entry.directives.no_cache:
        return None
    age = entry.age(now)
    ttl = entry.lifetime - age
    return (age, ttl) if ttl > 0 else None


def background_refresh(req: RequestFacts, entry: CachedResponse) -> tuple[RequestFacts, Forward]:
    """RFC 5861 §3: the revalidation behind a stale-while-revalidate answer. The client's
    own cache directives were about its answer, not about this refresh; nor its Range
    (bypass: RFC 9110 §14.2), answered from storage already: the refresh asks for the
    whole representation and stores it, whatever its framing (a Range kept made a 200 of
    unknown length a Refetch that no client awaits, and the new response was dropped)."""
    facts = req._replace(method="GET", directives=NO_REQUEST_DIRECTIVES, bypass=False)
    return facts, Forward("stale", "GET", stored=entry,
                          conditional=validating_fields(entry), may_store=True)
