"""Invalidation after unsafe requests (RFC 9111 §4.4)."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from cacheproxy.http.origins import origin_of

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 §9.2.1


def invalidated_uris(
    method: str, status: int, target: str, location: str | None, content_location: str | None
) -> list[str]:
    """§4.4: a non-error response to an unsafe method invalidates the target URI,
    and Location / Content-Location when they share its origin. target is the cache key:
    the URIs derived from it are written as keys are (scheme and host lower-cased, the
    default port left out, no fragment) and keep the key's own suffix (a private route's
    "#private:name"), so that they name the entries they mean."""
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    uri, hash_, suffix = target.partition("#")
    suffix = hash_ + suffix
    uris = [target]
    origin = _origin(uri)
    for ref in (location, content_location):
        if not ref:
            continue
        try:
            absolute = urljoin(uri, ref.strip()).partition("#")[0]
            key_origin = _origin(absolute)
        except ValueError:
            continue
        if key_origin is None or key_origin != origin:
            continue
        parts = urlsplit(absolute)
        key = key_origin + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if key + suffix not in uris:
            uris.append(key + suffix)
    return uris


def _origin(uri: str) -> str | None:
    """The origin a URI's key starts with (RFC 6454 §4), as primary_key writes it."""
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc:
        return None
    return origin_of(parts.scheme.lower(), parts.netloc.rpartition("@")[2])
