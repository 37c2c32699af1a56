"""Cache keys: the primary key and Vary's secondary keys (RFC 9111 §2, §4.1)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from cacheproxy.http.fields import (
    FieldList,
    Headers,
    combined_value,
    split_list,
    values_of,
)
from cacheproxy.http.origins import origin_of  # also imported from here by other modules

if TYPE_CHECKING:
    from cacheproxy.http.stored import CachedResponse

_WS = re.compile(r"\s+")
_COMMA_WS = re.compile(r"\s*,\s*")
# RFC 9110 §5.6.6, §12.4.2: OWS around the ";" before a parameter (a weight) is optional.
_SEMICOLON_WS = re.compile(r"\s*;\s*")
# Fields whose values compare case-insensitively, so "GZIP" and "gzip" share a variant.
_CASELESS = frozenset({"accept", "accept-charset", "accept-encoding", "accept-language"})


def primary_key(scheme: str, host: str, target: str) -> str:
    """§2: the key is the target URI (scheme, host, path and query)."""
    return origin_of(scheme, host) + (target or "/")


def vary_fields(vary: str | None) -> tuple[str, ...] | None:
    """Lower-cased field names a response varies on; None for "Vary: *" (§4.1)."""
    if not vary:
        return ()
    names = tuple(dict.fromkeys(n.lower() for n in split_list(vary)))
    return None if "*" in names else names


def normalise(name: str, value: str | None) -> str | None:
    """§4.1: values may be normalised before matching (whitespace, case, list layout)."""
    if value is None:
        return None
    value = _COMMA_WS.sub(",", _WS.sub(" ", value.strip()))
    if name not in _CASELESS:
        return value
    # (parameters only in the negotiation fields: elsewhere a ";" may be the value's own)
    return _SEMICOLON_WS.sub(";", value).lower() if ";" in value else value.lower()


# A Referer field line as the route sends it upstream; None: it sends none.
RefererSent = Callable[[str], str | None]


class SelectingFields:
    """§4.1: a request's fields as its selecting values are read when the route changes
    the Referer it forwards (policies/referer.py forwarded_referer): the Referer as the
    upstream got it, every other field as the client sent it. An answer that varies on
    Referer was made for the Referer the upstream saw; keyed on that ("normalized in a
    way that is known to have identical semantics"), a secret the route strips is neither
    stored nor listed, and pages differing only in it share the one answer. Read lazily:
    nothing of the Referer is parsed unless a stored response's Vary names it."""

    __slots__ = ("_sent", "_sent_lines", "fields")

    def __init__(self, fields: Headers, sent: RefererSent) -> None:
        self.fields = fields  # the client's own
        self._sent = sent
        self._sent_lines: list[str] | None = None

    def getall(self, key: str, default: list[str]) -> list[str]:
        if key.lower() != "referer":
            return self.fields.getall(key, default)
        kept = self._sent_lines
        if kept is None:  # once per request, however many variants and looks compare it
            sent = self._sent
            # Each line as request_fields forwards it (one by one; a dropped one goes away)
            kept = self._sent_lines = [
                s for v in self.fields.getall(key, []) if (s := sent(v)) is not None]
        return list(kept) or default

    def get(self, key: str, default: None = None) -> str | None:
        values = self.getall(key, [])
        return values[0] if values else default


def vary_values(fields: tuple[str, ...], headers: Headers) -> tuple[str | None, ...]:
    """The request's normalised values for the fields (absent stays None, §4.1)."""
    if type(headers) is SelectingFields and "referer" not in fields:
        headers = headers.fields  # (the client's own: no call per field through the view)
    return tuple(normalise(f, combined_value(headers, f)) for f in fields)


def variant_id(
    entry: CachedResponse,
) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """§4.1: a variant is told apart by the fields its response varies on and the request's
    values for them; values alone would make ("fr",) for Accept-Language and ("fr",) for
    a later Vary: Accept-Encoding one variant."""
    return entry.variant  # type: ignore[no-any-return]


# A variant's identity: the fields its response varies on, the request's values for them.
Variant = tuple[tuple[str, ...], tuple[str | None, ...]]


def answered_variant(fields: list[tuple[str, str]], headers: Headers) -> Variant | None:
    """§4.1: the requests an answer stands for: its Vary fields and this request's values
    for them; None for Vary: * (every request). What a hit-for-pass mark is kept for, as
    Varnish's hit-for-pass object varies like the answer it was made from."""
    # (an answer's fields indexed by name, as the pool gathers them: no call to read)
    named = fields.by_name.get("vary") if type(fields) is FieldList else values_of(fields, "vary")
    if not named:
        return _EVERY_REQUEST  # (nearly every answer: no Vary)
    vary = vary_fields(", ".join(named))
    return None if vary is None else (vary, vary_values(vary, headers))


_EVERY_REQUEST: Variant = ((), ())  # an answer without Vary stands for every request


def in_variant(variant: Variant | None, headers: Headers) -> bool:
    """Does the request belong to variant (None: every request does)?"""
    if variant is None or not variant[0]:
        return True
    return vary_values(variant[0], headers) == variant[1]


def select_variant(
    variants: tuple[CachedResponse, ...], headers: Headers
) -> CachedResponse | None:
    """§4.1: the newest stored response whose Vary'd request fields match."""
    for entry in variants:
        vary, values = entry.variant
        if not vary or vary_values(vary, headers) == values:
            return entry
    return None


class Selectable(tuple["CachedResponse", ...]):
    """A store's read for one request (Store.get with its headers): the responses under the
    key, newest first, with every one the request may select (§4.1) among them. unread:
    how many other variants the key holds, left unread because the request's values for
    their Vary'd fields are not theirs: they cannot be selected for it (§4.1), nor be in
    the "initial set" its 304 would update (§4.3.4)."""

    unread: int
    # The fields an unread variant varies on (its Vary names): with none read, what tells
    # the requests one fetch for the key may answer apart (wait_group).
    varies_on: tuple[str, ...]

    def __new__(cls, variants: Iterable[CachedResponse], unread: int = 0,
                varies_on: tuple[str, ...] = ()) -> Selectable:
        made = super().__new__(cls, variants)
        made.unread = unread
        made.varies_on = varies_on
        return made


def wait_group(variants: tuple[CachedResponse, ...], headers: Headers) -> Variant | None:
    """The variant a miss would be answered with, as far as storage knows the key's Vary
    (its newest variant's fields, or an unread one's): misses of one group wait behind one
    fetch; those of another need their own (§4.1), so they do not queue behind it. None:
    the key is not known to vary (one fetch answers everyone)."""
    if variants:
        names = variants[0].vary
    else:
        names = variants.varies_on if isinstance(variants, Selectable) else ()
    return (names, vary_values(names, headers)) if names else None


def entry_group(entry: CachedResponse) -> Variant | None:
    """The wait_group of the requests entry answers."""
    return (entry.vary, entry.vary_values) if entry.vary else None


def holds_any(variants: tuple[CachedResponse, ...]) -> bool:
    """Does the key hold a response at all, selectable or not? (RFC 9211 §2.2: a miss is
    then a vary-miss, not a uri-miss.)"""
    return bool(variants) or (isinstance(variants, Selectable) and variants.unread > 0)
