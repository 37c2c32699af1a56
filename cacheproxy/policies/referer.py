"""The Referer policy: hotlink protection on the way in, leak protection both ways.

Hotlink protection follows nginx's valid_referers (ngx_http_referer_module): requests for the
protected paths must come with a Referer that one entry accepts, or they get `on_invalid`;
the decision is made before the cache lookup. Leak protection trims the Referer forwarded
upstream (a session id in a URL must not travel on, as the seed notes warn) and sets a
Referrer-Policy response field (W3C Referrer Policy §4.1) for the pages the origin serves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

from cacheproxy.config.entries import (
    REFERRER_POLICIES,
    HostRule,
    host_matches,
    normalize_path,
    parse_referrer_policy,
    parse_valid_referer,
)
from cacheproxy.http.abnf import HTTP_URL_RE, bounded_digits
from cacheproxy.http.origins import serialize_origin
from cacheproxy.policies import request_host as host_of

if TYPE_CHECKING:
    from cacheproxy.config import OnInvalid, RefererConfig

Fields = list[tuple[str, str]]

_SCHEME = re.compile(r"https?://", re.IGNORECASE | re.ASCII)
_FORBIDDEN_BODY = b"Forbidden: this resource cannot be linked from another site.\n"


@dataclass(frozen=True, slots=True)
class RefererPolicy:
    """A compiled [referer] section."""

    protect_paths: tuple[str, ...] = ()
    allow_none: bool = True
    allow_blocked: bool = True
    allow_server_names: bool = True
    hosts: tuple[HostRule, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()
    on_invalid: OnInvalid | None = None  # None: a plain 403
    policy: str = "strict-origin-when-cross-origin"  # "" sets no Referrer-Policy
    policy_override: bool = False
    upstream_referer: str = "keep"  # "keep", "origin" or "strip"
    strip_params: frozenset[str] = frozenset(  # as _param_name reads them
        {"gsid", "sid", "session", "sessionid", "token", "access_token"})

    @classmethod
    def from_config(cls, config: RefererConfig) -> RefererPolicy:
        entries = [parse_valid_referer(e) for e in config.valid_referers]
        return cls(
            protect_paths=tuple(normalize_path(p) for p in config.protect_paths),
            allow_none="none" in entries,
            allow_blocked="blocked" in entries,
            allow_server_names="server_names" in entries,
            hosts=tuple(e for e in entries if isinstance(e, HostRule)),
            patterns=tuple(e for e in entries if isinstance(e, re.Pattern)),
            on_invalid=config.on_invalid,
            policy=", ".join(parse_referrer_policy(config.policy)),
            policy_override=config.policy_override,
            upstream_referer=config.upstream_referer,
            # (read as a parameter's name is: "token[]" is token, as PHP reads it)
            strip_params=frozenset(_param_name(p) for p in config.strip_params),
        )


@dataclass(frozen=True, slots=True)
class RefererDenial:
    """What a request with an invalid Referer is answered; `reason` is for the log."""

    status: int
    fields: tuple[tuple[str, str], ...]
    body: bytes
    reason: str = "referer-invalid"


def is_protected(policy: RefererPolicy, path: str) -> bool:
    """Is the Referer checked for this path (one of protect_paths is a prefix of it)?"""
    if not policy.protect_paths:
        return False
    normal = normalize_path(path)
    return any(normal.startswith(prefix) for prefix in policy.protect_paths)


def referer_valid(
    policy: RefererPolicy, referer: str | None, request_host: str, route_host_pattern: str = ""
) -> bool:
    """nginx valid_referers: "none" accepts no Referer; "blocked" one that does not start with
    http:// or https://; otherwise the host (port ignored) must match a host entry, with its
    path prefix if it has one, or server_names (the Host asked for, and the route's host
    pattern), or a ~regex searched caselessly in the text after the scheme."""
    if referer is None:
        return policy.allow_none
    scheme = _SCHEME.match(referer)
    if scheme is None:
        return policy.allow_blocked
    rest = referer[scheme.end():]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    host = host_of(authority)
    path = rest[len(authority):]
    if any(rule.matches(host, path) for rule in policy.hosts):
        return True
    if policy.allow_server_names and host and (
        host == host_of(request_host)
        or (route_host_pattern and host_matches(route_host_pattern, host))
    ):
        return True
    return any(pattern.search(rest) for pattern in policy.patterns)


def denial(policy: RefererPolicy) -> RefererDenial:
    """The answer on_invalid configures: 403, a 302 to a URL, or a 200 placeholder file. Each
    says Cache-Control: no-store (RFC 9111 §5.2.2.5) so no cache keeps it for valid requests."""
    answer = policy.on_invalid
    if answer is None or answer.status == 403:
        fields = (("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store"))
        return RefererDenial(403, fields, _FORBIDDEN_BODY)
    if answer.status == 302:
        return RefererDenial(302, (("Location", answer.location), ("Cache-Control", "no-store")),
                             b"")
    fields = (("Content-Type", answer.content_type), ("Cache-Control", "no-store"))
    return RefererDenial(200, fields, answer.body)


def refusal(
    policy: RefererPolicy,
    path: str,
    referer: str | None,
    request_host: str,
    route_host_pattern: str = "",
) -> RefererDenial | None:
    """The inbound gate, before the cache lookup: None lets the request on."""
    if not is_protected(policy, path) or referer_valid(
        policy, referer, request_host, route_host_pattern
    ):
        return None
    return denial(policy)


def forwarded_referer(policy: RefererPolicy, referer: str | None) -> str | None:
    """The Referer to send upstream (None: send none). The fragment is dropped (Fetch never
    sends one); "origin" trims to scheme://host[:port]/ (W3C Referrer Policy §8.4, default port
    omitted); "keep" leaves the URL byte-exact but for a user:password@ (§8.3) and the
    strip_params parameters, in the query and in the path (";jsessionid=")."""
    if referer is None or policy.upstream_referer == "strip":
        return None
    url = referer.split("#", 1)[0]
    if policy.upstream_referer == "origin":
        return _origin_of(url)
    url = _USERINFO.sub(r"\1", url, count=1)  # §8.3: never a username or password
    if not policy.strip_params:
        return url
    base, question, query = url.partition("?")
    path = _path_without(base, policy.strip_params)
    kept = _without(query, policy.strip_params) if question else query
    if kept == query:  # none stripped from the query: it stays as sent (an empty "?" too)
        return f"{path}{question}{query}"
    return f"{path}?{kept}" if kept else path


def redact(url: str | None, names: frozenset[str]) -> str | None:
    """`url` as the request log writes it: the values of the `names` query parameters
    replaced by REDACTED (a session id kept from the upstream must not sit in a log file
    either), and a user:password@ by REDACTED@ (§8.3: no Referer carries one, and none
    goes upstream; a client that sent one must not find its password in the log)."""
    if url is None:
        return None
    if "@" in url:
        url = _USERINFO.sub(r"\1REDACTED@", url, count=1)
    if not names or ("?" not in url and "#" not in url and ";" not in url):
        return url
    rest, hash_, fragment = url.partition("#")
    base, question, query = rest.partition("?")
    base = _path_redacted(base, names)
    if question:
        query = _redacted(query, names)
    # A fragment may hold parameters too (OAuth's #access_token=..., RFC 6749 §4.2.2).
    return f"{base}{question}{query}{hash_}{_redacted(fragment, names)}"


# Parameters are split on "&" and on ";" (HTML 4.01 §B.2.2; Perl's CGI, Rack before 3.0):
# a secret after either separator is one to some server.
_SEPARATORS = re.compile(r"([&;])")
_USERINFO = re.compile(r"^(https?://)[^/?#]*@", re.IGNORECASE | re.ASCII)
# RFC 3986 §3.3: a segment's ";name=value" parameters, where servlet containers keep the
# session id (Tomcat's "/cart;jsessionid=..."): a secret there is one as in the query.
_PATH_PARAM = re.compile(r";([^;/?#=]*)(=[^;/?#]*)?")


def _path_without(base: str, names: frozenset[str]) -> str:
    """`base` (the URL before its query) without the `names` path parameters."""
    if ";" not in base:
        return base
    return _PATH_PARAM.sub(lambda m: "" if _is_secret(m[1], names) else m[0], base)


def _path_redacted(base: str, names: frozenset[str]) -> str:
    if ";" not in base:
        return base
    return _PATH_PARAM.sub(
        lambda m: f";{m[1]}=REDACTED" if _is_secret(m[1], names) else m[0], base)


def _without(query: str, names: frozenset[str]) -> str:
    """`query` without the `names` parameters, the rest byte for byte with its separators."""
    pieces = _SEPARATORS.split(query)
    out: list[str] = []
    for i in range(0, len(pieces), 2):
        if _is_secret(pieces[i], names):
            continue
        if out:
            out.append(pieces[i - 1])
        out.append(pieces[i])
    return "".join(out)


def _redacted(query: str, names: frozenset[str]) -> str:
    pieces = _SEPARATORS.split(query)
    for i in range(0, len(pieces), 2):
        if _is_secret(pieces[i], names):
            pieces[i] = f"{pieces[i].partition('=')[0]}=REDACTED"
    return "".join(pieces)


def _param_name(part: str) -> str:
    """A parameter's name as the servers that read it do: %-decoded with "+" a space,
    caseless, spaces around it dropped (PHP drops leading ones), and the name an array or
    hash element belongs to ("token[]", "session[id]": PHP, Rack and Node's qs read those
    as token and session)."""
    return unquote_plus(part.partition("=")[0]).partition("[")[0].strip().lower()


def _is_secret(part: str, names: frozenset[str]) -> bool:
    name = _param_name(part)
    # PHP reads "." and " " in a name as "_": "access.token" is its access_token.
    return name in names or name.replace(".", "_").replace(" ", "_") in names


def _origin_of(url: str) -> str | None:
    match = HTTP_URL_RE.match(url)
    if match is None:
        return None
    scheme, host, port = match[1].lower(), match[2].lower(), match[3]
    number = bounded_digits(port, 65536) if port else None
    if number is not None and number > 65535:
        return None
    return serialize_origin(scheme, host, number) + "/"


def names_a_policy(values: Iterable[str]) -> bool:
    """Does a response's Referrer-Policy field (its values) set a policy? W3C Referrer
    Policy §8.1: a browser takes the last token it knows (Chromium caselessly) and, with
    none, its default, so a field of unknown tokens or an empty one sets none."""
    return any(token.strip().lower() in REFERRER_POLICIES
               for value in values for token in value.split(","))


def response_policy_fields(policy: RefererPolicy, upstream_has_policy: bool, *,
                           status: int = 200) -> Fields:
    """The Referrer-Policy field to add to a response (W3C Referrer Policy §4.1): none when
    policy is "", or when the upstream set its own (names_a_policy) and policy_override is
    false; on a 304, only when overriding. A 304 carries the RFC 9110 §15.4.5 fields, not
    the origin's policy, and it updates the receiver's stored copy (RFC 9111 §3.2, §4.3.4):
    ours there would replace a policy the origin set on the 200 in the browser's cache."""
    if not policy.policy or (upstream_has_policy and not policy.policy_override):
        return []
    if status == 304 and not policy.policy_override:
        return []
    return [("Referrer-Policy", policy.policy)]


def with_referrer_policy(policy: RefererPolicy, pairs: Iterable[tuple[str, str]]) -> Fields:
    """The outbound step: `pairs` with Referrer-Policy set as configured (the upstream's
    replaced when policy_override is true, kept otherwise)."""
    pairs = list(pairs)
    upstream = names_a_policy(v for k, v in pairs if k.lower() == "referrer-policy")
    added = response_policy_fields(policy, upstream)
    if added:
        pairs = [(k, v) for k, v in pairs if k.lower() != "referrer-policy"]
    return pairs + added
