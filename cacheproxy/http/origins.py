"""Origins: the scheme, host and port a URL belongs to, with the scheme's default port left
out (RFC 6454 §4-§6.2, the URL Standard's origin). The cache key, the CORS check and the
Referer trimming all name an origin this way."""

from __future__ import annotations

from functools import lru_cache
from typing import Final

# URL Standard §4.1 (special schemes): their default ports, which an origin leaves out.
DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}


def default_port(scheme: str) -> int | None:
    """The port a lowercase scheme implies; None for a scheme without one."""
    return DEFAULT_PORTS.get(scheme)


def serialize_origin(scheme: str, host: str, port: int | None) -> str:
    """RFC 6454 §6.2: scheme "://" host [":" port], the default port left out. `host` is
    written as in a URL: an IPv6 literal in brackets."""
    if port is None or port == default_port(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


@lru_cache(maxsize=1024)
def origin_of(scheme: str, host: str) -> str:
    """scheme://host[:port] of a request's authority (Host), lower-cased, the scheme's
    default port left out; any other port is kept as written."""
    host = host.lower()
    if host.startswith("["):  # IPv6 literal: the port follows "]:"
        name, _, port = host.partition("]")
        name, port = name + "]", port.removeprefix(":")
    else:
        name, _, port = host.partition(":")
    if port and port == str(default_port(scheme)):
        host = name
    return f"{scheme}://{host}"
