"""Which resource a request names, and whether it may go on (RFC 9112 §3.2, RFC 9110 §7.6.2)."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from cacheproxy.http.abnf import AUTHORITY_RE, bounded_digits

# §7.6.2 sets no ceiling on Max-Forwards; a bigger value is taken as 2^31, as RFC 9111 §1.2.2
# takes a delta-seconds, so the one sent on (2^31 - 1) still fits a signed 32-bit field.
MAX_FORWARDS = 2147483648


class Target(NamedTuple):
    authority: str   # host[:port] the request is for
    path: str        # path and query, origin-form
    absolute: bool   # the request line carried the authority (absolute-form)


_MEMO_CHARS = 255  # Hosts up to this long have their check remembered (a proxy sees a few)


def valid_authority(value: str) -> bool:
    return (_checked if len(value) <= _MEMO_CHARS else _authority)(value)


def _authority(value: str) -> bool:
    # RFC 3986 §3.2: anything else ("/", "?", "#", "@", spaces) in a Host would make the
    # cache key name another resource.
    return AUTHORITY_RE.fullmatch(value) is not None


_checked = lru_cache(maxsize=1024)(_authority)


def climbs_above_root(path: str) -> bool:
    """RFC 3986 §5.2.4: do the path's dot segments (with %XX decoded once, as origins and
    route matching decode "%2E" and "%2F") go above the root? Appended to an upstream
    URL's path ("/v2" + "/../admin"), such a path leaves it; nginx answers it 400."""
    path = path.partition("?")[0]
    if ".." not in path and "%" not in path:  # (nearly every target)
        return False
    depth = 0
    # IIS takes "\\" for "/", Tomcat "..;x" for "..": counted so too, the check refuses
    # more, never less.
    for segment in unquote(path, errors="surrogateescape").replace("\\", "/").split("/"):
        segment = segment.partition(";")[0]
        if segment == "..":
            depth -= 1
            if depth < 0:
                return True
        elif segment not in ("", "."):
            depth += 1
    return False


def request_target(raw: str, host: str | None) -> Target | None:
    """§3.2: the target's authority and path; None when the request must get 400.

    In absolute-form the request line's authority wins and Host is ignored (§3.2.2);
    otherwise Host names it (§3.2), and must be a valid authority (§3.2: 400). A path
    whose dot segments climb above the root is refused too (climbs_above_root)."""
    if raw.startswith("/"):
        # origin-form = absolute-path [ "?" query ]: a "#" is no part of it (RFC 3986 §3.5),
        # and kept it would let a target name another route's key ("…#private:…").
        if host is None or not valid_authority(host) or "#" in raw or climbs_above_root(raw):
            return None
        return Target(host, raw, False)
    try:
        parts = urlsplit(raw)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    authority = parts.netloc
    # RFC 9110 §4.2.4: userinfo in an http(s) URI is an error (it is used to make a
    # URI look like another site's); valid_authority refuses the "@" it would leave.
    if not valid_authority(authority):
        return None
    path = parts.path or "/"
    if climbs_above_root(path):
        return None
    # RFC 9110 §7.7: the query goes on as received, an empty one too ("/e?" is not "/e",
    # RFC 3986 §6.2.3), which urlsplit gives as "" like none at all.
    if parts.query or "?" in raw.partition("#")[0]:
        path = f"{path}?{parts.query}"
    return Target(authority, path, True)


def asks_whole_server(method: str, raw: str) -> bool:
    """§3.2.4: an OPTIONS whose absolute-form URI has an empty path and no query asks about
    the server as a whole; the last proxy sends it on as "OPTIONS *"."""
    if method != "OPTIONS" or raw.startswith("/") or "?" in raw:
        return False
    try:
        return urlsplit(raw).path == ""
    except ValueError:
        return False


def forwards_left(method: str, max_forwards: str | None) -> int | None:
    """§7.6.2: for OPTIONS and TRACE, the Max-Forwards to send on; 0 means answer
    here as the final recipient. None: the field does not apply (or is invalid)."""
    if max_forwards is None or method not in ("OPTIONS", "TRACE"):
        return None
    return bounded_digits(max_forwards.strip(), MAX_FORWARDS)
