"""The proxy auto-config file (PAC) for forward mode, sans I/O: a browser that loads it
sends the hosts forward.allow_hosts names (less deny_hosts) to this proxy and goes
DIRECT to every other, so what the proxy would refuse never reaches it."""

from __future__ import annotations

import json

from cacheproxy.http.origins import ipv6_text
from cacheproxy.policies.forward import canonical_host, split_authority

CONTENT_TYPE = "application/x-ns-proxy-autoconfig"
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})

# FindProxyForURL(url, host) is the PAC interface browsers call; dnsDomainIs() is one of
# the functions they provide to it. Patterns are written as forward.allow_hosts keeps them.
_SCRIPT = """\
// cacheproxy forward mode: the hosts forward.allow_hosts names (less forward.deny_hosts)
// go through the proxy, every other one DIRECT.
var PROXY = {proxy};
var ALLOW = {allow};
var DENY = {deny};
var OWN = {own};

function cacheproxyMatches(host, patterns) {{
  for (var i = 0; i < patterns.length; i++) {{
    var pattern = patterns[i];
    if (pattern === "*" || pattern === host) return true;
    // "*.example.com": its subdomains, not example.com itself.
    if (pattern.substring(0, 2) === "*." && dnsDomainIs(host, pattern.substring(1))) return true;
  }}
  return false;
}}

function FindProxyForURL(url, host) {{
  host = host.toLowerCase();
  if (host.charAt(0) === "[") host = host.substring(1, host.length - 1);
  if (host.charAt(host.length - 1) === ".") host = host.substring(0, host.length - 1);
  // The proxy's own pages (dashboard, admin API) are fetched from it directly.
  for (var i = 0; i < OWN.length; i++) {{
    if (url.substring(0, OWN[i].length).toLowerCase() === OWN[i]) return "DIRECT";
  }}
  if (cacheproxyMatches(host, DENY) || !cacheproxyMatches(host, ALLOW)) return "DIRECT";
  return PROXY;
}}
"""


def pac_proxy_address(listen_host: str, listen_port: int, host_field: str, *,
                      on_listener: bool, local_port: int | None = None) -> str:
    """The host:port a browser is to use. proxy.listen's host, or, when that is a wildcard
    (0.0.0.0, ::), the host the PAC was fetched by, which the browser reaches us at; and
    then, when the PAC is served on the proxy's own listener (no admin.listen), that
    field's port too (a port mapped by docker differs from the one listened on).
    `local_port`: the port bound (proxy.listen's port 0). ValueError without a usable host."""
    port = listen_port or local_port or 0
    # RFC 5952: an IPv6 address compressed, as the URLs the browser compares are.
    host = ipv6_text(listen_host.strip("[]"))
    if host in _WILDCARDS:  # ("0:0::0" too)
        parts = split_authority(host_field.strip())
        host = canonical_host(parts[0]) if parts else ""
        if parts is None or not host:
            raise ValueError(f"no host to name the proxy by in Host {host_field!r}")
        if on_listener:
            port = parts[1] or 80
    if not port:
        raise ValueError("the proxy's port is not known")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def pac_script(proxy: str, allow_hosts: tuple[str, ...], deny_hosts: tuple[str, ...],
               admin: str | None = None) -> str:
    """The PAC file for a proxy at `proxy` (host:port). JSON literals are JavaScript ones,
    so the patterns go in quoted whatever they hold. `admin`: admin.listen's host:port as
    the browser reached it, whose pages go DIRECT too (the proxy never reaches it: 508)."""
    own = []
    for address in (proxy, admin) if admin else (proxy,):
        own.append(f"http://{address}/".lower())
        if address.endswith(":80"):
            own.append(f"http://{address.rpartition(':')[0]}/".lower())
    return _SCRIPT.format(proxy=json.dumps(f"PROXY {proxy}"), allow=json.dumps(allow_hosts),
                          deny=json.dumps(deny_hosts), own=json.dumps(own))
