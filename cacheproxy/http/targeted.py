"""Targeted cache control (RFC 9213) and Surrogate-Control (W3C Edge Architecture
Specification 1.0, the note RFC 9213 descends from).

A response may carry cache directives for one class of caches beside its Cache-Control for
everyone: CDN-Cache-Control for CDNs, Surrogate-Control for surrogates (reverse proxies
acting for the origin, which this proxy is). The cache follows the first targeted field of
its list that the response carries with something for it, and then ignores Cache-Control
and Expires; its clients still get Cache-Control as the origin sent it. So an origin can
give this cache a long lifetime and browsers a short one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from cacheproxy.http.cache_control import RESPONSE_DIRECTIVES
from cacheproxy.http.fields import FieldList, split_list, values_of

SURROGATE_CONTROL: Final = "surrogate-control"
# Edge Architecture §3: what a surrogate announces in Surrogate-Capability.
SURROGATE_CAPABILITY: Final = "Surrogate/1.0"


@dataclass(frozen=True, slots=True)
class Targeting:
    """This cache's target list (RFC 9213 §2.2), lower-case, first = highest priority;
    device, its Surrogate-Capability device token (Edge Architecture §3)."""

    fields: tuple[str, ...] = ("cdn-cache-control", SURROGATE_CONTROL)
    device: str = "cacheproxy"

    @property
    def surrogate(self) -> bool:
        return SURROGATE_CONTROL in self.fields


NO_TARGETING: Final = Targeting(fields=())


@dataclass(frozen=True, slots=True)
class Governing:
    """The directives this cache follows for one response, in Cache-Control syntax.
    field: the targeted field they came from (lower-case), None for Cache-Control itself;
    a targeted field sets Expires aside too (RFC 9213 §2.2)."""

    cache_control: str | None
    field: str | None = None

    @property
    def expires_applies(self) -> bool:
        return self.field is None


def governing(pairs: list[tuple[str, str]], targeting: Targeting) -> Governing:
    """RFC 9213 §2.2: "select the first (in target list order) field with a valid,
    non-empty value ... and ... ignore the Cache-Control and Expires header fields"."""
    # (a FieldList's index read in place: every 304 and every stored answer comes here)
    by_name = pairs.by_name if type(pairs) is FieldList else None
    for name in targeting.fields:
        values = values_of(pairs, name) if by_name is None else by_name.get(name)
        if not values:
            continue
        joined = ", ".join(values)
        directives = (surrogate_directives(joined, targeting.device) if name == SURROGATE_CONTROL
                      else targeted_directives(joined))
        if directives:  # RFC 9213 §2.1: an empty or invalid field is ignored
            return Governing(directives, name)
    cache_control = (values_of(pairs, "cache-control") if by_name is None
                     else by_name.get("cache-control"))
    if not cache_control:
        return _NO_DIRECTIVES
    joined = ", ".join(cache_control)
    return _governing_cc(joined) if len(joined) <= _MEMO_CHARS else Governing(joined)


# Cache-Control values remembered as their Governing up to this length (a frozen
# dataclass costs some 2,500 instructions to make; most origins send a few values).
_MEMO_CHARS = 128
_NO_DIRECTIVES: Final = Governing(None)


@lru_cache(maxsize=256)
def _governing_cc(cache_control: str) -> Governing:
    return Governing(cache_control)


def downstream_removed(targeting: Targeting, strip_targeted: bool) -> frozenset[str]:
    """Response fields removed before a response goes on: Surrogate-Control is consumed
    by the surrogate it targets (Edge Architecture §2.2); other targeted fields stay for
    caches further down (RFC 9213 §2.2), unless the operator strips them."""
    if strip_targeted:
        return frozenset(targeting.fields)
    return frozenset({SURROGATE_CONTROL}) & frozenset(targeting.fields)


def surrogate_capability(targeting: Targeting) -> str | None:
    """Edge Architecture §3: Surrogate-Capability: device="Surrogate/1.0", so the origin
    can target Surrogate-Control directives at this cache (`max-age=60;device`)."""
    return f'{targeting.device}="{SURROGATE_CAPABILITY}"' if targeting.surrogate else None


# -- RFC 9213 §2.1: a targeted field is a Structured Field Dictionary (RFC 8941 §3.2) --------
#   sf-dictionary  = dict-member *( OWS "," OWS dict-member )
#   dict-member    = member-key ( parameters / ( "=" member-value ))
#   member-key     = key
#   key            = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )
#   member-value   = sf-item / inner-list
#   sf-item        = bare-item parameters
#   bare-item      = sf-integer / sf-decimal / sf-string / sf-token / sf-binary / sf-boolean
#   parameters     = *( ";" *SP key [ "=" bare-item ] )
# Inner lists are not taken (no cache directive has one): the field is then invalid.
_KEY = r"[a-z*][a-z0-9_\-.*]*"
_BARE_ITEM = (r'(?:-?[0-9]{1,12}\.[0-9]{1,3}|-?[0-9]{1,15}|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]'
              r'|\\["\\])*"|[A-Za-z*][!#$%&\'*+\-.^_`|~0-9A-Za-z:/]*|:[A-Za-z0-9+/=]*:|\?[01])')
_PARAMETERS = rf"(?:;\ *{_KEY}(?:={_BARE_ITEM})?)*"
_MEMBER_RE: Final = re.compile(rf"({_KEY})(?:=({_BARE_ITEM}))?{_PARAMETERS}", re.ASCII)
_COMMA_RE: Final = re.compile(r"[ \t]*,[ \t]*")  # OWS "," OWS


def targeted_directives(value: str) -> str | None:
    """RFC 9213 §2.1: the dictionary as Cache-Control directives; None when the field is
    empty or does not parse (then it is ignored). A Boolean true is the bare directive,
    false leaves it out; parameters are ignored; a string argument stays quoted."""
    value = value.strip(" \t")
    if not value:
        return None
    members = _split_dictionary(value)
    if members is None:
        return None
    out: list[str] = []
    for key, item in members:
        if item is None or item == "?1":
            out.append(key)
        elif item != "?0":
            out.append(f"{key}={item}")
    return ", ".join(out) if out else "none"  # RFC 9213 §3.1: present, with no directive


def _split_dictionary(value: str) -> list[tuple[str, str | None]] | None:
    members: list[tuple[str, str | None]] = []
    pos = 0
    while True:
        m = _MEMBER_RE.match(value, pos)
        if m is None:
            return None
        members.append((m.group(1), m.group(2)))
        pos = m.end()
        if pos == len(value):
            return members
        comma = _COMMA_RE.match(value, pos)
        if comma is None or comma.end() == len(value):  # RFC 8941 §4.2.2: no trailing comma
            return None
        pos = comma.end()


# -- Edge Architecture §2.2, Surrogate-Control ------------------------------------------------
#   Surrogate-Control = 1#control-directive
#   control-directive = ( "no-store" | "no-store-remote" | "max-age" "=" delta-seconds
#                         [ "+" delta-seconds ] | "content" "=" <"> ... <"> | extension )
#                       [ ";" device-token ]
# A directive with a device token is for that surrogate only.

# §2.2.4 content asks for processing (ESI), §2.2.2 no-store-remote speaks to remote
# surrogates, and an extension this cache does not know is ignored (RFC 9111 §5.2.3):
# none says how this cache may store the response, so alone they leave Cache-Control in
# force (its private or no-store too). Only the directives it acts on set it aside.
_CACHING: Final = RESPONSE_DIRECTIVES


def surrogate_directives(value: str, device: str) -> str | None:
    """The directives for this surrogate (untargeted, or targeted at device) as
    Cache-Control directives; None when none is for it, or none of _CACHING.
    max-age's "+N" (how long the surrogate may keep it past that) is not taken."""
    out: list[str] = []
    caching = False  # a directive about storing or freshness here (_CACHING)
    for member in split_list(value):
        directive, _, target = member.partition(";")
        if target and target.strip().lower() != device.lower():
            continue
        name, eq, arg = directive.strip().partition("=")
        if not name or name != name.rstrip() or arg != arg.lstrip():
            continue  # no whitespace around "=" (as in Cache-Control, RFC 9111 §5.2)
        name = name.lower()
        if name == "max-age" and eq:
            arg = arg.partition("+")[0]
        out.append(f"{name}={arg}" if eq else name)
        caching = caching or name in _CACHING
    return ", ".join(out) if caching else None
