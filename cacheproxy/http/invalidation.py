"""Invalidation after unsafe requests (RFC 9111 §4.4)."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from cacheproxy.http.origins import origin_of

# RFC 9110 §9.2.1's safe methods, and the others the HTTP Method Registry marks safe
# (RFC 7237 §3: PROPFIND, REPORT, SEARCH; RFC 10008: QUERY). Unknown, they would count as
# unsafe (§4.4): every 207 to a WebDAV or CalDAV client's PROPFIND or REPORT (Finder,
# Nextcloud and calendar clients send them all the time) removed its URL's stored GET
# response. Methods are case-sensitive (RFC 9110 §9.1): "propfind" is unknown.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "REPORT", "SEARCH",
                          "QUERY"})


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
    uris = [target]
    for ref in (location, content_location):
        key = same_origin_key(target, ref)
        if key is not None and key not in uris:
            uris.append(key)
    return uris


def same_origin_key(target: str, ref: str | None) -> str | None:
    """The cache key a URI reference (Location, Content-Location) names, resolved against
    the key target (RFC 3986 §5); None when it is empty, unparsable or of another origin
    (§4.4: "only if the host part is the same", a denial-of-service defence, §7.2)."""
    if not ref:
        return None
    uri, hash_, suffix = target.partition("#")
    try:
        absolute = urljoin(uri, ref.strip()).partition("#")[0]
        key_origin = _origin(absolute)
    except ValueError:
        return None
    if key_origin is None or key_origin != _origin(uri):
        return None
    parts = urlsplit(absolute)
    path = _without_dot_segments(parts.path)
    # Written after the key's own origin: a key named after an upstream URL with
    # credentials holds their user ("http://alice@api/..."), which the origin's
    # Location does not.
    base = urlsplit(uri)
    # An empty query stays one ("/e?" is not "/e", RFC 3986 §6.2.3), as keys keep it;
    # urlsplit (and urljoin) give "" for it and for none alike.
    empty_query = not parts.query and "?" in ref.partition("#")[0]
    query = f"?{parts.query}" if parts.query or empty_query else ""
    key = f"{base.scheme}://{base.netloc}" + (path or "/") + query
    return key + hash_ + suffix


# RFC 3986 §6.2.2.2: "%2E" is "." (unreserved); browsers resolve "%2e%2e" as ".." too
# (the URL Standard's double-dot segments).
_DOT = frozenset({".", "%2e"})
_DOUBLE_DOT = frozenset({"..", ".%2e", "%2e.", "%2e%2e"})


def _without_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 (remove_dot_segments), which §5.2.2 applies to a reference with a
    scheme as well: urljoin resolves a relative "/x/../y" but leaves "http://h/x/../y" as
    it is, a key no request a browser sends for that URI has ("/y")."""
    if "." not in path and "%" not in path:  # (nearly every reference)
        return path
    out: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        lowered = segment.lower()
        if lowered in _DOUBLE_DOT:
            if len(out) > 1:
                out.pop()
        elif lowered not in _DOT:
            out.append(segment)
            continue
        if last:  # "/a/.." is "/", "/a/." is "/a/"
            out.append("")
    return "/".join(out)


def as_derived_from(keys: list[str] | tuple[str, ...], key: str, twin: str) -> list[str]:
    """The keys invalidated_uris derived from key (its target, Location, Content-Location),
    as derived from twin, the same URL's key under the other scheme: behind a trusted TLS
    front both hold an entry of the one resource the unsafe request changed (§4.4)."""
    base, suffix = _base_and_suffix(key)
    twin_base, twin_suffix = _base_and_suffix(twin)
    derived = []
    for k in keys:
        uri, hash_, rest = k.partition("#")
        if hash_ + rest == suffix and uri.startswith(base):
            derived.append(twin_base + uri[len(base):] + twin_suffix)
    return derived


def _base_and_suffix(key: str) -> tuple[str, str]:
    """A key's "scheme://authority" and its own suffix ("#https", "#private:name")."""
    uri, hash_, suffix = key.partition("#")
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}", hash_ + suffix


def _origin(uri: str) -> str | None:
    """The origin a URI's key starts with (RFC 6454 §4), as primary_key writes it."""
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc:
        return None
    return origin_of(parts.scheme.lower(), parts.netloc.rpartition("@")[2])
