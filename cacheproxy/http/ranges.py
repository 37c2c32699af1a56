"""Range requests answered from a stored complete response (RFC 9110 §14, §13.1.5)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from cacheproxy.http.abnf import bounded_digits
from cacheproxy.http.dates import parse_http_date
from cacheproxy.http.stored import CachedResponse
from cacheproxy.http.validators import parse_etag, strong_match

# §14.2: a server MAY ignore a Range header field; more ranges than this (a way to make a
# server send many small parts, §17.15) and the whole representation is sent instead.
MAX_RANGES: Final = 32
# Positions at or past this are past the end of any representation (which stays far below
# it): a number of thousands of digits is read as this, not refused by int() (abnf.py).
_FAR: Final = 2**63

# RFC 9110 §14.1.1, §14.1.2
#   ranges-specifier = range-unit "=" range-set
#   range-set        = 1#range-spec
#   range-spec       = int-range / suffix-range / other-range
#   int-range        = first-pos "-" [ last-pos ]
#   suffix-range     = "-" suffix-length
_RANGE_SPEC_RE: Final = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)", re.ASCII)
# Fields of the stored 200 a 416 made from it does not carry: its freshness and
# validators would make the 416 storable (RFC 9111 §3) for caches further on, which key on
# the URL alone and could answer requests without a Range with it; a 416 is not
# heuristically cacheable (RFC 9110 §15.1), so without them it is not stored. Nor the
# content's fields: a 416 has none of it (RFC 9110 §15.5.17).
# Digests of the stored 200's content: a part the cache cuts from it has other content
# (RFC 9530 §2, and its Appendix B's 206; Content-MD5, RFC 1864). Repr-Digest, of the
# whole representation, holds for a part too.
NOT_ON_PART: Final = ("Content-Digest", "Content-MD5")
NOT_ON_416: Final = ("Cache-Control", "Expires", "Pragma", "ETag", "Last-Modified",
                     "Content-Type", "Content-Encoding", *NOT_ON_PART)


@dataclass(frozen=True, slots=True)
class Partial:
    """§15.3.7: 206 with these byte ranges (first, last inclusive) of length bytes."""

    ranges: tuple[tuple[int, int], ...]
    length: int


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """§15.5.17: 416, none of the ranges overlaps the length bytes there are."""

    length: int


def parse_ranges(value: str, length: int) -> Partial | Unsatisfiable | None:
    """§14.2: the satisfiable ranges of a `bytes` Range for a representation of length
    bytes; Unsatisfiable when there is none; None when the field is to be ignored (another
    unit, invalid, or too many ranges): then the whole representation is the answer."""
    unit, eq, range_set = value.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in range_set.split(",")]
    specs = [s for s in specs if s]  # §5.6.1: empty list members are ignored
    if not specs or len(specs) > MAX_RANGES:
        return None
    ranges: list[tuple[int, int]] = []
    for spec in specs:
        m = _RANGE_SPEC_RE.fullmatch(spec)
        if m is None:
            return None  # §14.1.1: one invalid range-spec makes the whole field invalid
        first, last, suffix = m.groups()
        if suffix is not None:
            # §14.1.2: the last suffix-length bytes (all of them, if fewer).
            size = _number(suffix)
            if size > 0 and length == 0:
                # §14.1.1: "If the selected representation has zero length, the only
                # satisfiable form of range-spec is a suffix-range with a non-zero
                # suffix-length": satisfiable, so no 416; its part, all of nothing, has
                # no Content-Range (§14.4), so the whole (empty) 200 goes, as nginx's.
                return None
            if size > 0:
                ranges.append((max(0, length - size), length - 1))
            continue
        start = _number(first)
        end = _number(last) if last else length - 1
        if last and end < start:
            return None  # §14.1.1: last-pos less than first-pos: invalid
        if start < length:  # §14.1.1: satisfiable when first-pos < length
            ranges.append((start, min(end, length - 1)))
    if not ranges:
        return Unsatisfiable(length)
    if sum(last - first + 1 for first, last in ranges) > length:
        # §14.2, §17.15: overlapping ranges that add up to more than the representation
        # (bytes=0-,0-,...: 32 copies of it) amplify the answer; the whole one is sent
        # instead, as nginx does (Apache's CVE-2011-3192 was this).
        return None
    return Partial(tuple(ranges), length)


def _number(digits: str) -> int:
    """§14.1.1: a first-pos, last-pos or suffix-length (1*DIGIT, matched already)."""
    return bounded_digits(digits, _FAR) or 0


def if_range_holds(value: str, entry: CachedResponse) -> bool:
    """§13.1.5: If-Range with an entity tag holds when it matches the stored one by strong
    comparison; with a date, when it equals the stored Last-Modified exactly. Otherwise
    the whole representation is sent (the client's copy is another one)."""
    value = value.strip()
    if value.startswith(('"', "W/", "w/")):
        tag, current = parse_etag(value), parse_etag(entry.etag)
        return tag is not None and current is not None and strong_match(tag, current)
    date = parse_http_date(value)
    last_modified = parse_http_date(entry.last_modified)
    if date is None or date != last_modified:
        return False
    # §13.1.5: a date that is no strong validator makes the condition false; §8.8.2.2: a
    # cache holds Last-Modified strong when its entry's Date is at least a second later
    # (two versions made within that second would share it).
    stored_date = parse_http_date(entry.get("date"))
    return stored_date is not None and stored_date >= date + 1


def content_range(first: int, last: int, length: int) -> str:
    """§14.4: Content-Range of one part."""
    return f"bytes {first}-{last}/{length}"


def multipart_byteranges(
    body: bytes, partial: Partial, content_type: str | None, boundary: str
) -> bytes:
    """§14.6: the parts of a multipart/byteranges body, each with its Content-Type and
    Content-Range; boundary is the caller's (random, so no part contains it)."""
    out: list[bytes] = []
    for first, last in partial.ranges:
        head = f"\r\n--{boundary}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        head += f"Content-Range: {content_range(first, last, partial.length)}\r\n\r\n"
        out += (head.encode("latin-1", "replace"), body[first:last + 1])
    out.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return b"".join(out)
