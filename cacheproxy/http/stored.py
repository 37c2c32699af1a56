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
from operator import attrgetter
from typing import Any, TypeVar

from cacheproxy.http.cache_control import ResponseDirectives, parse_response_directives
from cacheproxy.http.dates import format_http_date, parse_http_date
from cacheproxy.http.fields import HOP_BY_HOP, FieldList, connection_options, values_of
from cacheproxy.http.freshness import corrected_initial_age, freshness_lifetime, parse_age
from cacheproxy.http.targeted import NO_TARGETING, Governing, Targeting, governing

# Per-entry bookkeeping beyond body and fields (the entry object, the headers of the key
# and body objects, the values' tuple, the store's dict slot), and per stored field line
# (its name's and value's slots in the entry's two tuples): counted so that max_bytes
# bounds the process memory, not just the payload.
ENTRY_OVERHEAD = 240
FIELD_OVERHEAD = 16
# What a string of its own costs beyond its characters (sys.getsizeof("")), and an
# interned one's slot in the interpreter's table besides. Each value counts as a string of
# its own, and each name but the common ones (_COMMON_NAMES) too: equal values are shared
# between entries (sys.intern, _same), but an origin or a client that makes every value
# unique (a response of 30,000 short fields; a Vary'd request field) would otherwise hold
# four to eight times the bytes counted, beyond max_bytes (tests/
# test_review_bounds_regressions.py). So max_bytes is a bound, and a store of the usual
# responses, whose values repeat, holds fewer of them than memory would allow: bench/
# memory.py's 1 KiB entry with 7 fields counts 2,263 bytes (1,607 before) for ~1,531 of
# RSS (2026-12-05, 81262fb; the same 2,263 at 04541cb, which made this count).
STR_OVERHEAD = 49
INTERNED_OVERHEAD = 32
# The directives object (ResponseDirectives, sys.getsizeof), which entries share only while
# their Cache-Control values are equal and recent (cache_control.MEMO_CHARS).
DIRECTIVES_OVERHEAD = 136
# Tuples: the header, and each item's slot.
TUPLE_OVERHEAD = 40
SLOT = 8

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


# Field names interned once for every entry, as they are spelled here: not counted per
# entry (CachedResponse.size); a name spelled otherwise counts as a string of its own.
_COMMON_NAMES = frozenset(chain.from_iterable((n, n.lower()) for n in (
    "Accept-Ranges", "Access-Control-Allow-Credentials", "Access-Control-Allow-Headers",
    "Access-Control-Allow-Methods", "Access-Control-Allow-Origin",
    "Access-Control-Expose-Headers", "Access-Control-Max-Age", "Age", "Allow", "Alt-Svc",
    "Cache-Control", "CDN-Cache-Control", "Content-Disposition", "Content-Encoding",
    "Content-Language", "Content-Length", "Content-Location", "Content-MD5",
    "Content-Range", "Content-Security-Policy", "Content-Type", "Cross-Origin-Embedder-Policy",
    "Cross-Origin-Opener-Policy", "Cross-Origin-Resource-Policy", "Date", "ETag", "Expires",
    "Last-Modified", "Link", "Location", "Permissions-Policy", "Referrer-Policy",
    "Retry-After", "Server", "Server-Timing", "Set-Cookie", "Strict-Transport-Security",
    "Surrogate-Control", "Surrogate-Key", "Timing-Allow-Origin", "Vary", "Via",
    "WWW-Authenticate", "X-Content-Type-Options", "X-Frame-Options", "X-Powered-By",
    "X-Request-Id", "X-XSS-Protection")))
for _name in _COMMON_NAMES:
    sys.intern(_name)  # (held by the set: each spelling exists once, whatever is stored)

# Age is recomputed on every reuse (§4.2.3); X-Cache is this cache's own verdict.
_REPLACED_ON_REUSE = frozenset({"age", "x-cache"})


@dataclass(frozen=True, slots=True)
class Heuristics:
    fraction: float = 0.1
    max_age: float = 86400.0


_REPLACEABLE = frozenset({"key", "vary", "vary_values", "status", "headers", "body",
                          "response_time", "initial_age", "lifetime", "directives"})
# What a response's fields say of its freshness (_figures): directives, Date, Age, lifetime.
_Figures = tuple[ResponseDirectives, float | None, int | None, float]
# A response without Vary: its (names, values).
_NO_VARY: tuple[tuple[str, ...], tuple[str | None, ...]] = ((), ())


class CachedResponse:
    """A stored response, immutable, in as few objects as it can be (README, memory per
    entry): its field names and values in two tuples, the names' tuple shared by every
    entry of the same shape of fields (_shape); its age as the one time it was born.

    The age: §4.2.3's current_age is corrected_initial_age + (now - response_time), which
    is now - born with born = response_time - corrected_initial_age; only born is kept
    (age()). Made with an initial_age and a response_time (the constructor), read back
    as born and 0.0: the same age at any time.
    Without Age, born is the earlier of Date and the request's time: mostly the Date, a
    whole second that the entries stored in that second share (_same).

    (A clock set back makes the age smaller than the Age received, by as much: nothing
    else of it is kept.)

    Derived when asked, since a slot costs 8 bytes on every entry: the validators
    (etag, last_modified: the first stored ETag and Last-Modified; one the origin named
    private or no-cache, not stored, is no validator) and modified_at (the §4.3.2
    modification time: Last-Modified, else Date, which every stored response has, valid:
    with_date)."""

    __slots__ = ("__weakref__", "_vary", "body", "born", "directives", "key", "lifetime",
                 "names", "status", "values")
    key: str
    status: int
    names: tuple[str, ...]          # the stored field names, in order (shared: _shape)
    values: tuple[str, ...]         # their values
    body: bytes
    born: float                     # response_time - corrected_initial_age (§4.2.3)
    lifetime: float                 # §4.2.1 freshness_lifetime
    directives: ResponseDirectives
    _vary: tuple[tuple[str, ...], tuple[str | None, ...]]

    def __init__(
        self, *, key: str, vary: tuple[str, ...], vary_values: tuple[str | None, ...],
        status: int, headers: tuple[str, ...], body: bytes, response_time: float,
        initial_age: float, lifetime: float, directives: ResponseDirectives,
    ) -> None:
        """headers: flat name, value, name, value ..."""
        object.__setattr__(self, "__class__", _Unsealed)  # (filled as _new_entry fills)
        _filled(self, key, status, headers[::2], headers[1::2],  # type: ignore[arg-type]
                body, response_time - initial_age, lifetime, directives, vary, vary_values)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"CachedResponse is immutable: {name}")

    __delattr__ = __setattr__  # type: ignore[assignment]

    def _slots(self) -> tuple[object, ...]:
        return (self.key, self.status, self.names, self.values, self.body, self.born,
                self.lifetime, self.directives, self._vary)

    def __eq__(self, other: object) -> bool:
        if type(other) is not CachedResponse:
            return NotImplemented
        return self is other or self._slots() == other._slots()

    def __hash__(self) -> int:
        return hash(self._slots())

    def __repr__(self) -> str:
        return (f"CachedResponse(key={self.key!r}, status={self.status}, "
                f"headers={self.header_pairs()!r}, body={len(self.body)} bytes, "
                f"born={self.born!r}, lifetime={self.lifetime!r})")

    def replace(self, **changes: Any) -> CachedResponse:
        """A copy with changes, by the constructor's names. The field tuples are kept
        unless headers changes (so replay.py's last head serves a copy with a new body,
        lifetime or age too)."""
        unknown = changes.keys() - _REPLACEABLE
        if unknown:
            raise TypeError(f"CachedResponse.replace: unknown {sorted(unknown)}")
        get = changes.get
        names, values = self.names, self.values
        if "headers" in changes:
            names, values = changes["headers"][::2], changes["headers"][1::2]
        born = self.born
        timed = ("response_time" in changes) + ("initial_age" in changes)
        if timed == 1:  # (the other is not held: born is their difference)
            raise TypeError("CachedResponse.replace: response_time and initial_age together")
        if timed:
            born = changes["response_time"] - changes["initial_age"]
        return _new_entry(get("key", self.key), get("status", self.status), names, values,
                          get("body", self.body), born, get("lifetime", self.lifetime),
                          get("directives", self.directives), get("vary", self.vary),
                          get("vary_values", self.vary_values))

    def age(self, now: float) -> float:
        """§4.2.3 current_age at now: corrected_initial_age + resident_time."""
        return now - self.born if now > self.born else 0.0

    # §4.1: the fields it varies on and the request's values for them (cache_key.Variant),
    # read through a C getter: no Python call per read (a hit, and every revalidation,
    # reads it).
    variant = property(attrgetter("_vary"))

    @property
    def vary(self) -> tuple[str, ...]:
        """Lower-cased field names from Vary."""
        return self._vary[0]

    @property
    def vary_values(self) -> tuple[str | None, ...]:
        """The request's normalised values for them."""
        return self._vary[1]

    @property
    def headers(self) -> tuple[str, ...]:
        """The stored fields, flat: name, value, name, value ..."""
        return tuple(chain.from_iterable(zip(self.names, self.values, strict=True)))

    @property
    def etag(self) -> str | None:
        return self.field("etag")

    @property
    def last_modified(self) -> str | None:
        return self.field("last-modified")

    def validators(self) -> tuple[str | None, str | None]:
        """(etag, last_modified), read together (§4.3.1: a revalidation sends both)."""
        names = self.names
        first = (_SHAPES_FIGURED.get(names) or _shape_of(names)).first
        tag, modified = first.get("etag"), first.get("last-modified")
        return (None if tag is None else self.values[tag],
                None if modified is None else self.values[modified])

    @property
    def modified_at(self) -> float:
        """§4.3.2: Last-Modified, else Date, else the time of receipt (a Date of 0.0
        counts)."""
        for name in ("last-modified", "date"):
            when = parse_http_date(self.get(name))
            if when is not None:
                return when
        return self.born

    @property
    def size(self) -> int:
        """What it counts for against cache.max_bytes: body, fields, key, its Vary fields
        and the request's values for them (held to match variants, §4.1: a client chooses
        them, up to a whole header section), the fields its private="..." names, and the
        objects that hold them all (the OVERHEADs). Only what is shared for certain is not
        counted twice: common field names, a names tuple of many entries' shape. Figured
        when asked (on a put, an eviction), from the entry alone (the same each time),
        rather than held: an int kept per entry costs 40 bytes."""
        names, values = self.names, self.values
        shape = _SHAPES_FIGURED.get(names) or _shape_of(names)  # (as field)
        own = len(values) + shape.own
        size = len(self.body) + shape.chars + sum(map(len, values)) \
            + len(self.key) + ENTRY_OVERHEAD + DIRECTIVES_OVERHEAD \
            + FIELD_OVERHEAD * len(names) + STR_OVERHEAD * own
        if shape.shared:  # (names and short values interned: stored_fields)
            # Not interned: the values of _UNIQUE_VALUES' names, and those longer than
            # _INTERN_MAX (rare: looked for one by one only when there is one).
            long = 0
            if values and max(map(len, values)) > _INTERN_MAX:
                long = sum(1 for lower, v in zip(shape.lowered, values, strict=True)
                           if len(v) > _INTERN_MAX and lower not in _UNIQUE_VALUES)
            size += INTERNED_OVERHEAD * (own - shape.unique - long)
        else:  # (a names tuple of its own)
            size += TUPLE_OVERHEAD + SLOT * len(names)
        private = self.directives.private_fields
        if private:
            size += TUPLE_OVERHEAD + sum(map(len, private)) \
                + (SLOT + STR_OVERHEAD) * len(private)
        vary, vary_values = self._vary
        if vary:
            # the pair, its two tuples, and a string per name and per value present
            size += 3 * TUPLE_OVERHEAD + 4 * SLOT + sum(map(len, vary)) \
                + (SLOT + STR_OVERHEAD) * len(vary)
            for v in vary_values:
                size += SLOT if v is None else SLOT + STR_OVERHEAD + len(v)
        return size

    def sized_as(self, other: CachedResponse) -> bool:
        """Whether it counts the bytes other counts (size), known without figuring them:
        a copy holding other's very field tuples, body and directives, under its key and
        variant (stored.refreshed's, for a 304 that changed no field: the store's put of
        it need not figure a size)."""
        # (key and variant by identity first: a refreshed entry holds the stored ones)
        return self.values is other.values and self.names is other.names \
            and self.body is other.body and self.directives is other.directives \
            and (self._vary is other._vary or self._vary == other._vary) \
            and (self.key is other.key or self.key == other.key)

    def header_pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.names, self.values, strict=True))

    def get(self, name: str) -> str | None:
        """First value of a field (name compared case-insensitively)."""
        return self.field(name.lower())

    def field(self, lower: str) -> str | None:
        """get() for a name lower-cased already: no lower() per read (a quick hit reads
        Content-Encoding so, and every revalidation the validators). The shape's figures
        are looked up here, _shape_of only for a shape not figured yet."""
        names = self.names
        i = (_SHAPES_FIGURED.get(names) or _shape_of(names)).first.get(lower)
        return None if i is None else self.values[i]

    def position(self, name: str) -> int | None:
        """Where the first field of a name (lower-case) is among the stored fields."""
        return _shape_of(self.names).first.get(name)

    def lines_once(self) -> dict[str, int] | None:
        """Where each field (lower-cased name) is, when every name is on one line (the
        usual response); None when one is on more than one. Read, never changed: the
        index of its shape (_Shape.first), shared by the entries of that shape."""
        names = self.names
        shape = _SHAPES_FIGURED.get(names) or _shape_of(names)  # (as field)
        return None if shape.repeated else shape.first


class _Unsealed(CachedResponse):
    """A CachedResponse while it is filled (_filled): its slots set by plain stores, which
    CachedResponse's own __setattr__ refuses, at a third of the cost of one
    object.__setattr__ call per slot (an entry is made on every store and every 304);
    then it is made a CachedResponse, of the very same layout."""

    __slots__ = ()
    __setattr__ = object.__setattr__  # type: ignore[assignment]
    __delattr__ = object.__delattr__  # type: ignore[assignment]


def _filled(entry: _Unsealed, key: str, status: int, names: tuple[str, ...],
            values: tuple[str, ...], body: bytes, born: float, lifetime: float,
            directives: ResponseDirectives, vary: tuple[str, ...],
            vary_values: tuple[str | None, ...]) -> CachedResponse:
    entry.key = key
    entry.status = status
    entry.names = _shape(names)
    entry.values = values
    entry.body = body
    born = float(born)  # (an int has no is_integer before 3.12)
    entry.born = _same(born) if born.is_integer() else born
    entry.lifetime = lifetime
    entry.directives = directives
    entry._vary = (vary, vary_values) if vary else _NO_VARY
    entry.__class__ = CachedResponse  # (sealed: immutable from here on)
    return entry


def _new_entry(key: str, status: int, names: tuple[str, ...], values: tuple[str, ...],
               body: bytes, born: float, lifetime: float, directives: ResponseDirectives,
               vary: tuple[str, ...], vary_values: tuple[str | None, ...]) -> CachedResponse:
    return _filled(object.__new__(_Unsealed), key, status, names, values, body, born,
                   lifetime, directives, vary, vary_values)


# The field names' tuples shared across entries (_shape) are at most so many names and
# characters: the table keeps what it holds after the entries of a shape are gone, and an
# origin sends up to 128 KiB of fields, some 30,000 names: 4,096 such shapes held 7 GB
# that no store bound counted. Larger shapes stay each entry's own (and are counted so:
# CachedResponse.size). The table then holds 7 MB at most (1,024 shapes of 64 names of
# their own), what an origin sends or not.
_SHAPE_NAMES = 64
_SHAPE_CHARS = 1024
_SHAPES_KEPT = 1024


def _shared_shape(names: tuple[str, ...]) -> bool:
    return len(names) <= _SHAPE_NAMES and sum(map(len, names)) <= _SHAPE_CHARS


class _Shape:
    """What is read of one shape of field names (an entry's names tuple), figured once
    for all the entries of a shape that is shared (_shared_shape), rather than on every
    read: where each name (lower-cased) first is (CachedResponse.field: the validators
    are read on every revalidation), the names lower-cased (stored_field_list), and what
    CachedResponse.size counts for the names."""

    __slots__ = ("chars", "first", "lowered", "own", "repeated", "shared", "unique")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.lowered = lowered = tuple([name.lower() for name in names])
        first: dict[str, int] = {}
        for i, lower in enumerate(lowered):
            first.setdefault(lower, i)
        self.first = first
        self.repeated = len(first) != len(names)  # a name on more than one line
        self.chars = sum(map(len, names))
        self.shared = len(names) <= _SHAPE_NAMES and self.chars <= _SHAPE_CHARS
        # names that count as strings of their own; values that are never interned
        self.own = sum(1 for name in names if name not in _COMMON_NAMES)
        self.unique = sum(1 for lower in lowered if lower in _UNIQUE_VALUES)


# The figures of recent shared shapes, the first figured going first when there are
# _FIGURED_KEPT (each a dict and a tuple of at most _SHAPE_NAMES names). A larger shape's
# are figured on each read, and not kept after its entries.
_SHAPES_FIGURED: dict[tuple[str, ...], _Shape] = {}
_FIGURED_KEPT = 256


def _shape_of(names: tuple[str, ...]) -> _Shape:
    shape = _SHAPES_FIGURED.get(names)
    if shape is None:
        shape = _Shape(names)
        if shape.shared:
            if len(_SHAPES_FIGURED) >= _FIGURED_KEPT:
                del _SHAPES_FIGURED[next(iter(_SHAPES_FIGURED))]
            _SHAPES_FIGURED[names] = shape
    return shape


def _shape(names: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple for the field names of all entries with the same fields in the same
    order (the responses of one origin mostly have): 8 bytes a name saved per entry."""
    # (a shape figured already is a shared one: found without measuring it again)
    if names in _SHAPES_FIGURED or _shared_shape(names):
        return _shape_shared(names)
    return names


@lru_cache(maxsize=_SHAPES_KEPT)
def _shape_shared(names: tuple[str, ...]) -> tuple[str, ...]:
    return names


def stored_field_list(entry: CachedResponse) -> FieldList:
    """The stored fields as a new FieldList, their index by name made from the shape's
    lower-cased names (figured once per shape, _Shape) rather than per field."""
    names, values = entry.names, entry.values
    shape = _SHAPES_FIGURED.get(names) or _shape_of(names)  # (as field)
    if shape.repeated:
        by_name: dict[str, list[str]] = {}
        for lower, value in zip(shape.lowered, values, strict=True):
            by_name.setdefault(lower, []).append(value)
    else:  # each name once: its one value in a list of its own (a comprehension makes no
        # tuple per value on the way: 1.7 -> 1.0 µs for 7 fields, once per 304)
        by_name = {lower: [value] for lower, value in zip(shape.lowered, values, strict=True)}
    return FieldList.indexed(list(zip(names, values, strict=True)), by_name)


# The last stored_fields_view made: (values, names, the view).
_last_view: tuple[tuple[str, ...], tuple[str, ...], FieldList] | None = None


def stored_fields_view(entry: CachedResponse) -> FieldList:
    """stored_field_list, to read and never change: the last one made is handed out
    again for an entry with the very same field tuples (a URL revalidated on every
    request, whose 304s repeat its Date within a second, refreshes entries that hold the
    stored tuples themselves: stored.refreshed), rather than made per 304."""
    global _last_view
    last = _last_view
    if last is not None and last[0] is entry.values and last[1] is entry.names:
        return last[2]
    view = stored_field_list(entry)
    _last_view = (entry.values, entry.names, view)
    return view


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
    it was received, so its age and a later 304 merge (§4.3.4) have a Date to use; and
    one with an invalid Date ("MAY replace the field value with the time that response
    was received") gets that instead, so that the stored Date is always a date (§4.3.2's
    modification time falls back to it: CachedResponse.modified_at)."""
    dates = values_of(pairs, "date")
    if dates and parse_http_date(dates[0]) is not None:
        return pairs
    if dates:
        pairs = [(k, v) for k, v in pairs if k.lower() != "date"]
    return [*pairs, ("Date", format_http_date(received_at))]


def stored_fields(pairs: list[tuple[str, str]], excluded: frozenset[str]) -> tuple[str, ...]:
    """§3.1: hop-by-hop fields and the ones Connection names are not stored."""
    named = connection_options(values_of(pairs, "connection"))
    flat: list[str] = []
    if len(pairs) > _SHAPE_NAMES or sum(len(k) for k, _ in pairs) > _SHAPE_CHARS:
        # Too many fields for their names to be shared (_shape): names and values are
        # the entry's own, and are not added to the interpreter's table of interned
        # strings, which does not shrink when they go (but the common names', interned
        # already).
        for k, v in pairs:
            lk = k.lower()
            if not (lk in HOP_BY_HOP or lk in named or lk in excluded
                    or lk in _REPLACED_ON_REUSE):
                flat += (sys.intern(k) if k in _COMMON_NAMES else str(k), v)
        return tuple(flat)
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
    rules: Governing | None = None,
) -> CachedResponse:
    """rules: governing(pairs, targeting), when the caller has it already (the flow's
    step for a 304 reads it once for the view, the verdict and the entry)."""
    pairs = with_date(pairs, response_time)
    if type(pairs) is not FieldList:  # (looked up by name below some ten times)
        pairs = FieldList(pairs)
    flat = stored_fields(pairs, excluded)
    return _made(key, vary, vary_values, status, pairs, flat[::2], flat[1::2], body,
                 request_time, response_time, shared, heuristics, targeting, rules)


def refreshed(
    entry: CachedResponse, merged: FieldList, *, request_time: float, response_time: float,
    shared: bool, heuristics: Heuristics, targeting: Targeting = NO_TARGETING,
    rules: Governing | None = None,
) -> CachedResponse:
    """The stored response with the fields of a 304 that changed only its Date merged in
    (revalidation.date_only): its age, freshness lifetime and modification time figured
    again. The same as make_stored_response makes from merge_304's fields
    (tests/rfc/test_refresh_rule.py), but for the order of fields of different names and
    the case of names, which carry no meaning (RFC 9110 §5.3, §5.1): the stored fields
    keep their place and spelling, the new Date that of the stored one."""
    date = merged.by_name["date"][0]  # (date_only's: one Date, in the stored one's place)
    values, names = entry.values, entry.names
    at = (_SHAPES_FIGURED.get(names) or _shape_of(names)).first.get("date")  # (position)
    if at is not None and values[at] != date:  # (else the stored tuples themselves, so
        # the head replay.py encoded from them serves the refreshed entry too)
        # stored fields already: only the new Date is shared (_same)
        values = (*values[:at], _same(date) if len(date) <= _INTERN_MAX else date,
                  *values[at + 1:])
    if rules is None:
        rules = governing(merged, targeting)
    # The figures of the merged fields (but the age, which response_time moves): those of
    # the last refresh when made from the very same values (held: a URL revalidated many
    # times a second, whose 304s repeat its Date) under the same rules and settings.
    global _last_figures
    given = (rules.cache_control, rules.field, entry.status, shared, heuristics)
    last = _last_figures
    if last is not None and last[0] is values and last[1] is names and last[2] == given:
        figures = last[3]
    else:
        figures = _figures(merged, rules, entry.status, shared, heuristics, response_time)
        if figures[1] is not None:  # (no Date: the lifetime depends on response_time)
            _last_figures = (values, names, given, figures)
    directives, date, age_value, lifetime = figures
    initial_age = corrected_initial_age(
        age_value=age_value or 0, date=date, request_time=request_time,
        response_time=response_time)
    born = response_time - float(initial_age)
    if values is entry.values and born == entry.born and lifetime == entry.lifetime \
            and directives is entry.directives:
        # Nothing changed at all (a 304 repeating the stored Date, its age figured from
        # that Date again): the stored response itself, immutable, is the refreshed one.
        # Nothing new is made, and the store's put of it only marks it recently used.
        return entry
    return _reborn(entry, values, born, lifetime, directives)


def _reborn(entry: CachedResponse, values: tuple[str, ...], born: float, lifetime: float,
            directives: ResponseDirectives) -> CachedResponse:
    """entry with these values, age and freshness (refreshed): the rest is entry's as it
    is, its names tuple shaped already (_shape) and its variant's pair the same."""
    made = object.__new__(_Unsealed)
    made.key = entry.key
    made.status = entry.status
    made.names = entry.names
    made.values = values
    made.body = entry.body
    made.born = _same(born) if born.is_integer() else born  # (as _filled's)
    made.lifetime = lifetime
    made.directives = directives
    made._vary = entry._vary
    made.__class__ = CachedResponse  # (sealed: immutable from here on)
    return made


# The last refresh's figures (refreshed): its field tuples, what else they were figured
# from, and the figures.
_last_figures: tuple[tuple[str, ...], tuple[str, ...], tuple[object, ...], _Figures] | None \
    = None


def _made(
    key: str, vary: tuple[str, ...], vary_values: tuple[str | None, ...], status: int,
    pairs: FieldList, names: tuple[str, ...], values: tuple[str, ...], body: bytes,
    request_time: float, response_time: float, shared: bool, heuristics: Heuristics,
    targeting: Targeting, rules: Governing | None = None,
) -> CachedResponse:
    """The entry for these fields (pairs, with a Date) stored as names and values."""
    # RFC 9213 §2.2: a targeted field, when there is one for this cache, sets aside
    # Cache-Control and Expires.
    if rules is None:
        rules = governing(pairs, targeting)
    return _aged(key, vary, vary_values, status, names, values, body, request_time,
                 response_time, _figures(pairs, rules, status, shared, heuristics,
                                         response_time))


def _figures(pairs: FieldList, rules: Governing, status: int, shared: bool,
             heuristics: Heuristics, response_time: float) -> _Figures:
    """What pairs (with a Date) say of freshness (§4.2.1) under rules: the directives, the
    Date, the Age (None: invalid) and the freshness lifetime."""
    directives = parse_response_directives(rules.cache_control)
    date = parse_http_date(first_value(pairs, "date"))
    expires = first_value(pairs, "expires") if rules.expires_applies else None
    lm_time = parse_http_date(first_value(pairs, "last-modified"))
    # All Age lines, joined: more than one value makes it invalid, as any non-number does.
    age_value = parse_age(all_values(pairs, "age"))
    # §4.2.1: "consider responses that have invalid freshness information ... to be
    # stale"; an invalid Age is such information (the suite's age-parse-* tests).
    lifetime = 0.0 if age_value is None else float(freshness_lifetime(
        directives, status=status, date=date, expires=expires,
        expires_at=None if expires is None else parse_http_date(expires), last_modified=lm_time,
        response_time=response_time, shared=shared,
        heuristic_fraction=heuristics.fraction, heuristic_max_age=heuristics.max_age,
    ))
    return directives, date, age_value, _same(lifetime)


def _aged(key: str, vary: tuple[str, ...], vary_values: tuple[str | None, ...], status: int,
          names: tuple[str, ...], values: tuple[str, ...], body: bytes, request_time: float,
          response_time: float, figures: _Figures) -> CachedResponse:
    """The entry, born at its §4.2.3 corrected initial age before response_time."""
    directives, date, age_value, lifetime = figures
    initial_age = corrected_initial_age(
        age_value=age_value or 0, date=date, request_time=request_time,
        response_time=response_time)
    return _new_entry(key, status, names, values, body, response_time - float(initial_age),
                      lifetime, directives, vary, vary_values)
