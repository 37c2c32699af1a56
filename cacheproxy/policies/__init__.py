"""Request and response policies applied around the cache: routes, CORS and Referer.

Sans I/O like `cacheproxy.http`: each module compiles its config section once into a small
frozen value and decides with plain functions. This module holds what they share: host
patterns and the path form that prefixes are matched against.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from cacheproxy.http.abnf import BRACKETED_IPV6_RE, HOSTNAME_RE

_HOST_USAGE = "expected a host name such as example.com or *.example.com, without a port"


def parse_hostname(value: str) -> str:
    """A host name as compared: lowercase, IDNA (punycode) for non-ASCII, IPv6 unbracketed."""
    host = value.strip().lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"not a valid international host name: {value!r}") from None
    if (ipv6 := BRACKETED_IPV6_RE.fullmatch(host)) is not None and ipv6[1].count(":") >= 2:
        return ipv6[1]
    if ":" in host:
        raise ValueError(f"{_HOST_USAGE}; got {value!r}")
    if HOSTNAME_RE.fullmatch(host) is None:
        raise ValueError(f"{_HOST_USAGE}; got {value!r}")
    return host


def parse_host_pattern(value: str) -> str:
    """"" (any host), an exact host, or "*.domain" (any subdomain of domain, not domain)."""
    if value == "":
        return ""
    if value.startswith("*."):
        return "*." + parse_hostname(value[2:])
    if "*" in value:
        raise ValueError(f"a wildcard is only allowed as a leading '*.', got {value!r}")
    return parse_hostname(value)


def request_host(authority: str) -> str:
    """The host of a Host field or URL authority: lowercase, without userinfo, port, IPv6
    brackets or a trailing dot ("Example.com.:8080" and "example.com" name one host)."""
    host = authority.strip().rpartition("@")[2].lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.removesuffix(".")


def host_matches(pattern: str, host: str) -> bool:
    """Does a parsed host pattern match a `request_host()`?"""
    if pattern == "":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def host_pattern_covers(wider: str, narrower: str) -> bool:
    """Does every host `narrower` matches also match `wider` (both parsed patterns)?"""
    if wider == "" or wider == narrower:
        return True
    if narrower == "" or not wider.startswith("*."):
        return False
    return narrower.endswith(wider[1:])  # "*.a.example.com" or "a.example.com"




def normalize_path(path: str) -> str:
    """The path a prefix is matched against, as nginx matches locations: query dropped,
    every %XX decoded once (UTF-8; "%2F" too, since origins decode it to "/"), "//"
    merged (merge_slashes) and dot segments removed (RFC 3986 §5.2.4). So "/%69mages/",
    "/images%2Fa.png", "//images/" or "/x/../images/" cannot slip past a "/images/" rule,
    and "/bilder/über/" matches the "/bilder/%C3%BCber/" a browser sends."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    path = unquote(path, encoding="utf-8", errors="surrogateescape")
    out: list[str] = []
    segments = re.sub(r"/{2,}", "/", path).split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        else:
            out.append(segment)
    result = "/".join(out)
    return result if result.startswith("/") else "/" + result
