"""CORS from the server's side, as the Fetch standard's CORS protocol (§3.2) describes it.

The proxy answers CORS-preflight requests itself and adds the grant to other responses on the
way out, after the cache: the store never holds these fields, since they depend on the
requesting Origin. `CorsPolicy.enabled` is false while `allow_origins` is empty; the proxy
then does no CORS at all and the upstream's fields pass untouched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from cacheproxy.config.entries import WildcardOrigin, parse_origin_entry
from cacheproxy.http.abnf import TOKEN_RE
from cacheproxy.http.fields import split_list
from cacheproxy.http.origins import Origin, parse_origin

if TYPE_CHECKING:
    from cacheproxy.config import CorsConfig

Fields = list[tuple[str, str]]

# Fetch §2.2.1: methods a browser sends cross-origin without asking, so never refused here.
SAFELISTED_METHODS = frozenset({"GET", "HEAD", "POST"})
# Fetch §3.2.3: the fields of a CORS response; "override" mode drops the upstream's.
RESPONSE_FIELDS = frozenset({
    "access-control-allow-origin", "access-control-allow-credentials",
    "access-control-allow-methods", "access-control-allow-headers",
    "access-control-expose-headers", "access-control-max-age",
    "access-control-allow-private-network",
})
# Fetch §3.2.3 / PNA: a preflight's answer depends on these request fields.
_PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def parse_header_names(value: str | None) -> list[str] | None:
    """Access-Control-Request-Headers as lowercase names; None when one is not a token."""
    names = [name.lower() for name in split_list(value or "")]
    return names if all(TOKEN_RE.fullmatch(name) for name in names) else None


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """A compiled [cors] section. The default is disabled: no CORS by the proxy."""

    enabled: bool = False
    any_origin: bool = False
    null_origin: bool = False
    origins: frozenset[Origin] = frozenset()
    wildcards: tuple[WildcardOrigin, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()
    methods: tuple[str, ...] = ("GET", "HEAD", "POST")
    any_method: bool = False
    headers: tuple[str, ...] = ()  # as configured, sent in Access-Control-Allow-Headers
    mirror_headers: bool = False
    expose_headers: tuple[str, ...] = ()
    credentials: bool = False
    max_age: int = 600
    private_network: bool = False
    override: bool = True

    @classmethod
    def from_config(cls, config: CorsConfig) -> CorsPolicy:
        entries = [parse_origin_entry(e) for e in config.allow_origins]
        return cls(
            enabled=bool(entries),
            any_origin="*" in entries,
            null_origin="null" in entries,
            origins=frozenset(e for e in entries if isinstance(e, Origin)),
            wildcards=tuple(e for e in entries if isinstance(e, WildcardOrigin)),
            patterns=tuple(e for e in entries if isinstance(e, re.Pattern)),
            methods=tuple(m for m in config.allow_methods if m != "*"),
            any_method="*" in config.allow_methods,
            headers=tuple(h for h in config.allow_headers if h != "*"),
            mirror_headers="*" in config.allow_headers,
            expose_headers=config.expose_headers,
            credentials=config.allow_credentials,
            max_age=config.max_age,
            private_network=config.allow_private_network,
            override=config.mode == "override",
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """A preflight the proxy answers 204 with these fields."""

    fields: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Denial:
    """A preflight the proxy answers 403 without a grant; `reason` is for the log."""

    reason: str  # "cors-origin", "cors-method", "cors-header" or "cors-private-network"
    detail: str = ""  # what was refused: the origin, method or header names


def is_preflight(method: str, origin: str | None, request_method: str | None) -> bool:
    """Fetch §3.2.2: an OPTIONS request with Origin and Access-Control-Request-Method."""
    return method == "OPTIONS" and origin is not None and request_method is not None


def allows_origin(policy: CorsPolicy, origin: str | None) -> bool:
    """Is this Origin field value granted? "null" (sandboxed documents, file: URLs, redirects
    across origins) only by an exact "null" entry, never by "*", a wildcard or a regex."""
    if origin is None or not policy.enabled:
        return False
    if origin == "null":
        return policy.null_origin
    parsed = parse_origin(origin)
    if parsed is None:
        return False
    if policy.any_origin or parsed in policy.origins:
        return True
    for rule in policy.wildcards:
        if (rule.scheme, rule.port) == (parsed.scheme, parsed.port) and parsed.host.endswith(
            "." + rule.domain
        ):
            return True
    text = parsed.serialize()
    return any(pattern.fullmatch(text) for pattern in policy.patterns)


def _allow_origin(policy: CorsPolicy, origin: str) -> str:
    # Fetch §3.2.5 (CORS protocol and credentials): "*" cannot go with credentials.
    return "*" if policy.any_origin and not policy.credentials else origin


def preflight(
    policy: CorsPolicy,
    origin: str,
    request_method: str,
    request_headers: str | None = None,
    request_private_network: bool = False,
) -> Grant | Denial:
    """Fetch §3.2.3 (HTTP responses to a CORS-preflight request): the grant, or why not.

    `request_headers` is the Access-Control-Request-Headers value; `request_private_network`
    whether Access-Control-Request-Private-Network: true came (Private Network Access)."""
    if not allows_origin(policy, origin):
        return Denial("cors-origin", origin)
    method_ok = policy.any_method or request_method in policy.methods
    if not TOKEN_RE.fullmatch(request_method) or not (
        method_ok or request_method in SAFELISTED_METHODS
    ):
        return Denial("cors-method", request_method)
    requested = parse_header_names(request_headers)
    if requested is None:
        return Denial("cors-header", request_headers or "")
    allowed = {name.lower() for name in policy.headers}
    refused = [name for name in requested if not policy.mirror_headers and name not in allowed]
    if refused:
        return Denial("cors-header", ", ".join(refused))
    if request_private_network and not policy.private_network:
        return Denial("cors-private-network", origin)
    fields = [("Access-Control-Allow-Origin", _allow_origin(policy, origin))]
    if policy.credentials:
        fields.append(("Access-Control-Allow-Credentials", "true"))
    # "*" is mirrored rather than sent: with credentials a browser reads it as a name.
    methods = [request_method] if policy.any_method else list(policy.methods)
    if methods:
        fields.append(("Access-Control-Allow-Methods", ", ".join(methods)))
    headers = requested if policy.mirror_headers else list(policy.headers)
    if headers:
        fields.append(("Access-Control-Allow-Headers", ", ".join(headers)))
    fields.append(("Access-Control-Max-Age", str(policy.max_age)))
    vary = _PREFLIGHT_VARY
    if policy.private_network:
        vary += ", Access-Control-Request-Private-Network"
        if request_private_network:
            fields.append(("Access-Control-Allow-Private-Network", "true"))
    fields.append(("Vary", vary))
    return Grant(tuple(fields))


def _static_star(policy: CorsPolicy) -> bool:
    return policy.enabled and policy.any_origin and not policy.credentials


def actual_fields(policy: CorsPolicy, origin: str | None) -> Fields:
    """Fetch §3.2.3: the CORS fields of a response to a non-preflight request from `origin`;
    empty when the origin is not allowed (the browser then withholds the response). A static
    "*" goes on responses to requests without Origin too ("CORS protocol and HTTP caches")."""
    if origin is None and _static_star(policy):
        origin = "*"
    elif origin is None or not allows_origin(policy, origin):
        return []
    fields = [("Access-Control-Allow-Origin", _allow_origin(policy, origin))]
    if policy.credentials:
        fields.append(("Access-Control-Allow-Credentials", "true"))
    if policy.expose_headers:
        fields.append(("Access-Control-Expose-Headers", ", ".join(policy.expose_headers)))
    return fields


def varies_by_origin(policy: CorsPolicy, origin: str | None) -> bool:
    """Fetch §3.2 "CORS protocol and HTTP caches": when the answer depends on Origin, every
    response says Vary: Origin, also those with no grant, or a browser's or shared cache could
    hand one origin's answer to another. A static "*" needs no Vary; only the refused "null"
    differs from it."""
    if not policy.enabled:
        return False
    if _static_star(policy):  # "*" for all but a refused "null": that differs too
        return not policy.null_origin
    return True


def merge_vary(values: Iterable[str], token: str = "Origin") -> str:
    """One Vary value: the existing members with `token` added once (case-insensitively);
    "*" stays alone, since it already varies on everything (RFC 9110 §12.5.5)."""
    members = [member for value in values for member in split_list(value)]
    if "*" in members:
        return "*"
    if token.lower() not in {member.lower() for member in members}:
        members.append(token)
    return ", ".join(members)


def with_vary(pairs: Iterable[tuple[str, str]], token: str = "Origin") -> Fields:
    """`pairs` with their Vary fields merged into one, at the first one's place, naming `token`."""
    pairs = list(pairs)
    value = merge_vary((v for k, v in pairs if k.lower() == "vary"), token)
    out: Fields = []
    for name, field_value in pairs:
        if name.lower() != "vary":
            out.append((name, field_value))
        elif value:
            out.append((name, value))
            value = ""
    if value:
        out.append(("Vary", value))
    return out


def strip_upstream_cors(pairs: Iterable[tuple[str, str]]) -> Fields:
    """`pairs` without CORS response fields: in "override" mode the proxy's policy decides."""
    return [(k, v) for k, v in pairs if k.lower() not in RESPONSE_FIELDS]


class Outbound(NamedTuple):
    """What the outbound step does to a response: drop the upstream's CORS fields, add
    these, and merge Origin into Vary."""

    strip_upstream: bool
    add: Fields
    vary: bool


def outbound(policy: CorsPolicy, origin: str | None, upstream_has_cors: bool,
             upstream_grant_names_origin: bool = False) -> Outbound | None:
    """The decision for a non-preflight response (after the cache); None leaves it alone.
    "override" replaces the upstream's CORS fields; "passthrough" leaves them untouched and
    adds the proxy's grant only when the upstream sent no CORS field at all (and Vary: Origin
    when the upstream's Access-Control-Allow-Origin names an origin)."""
    if not policy.enabled:
        return None
    if not policy.override and upstream_has_cors:
        # The upstream's grant passes untouched; one naming an origin varies on it (Fetch
        # §3.2, CORS protocol and HTTP caches), which a cache further on must be told.
        return Outbound(False, [], upstream_grant_names_origin)
    return Outbound(policy.override, actual_fields(policy, origin),
                    varies_by_origin(policy, origin))


def with_cors(policy: CorsPolicy, origin: str | None, pairs: Iterable[tuple[str, str]]) -> Fields:
    """`pairs` with outbound()'s decision applied."""
    pairs = list(pairs)
    grant = [v for k, v in pairs if k.lower() == "access-control-allow-origin"]
    step = outbound(policy, origin, any(k.lower() in RESPONSE_FIELDS for k, _ in pairs),
                    any(v.strip() != "*" for v in grant))
    if step is None:
        return pairs
    if step.strip_upstream:
        pairs = strip_upstream_cors(pairs)
    pairs += step.add
    return with_vary(pairs, "Origin") if step.vary else pairs
