"""The immutable inputs of the request flow: what the request says, and the route's
cache settings. Built once per request; every step reads them, none changes them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from multidict import istr

from cacheproxy.http.cache_control import (
    NO_REQUEST_DIRECTIVES,
    RequestDirectives,
    parse_request_directives,
)
from cacheproxy.http.cache_key import RefererSent, SelectingFields
from cacheproxy.http.fields import Headers, combined_value, connection_options
from cacheproxy.http.storability import StorePolicy
from cacheproxy.http.stored import Heuristics
from cacheproxy.http.targeted import Targeting


class RequestFacts(NamedTuple):
    """What the flow needs of one client request (RFC 9111 §4, §5.2.1). (A NamedTuple:
    immutable, and made per request for a quarter of a frozen dataclass's instructions.)"""

    method: str
    headers: Headers                # the client's fields as received (read-only)
    directives: RequestDirectives   # §5.2.1
    authorization: bool             # §3.5
    # Authorization or Cookie: the answer may be made for this user alone, so it says
    # nothing about what other users are served (it never evicts, §3.5).
    credentials: bool
    has_body: bool
    bypass: bool                    # carries a field only the origin can evaluate
    nominated: frozenset[str]       # lower-case names the client's Connection lists (§7.6.1)
    # What Vary's selecting values are read from (§4.1): headers, with the Referer as the
    # route forwards it (cache_key.SelectingFields); the variants, hit-for-pass marks and
    # a store's variant filter all take these.
    selecting: Headers
    # RFC 9110 §13.1.1, §13.1.4: If-Match or If-Unmodified-Since, preconditions only a
    # stored response, or the origin, can evaluate.
    preconditioned: bool
    # RFC 9110 §13.1.2, §13.1.3: If-None-Match or If-Modified-Since (the client's own
    # validators). (Both read once here: lookup tests them on every miss.)
    validating: bool

    # (An absent field, the usual, is found so with one look-up of an istr: no list made.)
    @property
    def if_none_match(self) -> str | None:
        h = self.headers
        return combined_value(h, _IF_NONE_MATCH) if _IF_NONE_MATCH in h else None

    # The date preconditions and If-Range are single values: every field line counts, so
    # that two lines make the list RFC 9110 §13.1.3, §13.1.4 and §13.1.5 say to ignore (or
    # take as false), not a first line that holds alone (§5.3).
    @property
    def if_modified_since(self) -> str | None:
        h = self.headers
        return combined_value(h, _IF_MODIFIED_SINCE) if _IF_MODIFIED_SINCE in h else None

    @property
    def if_match(self) -> str | None:
        return combined_value(self.headers, "If-Match")

    @property
    def if_unmodified_since(self) -> str | None:
        return combined_value(self.headers, "If-Unmodified-Since")

    @property
    def range(self) -> str | None:
        return combined_value(self.headers, "Range") if self.bypass else None

    @property
    def if_range(self) -> str | None:
        return combined_value(self.headers, "If-Range")


def request_facts(method: str, headers: Headers, *, has_body: bool,
                  referer_sent: RefererSent | None = None) -> RequestFacts:
    """referer_sent: how the route forwards a Referer line (CacheSettings.referer_sent).
    (Fields absent from most requests are tested with `in`, a look-up and no call, before
    they are read: this runs for every request the flow decides.)"""
    cc = combined_value(headers, _CACHE_CONTROL) if _CACHE_CONTROL in headers else None
    # RFC 9110 §5.3: every line, as one list
    pragma = combined_value(headers, _PRAGMA) if _PRAGMA in headers else None
    connection = headers.getall(_CONNECTION, []) if _CONNECTION in headers else ()
    authorization = _AUTHORIZATION in headers
    # (Made as the tuple it is, in RequestFacts' order: its __new__ with keywords costs
    # some 3,000 instructions more; neither field, the usual, parses to no directive.)
    return _made(RequestFacts, (
        method,
        headers,
        # §5.4: Pragma only without Cache-Control
        NO_REQUEST_DIRECTIVES if cc is None and pragma is None
        else parse_request_directives(cc, pragma),
        authorization,
        authorization or _COOKIE in headers,  # credentials
        has_body,
        # bypass: Range / If-Range go to the origin as they are unless a stored complete
        # response answers them (RFC 9110 §14.2): a cache stores no partial content. Range
        # is defined for GET only: any other method ignores it (§14.2), and If-Range with
        # it (§13.1.5), so a HEAD with Range is any other HEAD.
        method == "GET" and (_RANGE in headers or _IF_RANGE in headers),
        _nominated(tuple(connection)) if connection else _NONE_NOMINATED,
        # selecting (inline: a look-up, no call; the Referer itself is read only if a Vary
        # names it)
        headers if referer_sent is None or _REFERER not in headers
        else SelectingFields(headers, referer_sent),
        _IF_MATCH in headers or _IF_UNMODIFIED_SINCE in headers,  # preconditioned
        _IF_NONE_MATCH in headers or _IF_MODIFIED_SINCE in headers,  # validating
    ))


_made = tuple.__new__  # (a NamedTuple's own __new__ is a Python call around this)
assert len(RequestFacts._fields) == 11  # (request_facts gives each by position)


# (multidict looks an istr up without case-folding it)
_CACHE_CONTROL, _PRAGMA, _CONNECTION = istr("Cache-Control"), istr("Pragma"), istr("Connection")
_AUTHORIZATION, _COOKIE = istr("Authorization"), istr("Cookie")
_RANGE, _IF_RANGE = istr("Range"), istr("If-Range")
_REFERER = istr("Referer")
_IF_NONE_MATCH, _IF_MODIFIED_SINCE = istr("If-None-Match"), istr("If-Modified-Since")
_IF_MATCH, _IF_UNMODIFIED_SINCE = istr("If-Match"), istr("If-Unmodified-Since")


_NONE_NOMINATED: frozenset[str] = frozenset()


@lru_cache(maxsize=256)
def _nominated(values: tuple[str, ...]) -> frozenset[str]:
    """Memoised: nearly every client sends one of a few values ("keep-alive", "close")."""
    return connection_options(values)


_SHARED = StorePolicy()
_HEURISTICS = Heuristics()
_TARGETING = Targeting()


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """A route's cache settings, as the flow reads them."""

    policy: StorePolicy = _SHARED  # shared or private; what Set-Cookie does
    heuristics: Heuristics = _HEURISTICS
    max_object_bytes: int = 8 * 1024 * 1024
    collapse: bool = True
    excluded: frozenset[str] = frozenset()  # lower-case fields never stored
    # The upstream's grant is stored (every route's plan: whatever cors.mode, which applies
    # on the way out), so one naming an origin varies on Origin whether or not the upstream
    # said so (Fetch §3.2, CORS protocol and caches).
    grant_varies: bool = False
    targeting: Targeting = _TARGETING  # RFC 9213: the targeted fields this cache follows
    # Lower-case request fields the proxy writes upstream from what no key holds (the
    # client's address in X-Forwarded-For): an answer varying on one is not stored.
    rewritten: frozenset[str] = frozenset()
    # A Referer line as the route's policy forwards it (policies/referer.py), which an
    # answer varying on Referer was made for (§4.1); None: as the client sent it.
    referer_sent: RefererSent | None = None

    @property
    def shared(self) -> bool:
        return self.policy.shared
