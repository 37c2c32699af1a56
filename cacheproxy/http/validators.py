"""Entity tags and their comparison (RFC 9110 §8.8.3, §13.1.1, §13.1.2)."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from cacheproxy.http.abnf import ETAG_LIST_MEMBER_RE


class ETag(NamedTuple):
    weak: bool
    opaque: str  # the opaque-tag, quotes included


# Tags longer than this are parsed each time rather than remembered (as dates.py's
# _MEMO_CHARS: the memo holds its keys, and a tag is up to a whole field line).
_MEMO_CHARS = 128


def parse_etag(value: str | None) -> ETag | None:
    """One entity-tag; an unquoted tag (seen in the wild) is taken as its own opaque-tag.
    Remembered (an ETag is immutable): every 304 parses its tag (revalidation.selects),
    and the same few tags come again and again; parsing one is some 6,000 instructions."""
    if value is not None and len(value) > _MEMO_CHARS:
        return _parse_etag.__wrapped__(value)
    return _parse_etag(value)


@lru_cache(maxsize=1024)
def _parse_etag(value: str | None) -> ETag | None:
    if not value:
        return None
    value = value.strip()
    weak = value[:2] in ("W/", "w/")
    if weak:
        value = value[2:].strip()
    # §8.8.3: etagc excludes SP and HTAB but not ",", which only an unquoted tag can't hold.
    if not value or " " in value or "\t" in value:
        return None
    if value[0] != '"':
        if "," in value:
            return None
        value = f'"{value}"'
    elif len(value) < 2 or value[-1] != '"':
        return None
    return ETag(weak, value)


def parse_etag_list(value: str) -> list[ETag] | None:
    """If-None-Match / If-Match members (§13.1.1); None stands for "*"."""
    if value.strip() == "*":
        return None
    members = ETAG_LIST_MEMBER_RE.findall(value)
    return [tag for item in members if (tag := parse_etag(item)) is not None]


def weak_match(a: ETag, b: ETag) -> bool:
    """§8.8.3.2: weak comparison ignores the weakness indicator."""
    return a.opaque == b.opaque


def strong_match(a: ETag, b: ETag) -> bool:
    """§8.8.3.2: strong comparison needs both tags strong and equal."""
    return not a.weak and not b.weak and a.opaque == b.opaque


def none_match(if_none_match: str, etag: str | None) -> bool:
    """True when If-None-Match's condition is false, i.e. the tag matches (§13.1.2)."""
    tags = parse_etag_list(if_none_match)
    if tags is None:
        return True  # "*" matches any current representation
    current = parse_etag(etag)
    return current is not None and any(weak_match(current, t) for t in tags)
