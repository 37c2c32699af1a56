"""Invalidation after unsafe requests (RFC 9111 §4.4)."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 §9.2.1


def invalidated_uris(
    method: str, status: int, target: str, location: str | None, content_location: str | None
) -> list[str]:
    """§4.4: a non-error response to an unsafe method invalidates the target URI,
    and Location / Content-Location when they share its origin."""
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    uris = [target]
    origin = urlsplit(target)[:2]
    for ref in (location, content_location):
        if not ref:
            continue
        try:
            absolute = urljoin(target, ref.strip())
        except ValueError:
            continue
        if urlsplit(absolute)[:2] == origin and absolute not in uris:
            uris.append(absolute)
    return uris
