"""Forward mode's gate, sans I/O: which absolute-form targets and CONNECT authorities a
client may reach ([forward] allow_hosts, deny_hosts, connect_ports), and which of them name
this proxy's own listener, a request that would come back to it (a loop).

The data plane asks before anything goes upstream, and answers a `Refused` with its status:

    access = ForwardAccess.from_config(config.forward, listen_host, bound_port)
    target_decision(access, "http", "example.com:8080")  # GET http://example.com:8080/x
    connect_decision(access, "example.com:443")          # CONNECT example.com:443

What a host name resolves to is checked by the caller before it connects, with
`address_refusal()` (deny_hosts naming the address, an address of this proxy: a loop), and
connected to by the addresses checked.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cacheproxy.config import ForwardConfig
from cacheproxy.config.entries import host_matches
from cacheproxy.http.origins import idna_ascii

# RFC 9110 §7.6.1 / RFC 9112 Appendix C.2.2: meant for this proxy, consumed here and never
# forwarded; http.fields.HOP_BY_HOP holds them, which end_to_end() removes.
CONSUMED_FIELDS = frozenset({"proxy-authorization", "proxy-connection"})

_DEFAULT_PORTS = {"http": 80, "https": 443}
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*",
                   re.ASCII)


@dataclass(frozen=True, slots=True)
class Allowed:
    host: str  # as compared and to connect to: lowercase, IDNA, IPv4 dotted, IPv6 bare
    port: int


@dataclass(frozen=True, slots=True)
class Refused:
    status: int  # 400 not a valid target, 403 not allowed, 508 a loop (RFC 5842 §7.2)
    reason: str  # one line, for the client and the log


ForwardDecision = Allowed | Refused


@dataclass(frozen=True, slots=True)
class ForwardAccess:
    """[forward] compiled with the address the proxy listens on."""

    allow_hosts: tuple[str, ...]
    deny_hosts: tuple[str, ...]
    connect_ports: frozenset[int]
    own_port: int
    own_hosts: frozenset[str]  # canonical hosts that reach the listener on own_port
    own_loopback: bool  # every loopback address, localhost and 0.0.0.0 reach it too
    # This process's other listeners (admin.listen): (port, hosts, loopback) as above. A
    # request sent there would come from this proxy, a loopback client, and so pass the
    # admin API's "loopback clients only" rule for whoever sent it through the proxy.
    others: tuple[tuple[int, frozenset[str], bool], ...] = ()
    # Where absolute-form requests may go (forward.http_ports): (first, last) ranges.
    http_ports: tuple[tuple[int, int], ...] = ((1, 65535),)

    @classmethod
    def from_config(cls, forward: ForwardConfig, listen_host: str, listen_port: int,
                    also: Iterable[str] = (),
                    other_listeners: Iterable[tuple[str, int]] = ()) -> ForwardAccess:
        """`listen_port` as bound (proxy.listen's port 0 is known only then); `also`: other
        names and addresses of this machine the caller knows (its host name, interfaces);
        `other_listeners`: (host, port) of this process's other listeners (admin.listen)."""
        also = tuple(also)
        port, own, own_loopback = _listener(listen_host, listen_port, also)
        others = tuple(_listener(h, p, also) for h, p in other_listeners if p)
        return cls(forward.allow_hosts, forward.deny_hosts, frozenset(forward.connect_ports),
                   port, own, own_loopback, others, forward.http_ports)


def _listener(listen_host: str, port: int, also: tuple[str, ...]
              ) -> tuple[int, frozenset[str], bool]:
    host = canonical_host(listen_host.strip("[]")) if listen_host not in _WILDCARDS \
        else listen_host
    own = {host, *(canonical_host(name) for name in also)} - {""}
    return port, frozenset(own), host in _WILDCARDS or _is_loopback(host)


def canonical_host(host: str) -> str:
    """The host as compared and connected to, or "" when it is none. IPv4 is read as a URL
    parser (and getaddrinfo) reads it, so "0x7f.1" and "2130706433" are 127.0.0.1 and
    cannot slip past a rule written for it (WHATWG URL, IPv4 parser)."""
    name = host.strip().lower().removesuffix(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if ":" in name:
        if "%" in name:  # a zone (RFC 6874): no part of an http authority, and "::1%1"
            return ""  # would slip past a rule for ::1 while getaddrinfo connects to it
        try:
            address = ipaddress.IPv6Address(name)
        except ValueError:
            return ""
        mapped = address.ipv4_mapped
        return str(mapped) if mapped is not None else address.compressed
    if not name.isascii():
        try:
            name = idna_ascii(name)  # as browsers (and the config's patterns) make it
        except UnicodeError:
            return ""
    # RFC 1035 §2.3.4: a label of 63 octets at most (getaddrinfo's IDNA step raises
    # UnicodeError, no OSError, for a longer one).
    if _NAME.fullmatch(name) is None or len(name) > 253 \
            or any(len(label) > 63 for label in name.split(".")):
        return ""
    if _ends_in_number(name):
        return _ipv4(name)
    return name


def split_authority(authority: str) -> tuple[str, int | None] | None:
    """(host, port) of "host", "host:port" or "[v6]:port" (port None when absent or empty,
    RFC 3986 §3.2.3); None for userinfo, a bad port or no host at all."""
    if "@" in authority or not authority:
        return None  # RFC 9110 §4.2.4: userinfo in an http(s) URI is an error
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, rest = authority[:end + 1], authority[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        host, _, port_text = authority.partition(":")
    if not host:
        return None
    if not port_text:
        return host, None
    if _PORT.fullmatch(port_text) is None or not 0 < int(port_text) <= 65535:
        return None
    return host, int(port_text)


def names_own_listener(access: ForwardAccess, host: str, port: int) -> bool:
    """Would a connection to host:port reach one of this proxy's own listeners?"""
    listeners = ((access.own_port, access.own_hosts, access.own_loopback), *access.others)
    name = ""
    for own_port, own_hosts, own_loopback in listeners:
        if port != own_port:
            continue
        name = name or canonical_host(host)
        if not name:
            return False
        if name in own_hosts:
            return True
        # Loopback names and addresses, and the unspecified ones (a connection to 0.0.0.0
        # or :: goes to this machine), reach a loopback or wildcard listener.
        if own_loopback and (name in _WILDCARDS or name == "localhost"
                             or name.endswith(".localhost") or _is_loopback(name)):
            return True
    return False


def names_this_server(access: ForwardAccess, scheme: str, authority: str) -> bool:
    """Does an absolute-form http target name the listener it came in on, by one of its
    own hosts or a loopback name? Then the proxy is that URI's origin server (RFC 9112
    §3.2.2: a server accepts the absolute form) and answers it as the origin-form request
    with that Host: the site behind it, not a forward request to itself (508). 0.0.0.0 and
    ::, a name that only resolves to it (known after a lookup) and admin.listen stay 508."""
    parts = split_authority(authority) if scheme == "http" else None
    if parts is None or (parts[1] or 80) != access.own_port:
        return False
    name = canonical_host(parts[0])
    if not name or name in _WILDCARDS:
        return False
    return name in access.own_hosts or (access.own_loopback and (
        name == "localhost" or name.endswith(".localhost") or _is_loopback(name)))


def listens_everywhere(access: ForwardAccess, port: int) -> bool:
    """Is one of this proxy's listeners on port bound to 0.0.0.0 or :: (every address of
    this machine reaches it, its LAN ones too, which no name or config here lists)?"""
    listeners = ((access.own_port, access.own_hosts), *((p, h) for p, h, _ in access.others))
    return any(own_port == port and not own_hosts.isdisjoint(_WILDCARDS)
               for own_port, own_hosts in listeners)


def host_refusal(access: ForwardAccess, host: str) -> Refused | None:
    """403 when deny_hosts names the host (it wins) or allow_hosts does not; `host` is
    canonical."""
    if any(_matches(pattern, host) for pattern in access.deny_hosts):
        return Refused(403, f"{host} is refused by this proxy (forward.deny_hosts)")
    if not any(_matches(pattern, host) for pattern in access.allow_hosts):
        return Refused(403, f"{host} is not among the hosts this proxy reaches "
                            "(forward.allow_hosts)")
    return None


def address_refusal(access: ForwardAccess, name: str, address: str, port: int,
                    local: bool = False) -> Refused | None:
    """What a name a client wrote resolved to, before it is connected to (Squid's `dst`
    rules, checked on addresses): deny_hosts naming the address refuses it (403), and an
    address of this proxy's own listeners is a loop (508), as when written. The name
    passed the gate already; allow_hosts is about names, not what they resolve to. A name
    for 0.0.0.0 or :: (a DNS blocklist's answer) would reach this machine: refused too.
    `local`: the address is one of this machine's (the caller finds out, see
    `listens_everywhere`), which a listener on 0.0.0.0 or :: is reached by."""
    host = canonical_host(address)
    if not host or host in ("0.0.0.0", "::"):
        return Refused(403, f"{name} resolves to {address}, no destination")
    if names_own_listener(access, host, port) or (local and listens_everywhere(access, port)):
        return _loop(name, port)
    if any(_matches(pattern, host) for pattern in access.deny_hosts):
        return Refused(403, f"{name} resolves to {host}, refused by this proxy "
                            "(forward.deny_hosts)")
    return None


def target_decision(access: ForwardAccess, scheme: str, authority: str) -> ForwardDecision:
    """An absolute-form request target's scheme and authority (RFC 9112 §3.2.2)."""
    default_port = _DEFAULT_PORTS.get(scheme.lower())
    if default_port is None:
        return Refused(400, f"a proxy request must be for http:// or https://, not {scheme}:")
    parts = split_authority(authority)
    host = canonical_host(parts[0]) if parts else ""
    if parts is None or not host:
        # RFC 9110 §4.2.1: an http URI with an empty host is invalid and rejected.
        return Refused(400, f"not a valid host and port: {authority!r}")
    return _decide(access, host, parts[1] or default_port)


def connect_decision(access: ForwardAccess, authority: str) -> ForwardDecision:
    """A CONNECT request's authority-form target (RFC 9110 §9.3.6: host and port, both)."""
    parts = split_authority(authority)
    host = canonical_host(parts[0]) if parts else ""
    if parts is None or not host or parts[1] is None:
        return Refused(400, f"CONNECT takes host:port, got {authority!r}")
    port = parts[1]
    if names_own_listener(access, host, port):
        return _loop(host, port)
    if port not in access.connect_ports:
        return Refused(403, f"CONNECT to port {port} is not allowed (forward.connect_ports)")
    return _unspecified(host) or host_refusal(access, host) or Allowed(host, port)


def _decide(access: ForwardAccess, host: str, port: int) -> ForwardDecision:
    if names_own_listener(access, host, port):
        return _loop(host, port)
    if not any(first <= port <= last for first, last in access.http_ports):
        # Squid's `http_access deny !Safe_ports`: the request's lines would be read as
        # another protocol's commands (an SMTP server on :25 takes a POST body's lines).
        return Refused(403, f"port {port} is not allowed (forward.http_ports)")
    return _unspecified(host) or host_refusal(access, host) or Allowed(host, port)


def _unspecified(host: str) -> Refused | None:
    """RFC 1122 §3.2.1.3, RFC 4291 §2.5.2: 0.0.0.0 and :: are never a destination. Linux
    connects them to this machine, past a deny_hosts rule for 127.0.0.1 or ::1."""
    if host in ("0.0.0.0", "::"):
        return Refused(400, f"{host} is no destination address")
    return None


def _loop(host: str, port: int) -> Refused:
    """`host` canonical, or a name as the caller shows it (an IPv6 literal bracketed)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return Refused(508, f"{shown}:{port} is this proxy itself; the request would loop")


def _matches(pattern: str, host: str) -> bool:
    return pattern == "*" or host_matches(pattern, host)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# --- IPv4 as the WHATWG URL parser reads it -----------------------------------------------------

_NUMBER = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+", re.ASCII)


def _ends_in_number(name: str) -> bool:
    last = name.split(".")[-1]
    return _NUMBER.fullmatch(last) is not None


def _ipv4(name: str) -> str:
    """The dotted quad of a host ending in a number, "" when it is no IPv4 address (and so,
    for a URL parser, no valid host)."""
    parts = name.split(".")
    if len(parts) > 4 or any(_NUMBER.fullmatch(part) is None for part in parts):
        return ""
    numbers = []
    for part in parts:
        if part[:2] in ("0x", "0X"):
            numbers.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if any(c in "89" for c in part):
                return ""
            numbers.append(int(part, 8))
        else:
            numbers.append(int(part))
    *first, last = numbers
    if any(n > 255 for n in first) or last >= 256 ** (5 - len(numbers)):
        return ""
    value = last + sum(n << (8 * (3 - i)) for i, n in enumerate(first))
    return str(ipaddress.IPv4Address(value))
