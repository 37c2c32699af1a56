"""Origins: the scheme, host and port a URL belongs to, with the scheme's default port left
out (RFC 6454 §4-§6.2, the URL Standard's origin). The cache key, the CORS check and the
Referer trimming all name an origin this way; host names are compared as `parse_hostname`
gives them."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Final, NamedTuple

import idna

from cacheproxy.http.abnf import BRACKETED_IPV6_RE, HOSTNAME_RE, ORIGIN_RE

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
    default port (or an empty one) left out; any other port is kept as written."""
    host = host.lower()
    if host.startswith("["):  # IPv6 literal: the port follows "]:"
        name, _, after = host.partition("]")
        # One address, one key: RFC 5952's form, as browsers send it ("[0:0::1]" is "[::1]").
        name = f"[{ipv6_text(name[1:])}]"
        host, port = name + after, after.removeprefix(":")
    else:
        name, _, port = host.partition(":")
    if not port or port == str(default_port(scheme)):
        host = name  # (RFC 3986 §6.2.3: an empty port is the default one, "host:" is "host")
    return f"{scheme}://{host}"


def keyed_authority(scheme: str, host: str) -> str:
    """The authority as the cache key names it (origin_of's, without the scheme): what
    goes upstream as Host or X-Forwarded-Host, so that the answer stored under the key
    was made for the spelling every request sharing that key is sent with (RFC 9110
    §4.2.3: "SHOP.example:80" and "shop.example" are one URI; an origin need not agree)."""
    return origin_of(scheme, host)[len(scheme) + 3:]


_HOST_USAGE = "expected a host name such as example.com or *.example.com, without a port"


def idna_ascii(name: str) -> str:
    """A host name with non-ASCII labels as browsers send it (the WHATWG URL standard:
    UTS #46, non-transitional): "straße.de" is xn--strae-oqa.de, where Python's "idna"
    codec (IDNA 2003) makes it strasse.de, another domain. A label the idna package's
    stricter IDNA 2008 check refuses (a symbol) is encoded by the codec, whose answer is
    the same for every label without ß, ς or a joiner. UnicodeError: not a host name."""
    labels = []
    for label in name.split("."):
        if label.isascii():
            labels.append(label.lower())
            continue
        try:
            labels.append(idna.encode(label, uts46=True, transitional=False).decode("ascii"))
        except idna.IDNAError:
            labels.append(label.lower().encode("idna").decode("ascii"))
    return ".".join(labels)


def parse_hostname(value: str) -> str:
    """A host name as compared: lowercase, IDNA (punycode) for non-ASCII, IPv6 unbracketed."""
    host = value.strip().lower()
    if not host.isascii():
        try:
            host = idna_ascii(host)
        except UnicodeError:
            raise ValueError(f"not a valid international host name: {value!r}") from None
    if (ipv6 := BRACKETED_IPV6_RE.fullmatch(host)) is not None and ipv6[1].count(":") >= 2:
        return ipv6_text(ipv6[1])
    if ":" in host:
        raise ValueError(f"{_HOST_USAGE}; got {value!r}")
    if HOSTNAME_RE.fullmatch(host) is None:
        raise ValueError(f"{_HOST_USAGE}; got {value!r}")
    return host


def ipv6_text(address: str) -> str:
    """An IPv6 address as compared: RFC 5952's compressed form, which browsers send (the
    URL Standard serializes it so); "0:0::1" and "::1" are one address (RFC 4291 §2.2).
    Text that is no address is returned as it is."""
    try:
        return ipaddress.IPv6Address(address).compressed
    except ValueError:
        return address


class Origin(NamedTuple):
    """A tuple origin (HTML §7.5): scheme and host lowercase, a default port as None."""

    scheme: str
    host: str
    port: int | None

    def serialize(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return serialize_origin(self.scheme, host, self.port)


def parse_origin(text: str) -> Origin | None:
    """The origin an Origin field names; None for "null" and for anything not an origin.
    Fetch compares origins as tuples: "https://A.com:443" is "https://a.com"."""
    match = ORIGIN_RE.fullmatch(text)
    if match is None or "*" in match[2]:
        return None
    try:
        host = parse_hostname(match[2])
    except ValueError:
        return None
    scheme = match[1].lower()
    port = None if match[3] is None else int(match[3])
    if port is not None and port > 65535:
        return None
    return Origin(scheme, host, None if port == default_port(scheme) else port)
