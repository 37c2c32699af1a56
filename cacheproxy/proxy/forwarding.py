"""Which fields go upstream and back (RFC 9110 §7.6: Via, hop-by-hop; X-Forwarded-*)."""

from __future__ import annotations

from dataclasses import dataclass

from cacheproxy.http.fields import end_to_end
from cacheproxy.http.revalidation import CLIENT_CONDITIONALS

_FORWARDED = frozenset({"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                        "max-forwards"})


@dataclass(frozen=True, slots=True)
class ForwardPolicy:
    via: str                 # pseudonym (RFC 9110 §7.6.3)
    upstream_host: str       # Host to send when rewriting
    pass_host: bool          # send the client's Host instead
    x_forwarded_for: bool
    x_forwarded_proto: bool
    x_forwarded_host: bool


def via_value(version: tuple[int, int], pseudonym: str) -> str:
    """§7.6.3: protocol version (name omitted for HTTP) and the received-by pseudonym."""
    major, minor = version
    return f"{major}.{minor} {pseudonym}"


def request_fields(
    pairs: list[tuple[str, str]],
    *,
    policy: ForwardPolicy,
    version: tuple[int, int],
    client_ip: str | None,
    scheme: str,
    strip_conditionals: bool = False,
    extra: list[tuple[str, str]] | None = None,
    host: str | None = None,
    max_forwards: int | None = None,
) -> list[tuple[str, str]]:
    """The request fields to send upstream. host: the authority of an absolute-form
    request, which replaces Host (RFC 9112 §3.2.2); max_forwards: what the client
    sent, decremented here (RFC 9110 §7.6.2)."""
    fields = end_to_end(pairs)
    if host is None:
        host = next((v for k, v in fields if k.lower() == "host"), None)
    prior_xff = [v for k, v in fields if k.lower() == "x-forwarded-for"]
    prior_mf = [(k, v) for k, v in fields if k.lower() == "max-forwards"]
    drop = _FORWARDED | (CLIENT_CONDITIONALS if strip_conditionals else frozenset())
    out = [(k, v) for k, v in fields if k.lower() not in drop]
    out.append(("Host", host if policy.pass_host and host else policy.upstream_host))
    if policy.x_forwarded_for and client_ip:
        out.append(("X-Forwarded-For", ", ".join([*prior_xff, client_ip])))
    elif prior_xff:
        out.extend(("X-Forwarded-For", v) for v in prior_xff)
    if policy.x_forwarded_proto:
        out.append(("X-Forwarded-Proto", scheme))
    if policy.x_forwarded_host and host:
        out.append(("X-Forwarded-Host", host))
    if max_forwards is not None:
        out.append(("Max-Forwards", str(max_forwards - 1)))
    else:
        out.extend(prior_mf)  # only OPTIONS and TRACE count it down
    out.append(("Via", via_value(version, policy.via)))
    if extra:
        out.extend(extra)
    return out
