"""Cache-Control and Pragma parsing (RFC 9111 §5.2, §5.4).

Parsed values are immutable and memoised by field value: the same header
string yields the same object, so stored entries share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from cacheproxy.http.abnf import QUOTED_PAIR_RE, bounded_digits
from cacheproxy.http.fields import split_list

# §1.2.2: a delta-seconds too large to represent is taken as 2^31; it also
# stands for "no limit" where a directive has no argument (max-stale).
MAX_DELTA = 2147483648


@dataclass(frozen=True, slots=True)
class RequestDirectives:
    """§5.2.1: what the client will accept from a cache."""

    max_age: int | None = None
    max_stale: int | None = None  # MAX_DELTA when given without a value
    min_fresh: int | None = None
    no_cache: bool = False
    no_store: bool = False
    only_if_cached: bool = False
    stale_if_error: int | None = None  # RFC 5861 §4 allows it on requests too


@dataclass(frozen=True, slots=True)
class ResponseDirectives:
    """§5.2.2 plus RFC 5861: what the origin allows caches to do."""

    max_age: int | None = None
    s_maxage: int | None = None
    public: bool = False
    private: bool = False  # unqualified private only; see private_fields
    private_fields: tuple[str, ...] = ()
    no_cache: bool = False  # unqualified, or qualified (treated alike, §5.2.2.4)
    no_store: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    immutable: bool = False
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None

    @property
    def has_explicit_freshness(self) -> bool:
        return self.max_age is not None or self.s_maxage is not None


def _pairs(value: str) -> list[tuple[str, str | None]]:
    """(lower-case name, unquoted argument or None) per directive (§5.2)."""
    out: list[tuple[str, str | None]] = []
    for item in split_list(value):
        name, eq, arg = item.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        if not eq:
            out.append((name, None))
            continue
        arg = arg.strip()
        # §5.2: recipients accept the quoted form even where a token is expected.
        if len(arg) >= 2 and arg[0] == arg[-1] == '"':
            arg = QUOTED_PAIR_RE.sub(r"\1", arg[1:-1])  # RFC 9110 §5.6.4
        out.append((name, arg))
    return out


def _delta(arg: str | None) -> int | None:
    """delta-seconds (§1.2.2): non-negative integer, capped at 2^31 however long; else None."""
    return None if arg is None else bounded_digits(arg, MAX_DELTA)


# The response directives this cache acts on (parse_response_directives); any other is
# ignored (§5.2.3).
RESPONSE_DIRECTIVES: Final = frozenset({
    "max-age", "s-maxage", "stale-while-revalidate", "stale-if-error", "private", "public",
    "no-cache", "no-store", "must-revalidate", "proxy-revalidate", "must-understand",
    "immutable"})


# Values parsed are memoised up to this length: the tables hold their keys (and what was
# parsed from them) after every response with them is gone, and an origin's Cache-Control
# may be 128 KiB (2,048 of them held 256 MB, and private="..." lists of 20,000 names some
# GBs, that no store bound counted); a client's request field, 8 KiB. A longer value,
# which no real origin or client sends twice, is parsed each time.
MEMO_CHARS = 256


def parse_response_directives(value: str | None) -> ResponseDirectives:
    if value is not None and len(value) > MEMO_CHARS:
        return _parse_response_directives.__wrapped__(value)
    return _parse_response_directives(value)


@lru_cache(maxsize=2048)
def _parse_response_directives(value: str | None) -> ResponseDirectives:
    if not value:
        return _EMPTY_RESPONSE
    d: dict[str, object] = {}
    private_fields: list[str] = []
    for name, arg in _pairs(value):
        key = name.replace("-", "_")
        if name in ("max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"):
            if key in d:
                continue  # §4.2.1: with duplicates, the first occurrence is used
            seconds = _delta(arg)
            # An unparsable max-age/s-maxage must not extend freshness: treat as 0
            # (§4.2.1 "the response should be considered stale"); the stale-* ones drop.
            if seconds is None and name in ("max-age", "s-maxage"):
                seconds = 0
            if seconds is not None:
                d[key] = seconds
        elif name == "private":
            named = [f.strip().lower() for f in (arg or "").split(",") if f.strip()]
            if named:  # §5.2.2.7 qualified form: only those fields are private
                private_fields.extend(named)
            else:  # unqualified, or a qualified form naming no field (" ", ","): all of it
                d["private"] = True
        elif name in ("public", "no-cache", "no-store", "must-revalidate",
                      "proxy-revalidate", "must-understand", "immutable"):
            d[key] = True
    if private_fields:
        d["private_fields"] = tuple(private_fields)
    return ResponseDirectives(**d)  # type: ignore[arg-type]


def parse_request_directives(
    cache_control: str | None, pragma: str | None = None
) -> RequestDirectives:
    if (cache_control is not None and len(cache_control) > MEMO_CHARS) \
            or (pragma is not None and len(pragma) > MEMO_CHARS):
        return _parse_request_directives.__wrapped__(cache_control, pragma)
    return _parse_request_directives(cache_control, pragma)


@lru_cache(maxsize=1024)
def _parse_request_directives(
    cache_control: str | None, pragma: str | None = None
) -> RequestDirectives:
    if not cache_control:
        # §5.4: without Cache-Control, "Pragma: no-cache" means Cache-Control: no-cache.
        if pragma and any(p.lower() == "no-cache" for p, _ in _pairs(pragma)):
            return RequestDirectives(no_cache=True)
        return NO_REQUEST_DIRECTIVES
    d: dict[str, object] = {}
    for name, arg in _pairs(cache_control):
        key = name.replace("-", "_")
        if name in ("max-age", "min-fresh", "stale-if-error"):
            seconds = _delta(arg)
            if seconds is not None and key not in d:
                d[key] = seconds
        elif name == "max-stale":
            # §5.2.1.2: without a value the client accepts any staleness.
            seconds = MAX_DELTA if arg is None else _delta(arg)
            if seconds is not None and key not in d:
                d[key] = seconds
        elif name in ("no-cache", "no-store", "only-if-cached"):
            d[key] = True
    return RequestDirectives(**d)  # type: ignore[arg-type]


_EMPTY_RESPONSE = ResponseDirectives()
# A request without Cache-Control or Pragma: callers may test for it by identity.
NO_REQUEST_DIRECTIVES = RequestDirectives()
