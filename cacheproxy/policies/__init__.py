"""Request and response policies applied around the cache: routes, CORS and Referer; and
forward mode's gate (`forward`: which hosts and ports a client may reach, loops) with the
PAC file that describes it to browsers (`pac`).

Sans I/O like `cacheproxy.http`: each module compiles its config section once into a small
frozen value and decides with plain functions. This module holds what they share: the host a
request names. How host patterns, path prefixes and the other entries are written (and what a
host pattern matches) is the config's: `cacheproxy.config.entries`.
"""

from __future__ import annotations

from cacheproxy.http.origins import ipv6_text


def request_host(authority: str) -> str:
    """The host of a Host field or URL authority: lowercase, without userinfo, port, IPv6
    brackets or a trailing dot ("Example.com.:8080" and "example.com" name one host)."""
    host = authority.strip().rpartition("@")[2].lower()
    if host.startswith("["):
        end = host.find("]")
        return ipv6_text(host[1:end]) if end > 0 else host
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.removesuffix(".")
