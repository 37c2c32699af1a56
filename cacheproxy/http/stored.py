"""A stored response and how one is made (RFC 9111 §3, §4.2).

The entry keeps the parsed directives and validators beside the header block
and body, and its freshness figures precomputed, so the hit path does no
re-parsing. Field names and short values are interned: thousands of entries
share them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from typing import TypeVar

from cacheproxy.http.cache_control import ResponseDirectives, parse_response_directives
from cacheproxy.http.dates import format_http_date, parse_http_date
from cacheproxy.http.fields import HOP_BY_HOP, FieldList, connection_options, values_of
from cacheproxy.http.freshness import corrected_initial_age, freshness_lifetime, parse_age
from cacheproxy.http.targeted import NO_TARGETING, Targeting, governing

# Per-entry bookkeeping beyond body and fields (object, key, LRU links), and per stored
# field line (its two slots in the field tuple, and a share of its value's string object:
# a value of its own costs some 60 bytes beyond its characters, a shared one nothing):
# counted so that max_bytes bounds the process memory, not just the payload. Calibrated
# with bench/memory.py: what the store accounts per 1 KiB entry with 7 fields stays a
# few percent above the RSS each one costs (1,896 against 1,793 bytes on 2026-12-03).
ENTRY_OVERHEAD = 304
FIELD_OVERHEAD = 48

# Values up to this length are interned too: Content-Type, Cache-Control, Server...
# repeat across entries, and interned strings die with the last entry using them.
_INTERN_MAX = 128
_V = TypeVar("_V", str, float)
# Values that may differ from one response to the next: interning them would only grow
# the interpreter's table of interned strings (about 90 bytes an entry).
_UNIQUE_VALUES = frozenset({"date", "expires", "last-modified", "etag", "content-length",
                            "set-cookie", "content-md5", "content-range", "x-request-id"})
# Those of them that often repeat are shared through a bounded table instead (_same):
# responses stored in the same second share a Date, those of one deployment a
# Last-Modified, those of one size a Content-Length.
_REPEATING = frozenset({"date", "expires", "last-modified", "content-length"})
_SAME_KEPT = 4096  # values the table holds, the least recently seen going first


@lru_cache(maxsize=_SAME_KEPT)
def _same(value: _V) -> _V:
    """One object for equal values seen lately (strings, floats): the cache hands back
    the first one, so entries made from equal values share it."""
    return value
# Age is recomputed on every reuse (§4.2.3); X-Cache is this cache's own verdict.
_REPLACED_ON_REUSE = frozenset({"age", "x-cache"})


@dataclass(frozen=True, slots=True)
class Heuristics:
    fraction: float = 0.1
    max_age: float = 86400.0


@dataclass(frozen=True, slots=True, weakref_slot=True)
class CachedResponse:
    key: str
    vary: tuple[str, ...]                   # lower-cased field names from Vary
    vary_values: tuple[str | None, ...]     # the request's normalised values for them
    status: int
    headers: tuple[str, ...]                # flat name, value, name, value ...
    body: bytes
    response_time: float
    initial_age: float                      # §4.2.3 corrected_initial_age
    lifetime: float                         # §4.2.1 freshness_lifetime
    directives: ResponseDirectives
    etag: str | None
    last_modified: str | None
    modified_at: float                      # Last-Modified, else Date, else receipt (§4.3.2)

    @property
    def size(self) -> int:
        """What it counts for against cache.max_bytes: body, fields, key and the
        bookkeeping beyond them (ENTRY_OVERHEAD, FIELD_OVERHEAD). Figured when asked (on
        a put, an eviction) rather than held: an int kept per entry costs 40 bytes."""
        h = self.headers
        return len(self.body) + sum(map(len, h)) + len(self.key) + ENTRY_OVERHEAD \
            + FIELD_OVERHEAD * (len(h) // 2)

    def header_pairs(self) -> list[tuple[str, str]]:
        h = self.headers
        return [(h[i], h[i + 1]) for i in range(0, len(h), 2)]

    def get(self, name: str) -> str | None:
        """First value of a field (name compared case-insensitively)."""
        h, name = self.headers, name.lower()
        for i in range(0, len(h), 2):
            if h[i].lower() == name:
                return h[i + 1]
        return None


def _same_or_none(value: str | None) -> str | None:
    return value if value is None or len(value) > _INTERN_MAX else _same(value)


def first_value(pairs: list[tuple[str, str]], name: str) -> str | None:
    if type(pairs) is FieldList:
        values = pairs.by_name.get(name)
        return values[0] if values else None
    return next((v for k, v in pairs if k.lower() == name), None)


def all_values(pairs: list[tuple[str, str]], name: str) -> str | None:
    values = values_of(pairs, name)
    return ", ".join(values) if values else None


def with_date(pairs: list[tuple[str, str]], received_at: float) -> list[tuple[str, str]]:
    """RFC 9110 §6.6.1: a cache storing a message without Date adds one, the time
    it was received, so its age and a later 304 merge (§4.3.4) have a Date to use."""
    if values_of(pairs, "date"):
        return pairs
    return [*pairs, ("Date", format_http_date(received_at))]


def stored_fields(pairs: list[tuple[str, str]], excluded: frozenset[str]) -> tuple[str, ...]:
    """§3.1: hop-by-hop fields and the ones Connection names are not stored."""
    named = connection_options(values_of(pairs, "connection"))
    flat: list[str] = []
    for k, v in pairs:
        lk = k.lower()
        if lk in HOP_BY_HOP or lk in named or lk in excluded or lk in _REPLACED_ON_REUSE:
            continue
        short = len(v) <= _INTERN_MAX
        if short and lk not in _UNIQUE_VALUES:
            v = sys.intern(v)
        elif short and lk in _REPEATING:
            v = _same(v)
        flat += (sys.intern(str(k)), v)
    return tuple(flat)


def make_stored_response(
    *,
    key: str,
    vary: tuple[str, ...],
    vary_values: tuple[str | None, ...],
    status: int,
    pairs: list[tuple[str, str]],
    body: bytes,
    request_time: float,
    response_time: float,
    shared: bool,
    heuristics: Heuristics,
    excluded: frozenset[str] = frozenset(),
    targeting: Targeting = NO_TARGETING,
) -> CachedResponse:
    pairs = with_date(pairs, response_time)
    if type(pairs) is not FieldList:  # (looked up by name below some ten times)
        pairs = FieldList(pairs)
    return _made(key, vary, vary_values, status, pairs, stored_fields(pairs, excluded), body,
                 request_time, response_time, shared, heuristics, targeting)


def refreshed(
    entry: CachedResponse, merged: FieldList, *, request_time: float, response_time: float,
    shared: bool, heuristics: Heuristics, targeting: Targeting = NO_TARGETING,
) -> CachedResponse:
    """The stored response with the fields of a 304 that changed only its Date merged in
    (revalidation.date_only): its age, freshness lifetime and modification time figured
    again. The same as make_stored_response makes from merge_304's fields
    (tests/rfc/test_refresh_rule.py), but for the order of fields of different names and
    the case of names, which carry no meaning (RFC 9110 §5.3, §5.1): the stored fields
    keep their place and spelling, the new Date that of the stored one."""
    headers = entry.headers
    if tuple(chain.from_iterable(merged)) != headers:
        # (else the 304's Date is the stored one: the stored tuple itself, so the head
        # replay.py encoded from it serves the refreshed entry too)
        flat: list[str] = []
        for k, v in merged:  # stored fields already: only the new Date is shared (_same)
            flat += (k, _same(v) if len(v) <= _INTERN_MAX and k.lower() == "date" else v)
        headers = tuple(flat)
    return _made(entry.key, entry.vary, entry.vary_values, entry.status, merged, headers,
                 entry.body, request_time, response_time, shared, heuristics, targeting)


def _made(
    key: str, vary: tuple[str, ...], vary_values: tuple[str | None, ...], status: int,
    pairs: FieldList, headers: tuple[str, ...], body: bytes, request_time: float,
    response_time: float, shared: bool, heuristics: Heuristics, targeting: Targeting,
) -> CachedResponse:
    """The entry for these fields (pairs, with a Date) stored as headers."""
    # RFC 9213 §2.2: a targeted field, when there is one for this cache, sets aside
    # Cache-Control and Expires.
    rules = governing(pairs, targeting)
    directives = parse_response_directives(rules.cache_control)
    date = parse_http_date(first_value(pairs, "date"))
    expires = first_value(pairs, "expires") if rules.expires_applies else None
    last_modified = _same_or_none(first_value(pairs, "last-modified"))
    lm_time = parse_http_date(last_modified)
    # §4.3.2: Last-Modified, else Date, else the time of receipt (a Date of 0.0 counts).
    modified_at = lm_time if lm_time is not None else date if date is not None else response_time
    # All Age lines, joined: more than one value makes it invalid, as any non-number does.
    age_value = parse_age(all_values(pairs, "age"))
    return CachedResponse(
        key=key,
        vary=vary,
        vary_values=vary_values,
        status=status,
        headers=headers,
        body=body,
        response_time=response_time,
        initial_age=_same(float(corrected_initial_age(
            age_value=age_value or 0, date=date,
            request_time=request_time, response_time=response_time,
        ))),
        # §4.2.1: "consider responses that have invalid freshness information ... to be
        # stale"; an invalid Age is such information (the suite's age-parse-* tests).
        lifetime=_same(0.0 if age_value is None else float(freshness_lifetime(
            directives, status=status, date=date, expires=expires,
            expires_at=parse_http_date(expires), last_modified=lm_time,
            response_time=response_time, shared=shared,
            heuristic_fraction=heuristics.fraction, heuristic_max_age=heuristics.max_age,
        ))),
        directives=directives,
        etag=first_value(pairs, "etag"),
        last_modified=last_modified,
        modified_at=_same(float(modified_at)),
    )
