"""The grammar the parsers share, written once as regular expressions.

In the manner of h11's `_abnf.py`: each rule quotes the ABNF it implements (RFC 5234 notation),
pieces are plain strings that compose into larger ones, and the compiled patterns (`*_RE`) are
what the parsers match with. Where a pattern is looser or stricter than the RFC, the comment
says how and why.
"""

from __future__ import annotations

import re
from typing import Final

# RFC 5234 Appendix B.1
#   DIGIT = %x30-39
# A number is sized by its significant digits before int() sees it: Python refuses strings
# past 4300 digits (ValueError), so a header value could otherwise make a parser raise.


def bounded_digits(text: str, cap: int) -> int | None:
    """The value of `1*DIGIT`, or `cap` when it is `cap` or more; None when not 1*DIGIT."""
    if not text.isascii() or not text.isdigit():
        return None
    significant = text.lstrip("0")
    if len(significant) > len(str(cap)):
        return cap
    return min(int(significant or "0"), cap)


# RFC 9110 §5.6.2 Tokens
#   token          = 1*tchar
#   tchar          = "!" / "#" / "$" / "%" / "&" / "'" / "*"
#                  / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
#                  / DIGIT / ALPHA
#                  ; any VCHAR, except delimiters
TCHAR: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
TOKEN: Final = rf"{TCHAR}+"
TOKEN_RE: Final = re.compile(TOKEN, re.ASCII)

# RFC 9112 §4 Status Line
#   reason-phrase  = 1*( HTAB / SP / VCHAR / obs-text )
#   obs-text       = %x80-FF
# On bytes, and empty allowed: a status line may end after its code's space. llhttp takes
# any byte but CR and LF in it; the rest of the control characters are refused here.
REASON_PHRASE_RE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")

# RFC 3986 §3.1, §3.2.2, §3.2.3
#   scheme      = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
#   host        = IP-literal / IPv4address / reg-name
#   IP-literal  = "[" ( IPv6address / IPvFuture  ) "]"
#   reg-name    = *( unreserved / pct-encoded / sub-delims )
#   unreserved  = ALPHA / DIGIT / "-" / "." / "_" / "~"
#   pct-encoded = "%" HEXDIG HEXDIG
#   sub-delims  = "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "="
#   port        = *DIGIT
# IP-literal is taken as hex digits, ":" and "." (an IPv4 tail) between brackets, without
# IPvFuture; pct-encoded as a bare "%". Enough to tell a host from "/", "?", "#", "@" or
# spaces, which in a Host field would make the cache key name another resource.
SCHEME: Final = r"[A-Za-z][A-Za-z0-9+.\-]*"
IP_LITERAL: Final = r"\[[0-9A-Fa-f:.]+\]"
REG_NAME: Final = r"[A-Za-z0-9\-._~!$&'()*+,;=%]*"
PORT: Final = r"[0-9]*"

# RFC 9110 §7.2 (Host), RFC 3986 §3.2
#   Host      = uri-host [ ":" port ]
#   authority = [ userinfo "@" ] host [ ":" port ]
# Without userinfo: the caller drops it first, since it is not part of the key.
AUTHORITY: Final = rf"(?:{IP_LITERAL}|{REG_NAME})(?::{PORT})?"
AUTHORITY_RE: Final = re.compile(AUTHORITY, re.ASCII)

# RFC 9110 §4.2.1, §4.2.2
#   http-URI  = "http" "://" authority path-abempty [ "?" query ]
#   https-URI = "https" "://" authority path-abempty [ "?" query ]
# Matched at the start of a URL (a Referer): groups scheme, host (IP-literal brackets kept)
# and port (possibly empty); the userinfo is skipped.
HTTP_URL_RE: Final = re.compile(
    rf"(https?)://(?:[^/?#]*@)?({IP_LITERAL}|[^/?#:@\[\]]+)(?::({PORT}))?(?:[/?#]|$)",
    re.IGNORECASE | re.ASCII,
)

# RFC 6454 §7.1 (the Origin header field), as Fetch serializes an origin
#   origin-list       = serialized-origin *( SP serialized-origin )
#   serialized-origin = scheme "://" host [ ":" port ]
# Groups scheme, host and port. The host is any text a URL parser would take as one (no
# ASCII restriction: an international name is converted after) and is checked as a hostname
# after; a port has at most 5 digits (65535 is checked after).
ORIGIN_RE: Final = re.compile(
    rf"({SCHEME})://({IP_LITERAL}|[^/?#@:\[\]\s]+)(?::([0-9]{{1,5}}))?")

# RFC 952 host names, as RFC 1123 §2.1 relaxes them (a label may start with a digit)
#   <hname> ::= <name>*["."<name>]
#   <name>  ::= <let>[*[<let-or-digit-or-hyphen>]<let-or-digit>]
# Lowercase (names are compared lowercased), with "_" as docker service names use it; an
# IPv4 address matches too. An IPv6 literal is written in brackets; no port.
LABEL: Final = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
HOSTNAME_RE: Final = re.compile(rf"{LABEL}(?:\.{LABEL})*", re.ASCII)
BRACKETED_IPV6_RE: Final = re.compile(r"\[([0-9a-f:.]+)\]", re.ASCII)

# RFC 9110 §8.8.3
#   entity-tag = [ weak ] opaque-tag
#   weak       = %s"W/"
#   opaque-tag = DQUOTE *etagc DQUOTE
#   etagc      = %x21 / %x23-7E / obs-text
# An entity-tag is no quoted-string (a backslash is a plain etagc), so a list of them
# (If-Match, If-None-Match: #entity-tag, §5.6.1) splits on the commas outside DQUOTE pairs;
# an unquoted member (seen in the wild) runs to the next comma.
ETAG_LIST_MEMBER_RE: Final = re.compile(r'(?:[^,"]|"[^"]*(?:"|$))+')
# One quoted entity-tag, its opaque-tag's content as the group; etagc loosened to any
# character but DQUOTE.
ENTITY_TAG_RE: Final = re.compile(r'(?:W/)?"([^"]*)"')

# RFC 9110 §5.6.4
#   quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
# Any character after a backslash is taken literally (a lenient recipient).
QUOTED_PAIR_RE: Final = re.compile(r"\\(.)", re.S)
