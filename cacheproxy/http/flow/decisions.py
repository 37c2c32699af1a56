"""The decisions of the request flow: frozen values the I/O performs, never makes.

    lookup ──► Serve                      answer from storage (§4.2)
           ├─► ServeStale(refresh=True)   stale-while-revalidate (RFC 5861 §3)
           ├─► Refuse(504)                only-if-cached and nothing usable (§5.2.1.7)
           ├─► PreconditionFailed         If-Match / If-Unmodified-Since false (RFC 9110)
           └─► Forward ──► upstream answered ──► Store / Update / Keep / Evict / Pass
                                             ├─► Freshen            (§4.3.5, HEAD)
                                             ├─► Refetch            (§4.3.4)
                                             └─► ServeStale         (RFC 5861 §4)
                       └─► upstream failed  ──► ServeStale / Refuse (RFC 5861 §4, §5.2.2.2)

Each decision says what happens to the store and what the client gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from cacheproxy.http.ranges import Partial
from cacheproxy.http.stored import CachedResponse

Fields = tuple[tuple[str, str], ...]


# -- before going upstream ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class Serve:
    """§4.2: a fresh stored response, or a stale one the client accepts (§5.2.1.2);
    RFC 9211 §2.1 hit."""

    entry: CachedResponse
    age: float
    ttl: float  # freshness left; negative when stale (RFC 9211 §2.5)


@dataclass(frozen=True, slots=True)
class ServeStale:
    """RFC 5861: a stale response served without validation. refresh: revalidate it in
    the background (§3 stale-while-revalidate); detail names the rule. On an origin's
    error (§4) also a fresh one the client asked to have validated (ttl > 0)."""

    entry: CachedResponse
    age: float
    ttl: float
    refresh: bool
    detail: str  # "stale-while-revalidate", "stale-if-error" or "fresh-on-error"


@dataclass(frozen=True, slots=True)
class PreconditionFailed:
    """RFC 9110 §13.2.2: the client's If-Match / If-Unmodified-Since is false for the
    stored response it would get: 412 from the cache (a hit, RFC 9211 §2.1)."""

    entry: CachedResponse
    age: float
    ttl: float


class Forward(NamedTuple):
    """§4: ask the origin. reason is RFC 9211's fwd (uri-miss, vary-miss, stale, request,
    bypass, method); stored, the response being validated (§4.3.1), with the validators
    to send in conditional; may_store, whether the answer may be stored (§3, §5.2.1.5);
    method, what goes upstream (a HEAD that may fill is sent as GET, RFC 9110 §9.3.2);
    collapse, whether the request may share another's upstream request (§4 "collapsed");
    head_of, for a HEAD sent as HEAD, the stored GET response its 200 updates (§4.3.5).
    (A NamedTuple, immutable as the others: every miss makes one, for a quarter of a
    frozen dataclass's instructions.)"""

    reason: str
    method: str
    stored: CachedResponse | None = None
    conditional: Fields = ()
    may_store: bool = False
    collapse: bool = False
    head_of: CachedResponse | None = None
    # §4.3.4: the other stored responses with stored's strong entity tag (variants a
    # 304 carrying that tag updates too).
    siblings: tuple[CachedResponse, ...] = ()

    @property
    def strips_client_conditionals(self) -> bool:
        """§4.3.2: a cache filling itself answers the client's conditions from the full
        response, so they do not go upstream."""
        return self.may_store or self.stored is not None

    @property
    def for_client_alone(self) -> bool:
        """Nothing will store the answer or validate with it (§3, §4.3.3): it is for its
        client alone, so the request may be given up when that client leaves first."""
        return not self.may_store and self.stored is None


@dataclass(frozen=True, slots=True)
class Refuse:
    """The cache answers with an error of its own (status, a one-line message)."""

    status: int
    message: str
    detail: str | None = None  # RFC 9211 §2.8


# -- after the upstream answered -----------------------------------------------

@dataclass(frozen=True, slots=True)
class Store:
    """§3: store the answer once its body is complete and within max_object_bytes;
    the client gets the answer as it streams (or a 304, client_current). whole_first:
    the client's answer is cut from the whole stored response (its Range, RFC 9110
    §14.2): read and store it first, then reply from storage; but part, when the Range is
    one range of it and the client's own validators ask for no 304 (§13.2.2), is sent as
    a 206 cut from the whole as it streams (stored once complete, where the fill budget
    takes it). invalidates: keys to discard first (§4.4: a POST's answer that is stored
    as the new representation, RFC 9110 §9.3.3, still invalidates what was stored for
    the URI). outdates: the answer is a new representation (200, to a request without
    credentials) of the response stored under the key: should its body not be stored
    after all (too big, or no room in the fill budget), that response is removed all the
    same, as one announced too big removes it (_not_stored), not kept to be served stale
    (RFC 5861) after a newer one was sent."""

    entry: CachedResponse  # body empty: it is filled as it streams
    replaces: CachedResponse | None = None
    whole_first: bool = False
    invalidates: tuple[str, ...] = ()
    part: Partial | None = None
    outdates: bool = False


@dataclass(frozen=True, slots=True)
class Update:
    """§4.3.4: a 304 selected the stored response; it takes the 304's fields (§3.2) and
    fresh timings. The client gets view; the store gets entry (without the fields
    this cache never stores), in place of stored, the response as read at lookup: only
    where the store still holds that one (a newer answer stored meanwhile has not the
    304's validator to be selected by)."""

    view: CachedResponse
    entry: CachedResponse
    stored: CachedResponse
    # §4.3.4: "all the stored responses with the same strong validator are identified for
    # update": the other variants with the 304's strong entity tag, as (the stored one as
    # read, freshened): put only where the store still holds the one read (a newer answer
    # stored for that variant meanwhile is not replaced by an older freshened one).
    others: tuple[tuple[CachedResponse, CachedResponse], ...] = ()


@dataclass(frozen=True, slots=True)
class Freshen:
    """§4.3.5: a 200 to a HEAD updated the stored GET response's fields and freshness, or
    made it stale (entry, to store in place of stored, the response as read at lookup:
    only where the store still holds that one); the HEAD's answer is relayed."""

    entry: CachedResponse
    stored: CachedResponse


@dataclass(frozen=True, slots=True)
class Keep:
    """Nothing of this exchange is stored and what is stored stays: the reason is the
    request's (§5.2.1.5 "does not apply to the already stored response", §3.5), or the
    answer is no new representation (an error). serve: the validated response the
    client gets (a 304 answered), else the upstream's answer is relayed. hit_for_pass
    and erred as for Pass."""

    stored: CachedResponse
    reason: str
    serve: CachedResponse | None = None
    hit_for_pass: bool = False
    erred: bool = False


@dataclass(frozen=True, slots=True)
class Evict:
    """The response says the stored responses under keys are outdated and it cannot
    replace them (§4.4 invalidation; a new representation that may not be stored).
    serve as for Keep. invalidation: §4.4, an unsafe method's answer invalidated keys, so
    an answer for them fetched before it is not stored after it either."""

    keys: tuple[str, ...]
    reason: str
    serve: CachedResponse | None = None
    hit_for_pass: bool = False
    invalidation: bool = False


@dataclass(frozen=True, slots=True)
class Pass:
    """Not stored, and nothing was stored; the answer is relayed. hit_for_pass: the
    reason is the response's own, so waiting behind this URL's requests does not pay
    (Varnish's hit-for-pass). erred: the answer is the origin's error (5xx), which may
    not be shared (§4: only a storable response answers collapsed requests) and says
    nothing lasting of the URL: no hit-for-pass, and the requests waiting behind it go
    on one at a time, as behind a request that got no answer (nginx's proxy_cache_lock),
    not all at once to an origin that is failing."""

    reason: str | None  # RFC 9211 §2.8 detail; None for a plain pass-through
    hit_for_pass: bool = False
    erred: bool = False


@dataclass(frozen=True, slots=True)
class Refetch:
    """§4.3.4: a 304 that selects no stored response: ask again, unconditionally; or the
    whole representation asked for a Range that cannot be stored: ask again with the
    Range (RFC 9110 §14.2). hit_for_pass as for Pass (the whole answer's reason);
    outdates as for Store (the whole answer was a new representation of the response
    stored, which goes before the Range is asked for)."""

    forward: Forward
    hit_for_pass: bool = False
    outdates: bool = False


Lookup = Serve | ServeStale | PreconditionFailed | Forward | Refuse
Answered = Store | Update | Freshen | Keep | Evict | Pass | Refetch | ServeStale
Failed = ServeStale | Refuse
