"""The scheme a trusted front proxy says the client used (X-Forwarded-Proto; RFC 7239
Forwarded proto=): behind a TLS terminator, the scheme the request is for.

Only the nearest proxy's word counts: the last member of X-Forwarded-Proto (a proxy that
appends puts its own last; nginx's `proxy_set_header` replaces the field, leaving one),
or the proto= of Forwarded's last element (RFC 7239 §4: each proxy appends one). What
comes before it came from further away, the client included. Only "http" and "https",
in any case, are taken: the scheme goes into the cache key and to the origin, so any
other value is ignored (the hop's own scheme applies), never a key of a client's choosing.
"""

from __future__ import annotations

import re

from cacheproxy.http.fields import Headers, split_list, split_quoted

SCHEMES = frozenset({"http", "https"})
# RFC 7239 §4: forwarded-pair = token "=" value; value = token / quoted-string.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def x_forwarded_proto(values: list[str]) -> str | None:
    """The scheme X-Forwarded-Proto's field lines say: their last member, lower-cased,
    if it is http or https; else None."""
    last = values[-1]
    if len(values) > 1 or "," in last:  # a list (RFC 9110 §5.6.1): its last member
        members = split_list(", ".join(values))
        if not members:
            return None
        last = members[-1]
    scheme = last.strip().lower()
    return scheme if scheme in SCHEMES else None


def forwarded_proto(values: list[str]) -> str | None:
    """The proto= of Forwarded's last element (RFC 7239 §5.4), if it is http or https."""
    elements = split_list(", ".join(values))
    if not elements:
        return None
    # RFC 7239 §4: forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] ),
    # split once and each pair read by itself: a regular expression searched through the
    # element took O(n²) on a long run of token characters (1.4 s of CPU for 8 KB).
    for pair in split_quoted(elements[-1], ";"):
        name, eq, value = pair.partition("=")
        if eq and _TOKEN.fullmatch(name.strip()) and name.strip().lower() == "proto":
            value = value.strip()
            if value[:1] == '"':  # a quoted-string (RFC 9110 §5.6.4); unclosed: none
                if len(value) < 2 or value[-1] != '"':
                    return None
                value = value[1:-1].replace("\\", "")
            value = value.lower()
            return value if value in SCHEMES else None
    return None


def front_scheme(headers: Headers) -> str | None:
    """The scheme the front proxy says the client used: X-Forwarded-Proto's when the front
    sent one (the field this proxy sends on, and the one fronts commonly set), else
    Forwarded's proto=; None when neither says http or https."""
    values = headers.getall("X-Forwarded-Proto", [])
    if values:
        if len(values) == 1 and values[0] in SCHEMES:  # (as nginx writes it: every hit asks)
            return values[0]
        return x_forwarded_proto(values)
    values = headers.getall("Forwarded", [])
    return forwarded_proto(values) if values else None
