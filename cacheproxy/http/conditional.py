"""Answering a client's conditional request from storage (RFC 9111 §4.3.2;
RFC 9110 §13.1.1, §13.1.3, §13.2.2, §15.4.5)."""

from __future__ import annotations

from cacheproxy.http.dates import parse_http_date
from cacheproxy.http.stored import CachedResponse
from cacheproxy.http.validators import none_match, parse_etag, parse_etag_list, strong_match

# RFC 9110 §15.4.5: the fields a 304 carries when a 200 would have had them.
_NOT_MODIFIED_FIELDS = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "vary"}
)


def is_not_modified(
    entry: CachedResponse, method: str, if_none_match: str | None, if_modified_since: str | None
) -> bool:
    """True when the client's condition says its copy is current: answer 304."""
    if method not in ("GET", "HEAD") or entry.status != 200:
        return False
    if if_none_match is not None:  # §13.2.2: If-None-Match takes precedence
        return none_match(if_none_match, entry.etag)
    if if_modified_since is not None:
        since = parse_http_date(if_modified_since)
        # §13.1.3: an invalid date is ignored; unmodified when not changed since.
        return since is not None and entry.modified_at <= since
    return False


def precondition_fails(
    entry: CachedResponse, if_match: str | None, if_unmodified_since: str | None
) -> bool:
    """RFC 9110 §13.2.2 steps 1-2 against a stored response: True when If-Match (strong
    comparison, §13.1.1) or, without it, If-Unmodified-Since (§13.1.4) is false: 412.
    §13.2.1: only for a response that would be a 2xx."""
    if not 200 <= entry.status < 300:
        return False
    if if_match is not None:
        tags = parse_etag_list(if_match)
        if tags is None:  # "*": there is a current representation
            return False
        current = parse_etag(entry.etag)
        return current is None or not any(strong_match(current, t) for t in tags)
    if if_unmodified_since is not None:
        since = parse_http_date(if_unmodified_since)
        modified = parse_http_date(entry.last_modified)
        # §13.1.4: an invalid date, or no modification date, and the field is ignored.
        return since is not None and modified is not None and modified > since
    return False


def not_modified_fields(entry: CachedResponse) -> list[tuple[str, str]]:
    pairs = entry.header_pairs()
    fields = [(k, v) for k, v in pairs if k.lower() in _NOT_MODIFIED_FIELDS]
    if entry.etag is None and entry.last_modified:
        # §15.4.5: Last-Modified helps a client update when there is no ETag.
        fields.append(("Last-Modified", entry.last_modified))
    return fields
