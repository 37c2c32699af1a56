"""The entries of [cors], [referer] and [[routes]] as they are written: host patterns, path
prefixes, allowed origins, valid_referers and Referrer-Policy tokens.

The config loader checks each entry with these parsers, so a mistake stops the start naming
its key; the policies parse them again into the values they match with. Nothing here imports
the policies: the dependency goes one way, policies -> config.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple
from urllib.parse import unquote

from cacheproxy.config.public_suffixes import public_suffixes
from cacheproxy.http.abnf import ORIGIN_RE
from cacheproxy.http.origins import Origin, parse_hostname, parse_origin

# --- host patterns and path prefixes ([[routes]] host and path_prefix, referer entries) ----


def parse_host_pattern(value: str) -> str:
    """"" (any host), an exact host, or "*.domain" (any subdomain of domain, not domain)."""
    if value == "":
        return ""
    if value.startswith("*."):
        try:
            return "*." + parse_hostname(value[2:])
        except ValueError:  # (its message would name the domain alone, without the "*.")
            raise ValueError(f"expected a host name after '*.', got {value!r}") from None
    if "*" in value:
        raise ValueError(f"a wildcard is only allowed as a leading '*.', got {value!r}")
    return parse_hostname(value)


def parse_forward_host(value: str) -> str:
    """A [forward] allow_hosts / deny_hosts entry: "*" (every host), an exact host or IP
    address, or "*.domain" (any subdomain of domain, not domain); IPv6 with or without
    brackets. Lowercase and IDNA, as request hosts are compared."""
    if value.strip() == "*":
        return "*"
    text = value.strip()
    if not text:
        raise ValueError("an empty host; write '*' for every host")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            address = ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError(f"expected a host, *.domain or '*', without a port; got {value!r}"
                             ) from None
        # RFC 4291 §2.5.5.2: "::ffff:10.0.0.1" is 10.0.0.1, as request hosts are compared
        # (policies.forward.canonical_host); kept mapped, the entry would match nothing.
        mapped = address.ipv4_mapped
        return str(mapped) if mapped is not None else address.compressed
    return parse_host_pattern(text)


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
    merged (merge_slashes) and dot segments removed (RFC 3986 §5.2.4; "\\" and "..;x" read as
    IIS and Tomcat read them). So "/%69mages/", "/images%2Fa.png", "//images/",
    "/x/../images/" or "/x/..;/images/" cannot slip past a "/images/" rule,
    and "/bilder/über/" matches the "/bilder/%C3%BCber/" a browser sends."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    path = unquote(path, encoding="utf-8", errors="surrogateescape")
    # As http/target.climbs_above_root reads them: IIS takes "\" for "/", Tomcat "..;x"
    # for ".." (the path-parameter traversal): "/x/..;/images/" is under "/images/".
    path = path.replace("\\", "/")
    out: list[str] = []
    segments = re.sub(r"/{2,}", "/", path).split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        dots = segment.partition(";")[0] if ";" in segment else segment
        if dots == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        elif dots == ".":
            if last:
                out.append("")
        else:
            out.append(segment)
    result = "/".join(out)
    return result if result.startswith("/") else "/" + result


# --- [cors] allow_origins ------------------------------------------------------------------


class WildcardOrigin(NamedTuple):
    """scheme://*.domain[:port]: any subdomain of domain (not domain itself)."""

    scheme: str
    domain: str
    port: int | None


OriginEntry = str | Origin | WildcardOrigin | re.Pattern[str]  # str: "*" or "null"


def parse_origin_entry(entry: str) -> OriginEntry:
    """One allow_origins entry: "*", "null", an origin, "scheme://*.domain[:port]" or
    "~regex" (matched against the whole serialized origin); ValueError says what is wrong."""
    if entry in ("*", "null"):
        return entry
    if entry.startswith("~"):
        try:
            return re.compile(entry[1:])
        except re.error as exc:
            raise ValueError(f"bad regular expression {entry!r}: {exc}") from None
    match = ORIGIN_RE.fullmatch(entry)
    if match is None:
        raise ValueError(
            "expected an origin scheme://host[:port] with no path, such as "
            f"https://app.example.com, or '*', 'null', 'https://*.example.com', '~regex'; "
            f"got {entry!r}")
    if "*" not in match[2]:
        origin = parse_origin(entry)
        if origin is None:
            raise ValueError(f"not a valid origin: {entry!r}")
        return origin
    if not match[2].startswith("*.") or "*" in match[2][2:]:
        raise ValueError(f"a wildcard origin is written scheme://*.domain[:port], got {entry!r}")
    base = parse_origin(entry.replace("*.", "", 1))
    if base is None:
        raise ValueError(f"not a valid origin: {entry!r}")
    return WildcardOrigin(base.scheme, base.host, base.port)


# --- [referer] valid_referers and policy -----------------------------------------------------

# W3C Referrer Policy §3: the policy tokens (the empty string is "no policy").
REFERRER_POLICIES = frozenset({
    "no-referrer", "no-referrer-when-downgrade", "same-origin", "origin", "strict-origin",
    "origin-when-cross-origin", "strict-origin-when-cross-origin", "unsafe-url",
})
# nginx valid_referers: the keywords beside host entries and ~regex.
KEYWORDS = frozenset({"none", "blocked", "server_names"})


# RFC 6761 §6.4: no site is ever named under .invalid, so a pattern matching one of these
# is anchored to no domain of the operator's ("~https://.*" matches every https site).
_PROBES = ("https://example.invalid", "http://a.b.c.example.invalid:8443",
           # RFC 5737 §3, RFC 3849: documentation addresses, no site's: a pattern matching
           # them matches any address literal ("~https://\\[.*\\]"), which anyone can serve.
           "https://192.0.2.1", "http://192.0.2.1:8443", "https://[2001:db8::1]",
           "http://[2001:db8::1]:8443")
# RFC 6761 §6.2-§6.4, RFC 6762 §3, ICANN's .internal: single labels that name no public
# sites, so "*.localhost" or "*.internal" is a developer's or a company's own wildcard.
_PRIVATE_TLDS = frozenset({"localhost", "test", "invalid", "example", "local", "internal"})


# The labels a ~regex names ("com" in "~https://.*\\.com"): the top-level domains it may
# be a wildcard over.
_LABEL = re.compile(r"[a-z][a-z0-9-]{1,62}")
# Its words and dotted names ("co", "uk", "github.io" in "~https://.*\\.(co\\.uk|github\\.io)"),
# for the public suffixes of several labels it may be a wildcard over: those sharing a label
# with it, and those under a domain it names ("amazonaws.com").
_WORD = re.compile(r"[a-z0-9-]+")
_DOTTED = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)+")
# Names of sites nobody listed, in the shapes a site's name takes (letters alone, with a
# digit, with a hyphen, short and long): "~https://[a-z]+\\.com" matches every .com site
# whose name is letters, though not one with a hyphen.
_SITE_NAMES = ("probe", "cacheproxyprobe", "probe1", "cacheproxy-probe", "a")


def grants_anyone(entry: str) -> str | None:
    """Why an allow_origins entry grants sites nobody listed, or None: a ~regex matching
    one of the unrelated probe origins (a catch-all) or a site nobody listed right under a
    public suffix it names ("~https://.*\\.com", "~https://.*\\.github\\.io"), or a
    wildcard over a public suffix or over a domain with public suffixes under it
    (https://*.com, https://*.co.uk, https://*.github.io, https://*.amazonaws.com)."""
    if entry.startswith("~"):
        return _regex_grants_anyone(entry[1:])
    wildcard = parse_origin_entry(entry)
    if not isinstance(wildcard, WildcardOrigin) or wildcard.domain in _PRIVATE_TLDS:
        return None
    if "." not in wildcard.domain:
        return f"it matches every site under the top-level domain {wildcard.domain}"
    suffixes = public_suffixes()
    if (suffix := suffixes.public(wildcard.domain)) is not None:
        return f"it matches every site under {suffix.describe()}"
    if beneath := suffixes.beneath(wildcard.domain):
        return (f"it matches every site under {beneath[0].describe()}, which lies under "
                f"{wildcard.domain}")
    return None


def _regex_grants_anyone(text: str) -> str | None:
    pattern = re.compile(text)
    for probe in _PROBES:
        if pattern.fullmatch(probe):
            return (f"it matches {probe}, a name no site has (RFC 6761 §6.4) or a "
                    "documentation address: it matches any origin")
    lowered = text.lower()
    tlds = set(_LABEL.findall(lowered)) - _PRIVATE_TLDS - {"http", "https"}
    if (probe := _site_under(pattern, sorted(tlds))) is not None:
        return f"it matches {probe}, a site under the top-level domain {probe.rpartition('.')[2]}"
    words = lowered.replace("\\.", ".")
    suffixes = public_suffixes()
    candidates = suffixes.sharing_a_label(set(_WORD.findall(words)))
    for dotted in _DOTTED.findall(words):  # and every suffix under a domain it names
        labels = dotted.split(".")
        for i in range(len(labels) - 1):
            candidates += suffixes.beneath(".".join(labels[i:]))
    for suffix in candidates:
        if (probe := _site_under(pattern, [suffix.name])) is not None:
            return f"it matches {probe}, a site under {suffix.describe()}"
    return None


def _site_under(pattern: re.Pattern[str], suffixes: list[str]) -> str | None:
    """The first origin of a site nobody listed, right under one of `suffixes` (a rule's
    "*" label standing for a name too), that `pattern` matches."""
    for suffix in suffixes:
        for scheme in ("https", "http"):
            for name in _SITE_NAMES:
                probe = f"{scheme}://{name}.{suffix.replace('*', name)}"
                if pattern.fullmatch(probe):
                    return probe
    return None


class HostRule(NamedTuple):
    """A valid_referers host entry: "example.com", "*.example.com" or "www.example.*",
    with an optional path prefix ("example.com/galleries/")."""

    host: str  # lowercase; a leading "*." or trailing ".*" is the wildcard
    path_prefix: str = ""

    def matches(self, host: str, path: str) -> bool:
        if self.host.startswith("*."):
            ok = host_matches(self.host, host)
        elif self.host.endswith(".*"):
            ok = host.startswith(self.host[:-1]) and len(host) > len(self.host) - 1
        else:
            ok = host == self.host
        return ok and path.startswith(self.path_prefix)


RefererEntry = str | HostRule | re.Pattern[str]  # str: a keyword


def parse_valid_referer(entry: str) -> RefererEntry:
    """One valid_referers entry, as nginx reads it; ValueError says what is wrong."""
    if entry in KEYWORDS:
        return entry
    if entry.lower() in KEYWORDS:  # a host named "None" is far less likely than a typo
        raise ValueError(f"keywords are lowercase: write {entry.lower()!r}, got {entry!r}")
    if entry.startswith("~"):
        if len(entry) == 1:
            raise ValueError("an empty regular expression: '~'")
        try:  # nginx compiles these caseless and searches (not anchored)
            return re.compile(entry[1:], re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"bad regular expression {entry!r}: {exc}") from None
    if "://" in entry:  # a URL: nginx's entries, and ours, are a host and a path
        raise ValueError(f"write the host without a scheme ({entry.partition('://')[2]!r}: "
                         f"every scheme and port is accepted), got {entry!r}")
    host, slash, path = entry.partition("/")
    if not host:
        raise ValueError(f"a host is missing in {entry!r}")
    try:
        if host.endswith(".*") and "*" not in host[:-2]:
            return HostRule(parse_hostname(host[:-2]) + ".*", slash + path)
        return HostRule(parse_host_pattern(host), slash + path)
    except ValueError as exc:
        raise ValueError(
            "expected none, blocked, server_names, a host (example.com, *.example.com, "
            f"www.example.*) with an optional path (example.com/galleries/), or ~regex: {exc}"
        ) from None


def parse_referrer_policy(value: str) -> tuple[str, ...]:
    """A Referrer-Policy value to send: "" (none) or a comma-separated list of W3C tokens
    (§4.1: a browser takes the last one it knows, so older ones can come first as fallbacks)."""
    tokens = tuple(token.strip() for token in value.split(",")) if value.strip() else ()
    for token in tokens:
        if token not in REFERRER_POLICIES:
            raise ValueError(
                f"unknown referrer policy {token!r}; expected one or more of "
                f"{', '.join(sorted(REFERRER_POLICIES))} (comma-separated), or \"\" for none")
    return tokens
