"""Validating a stored response with the origin (RFC 9111 §3.2, §4.3)."""

from __future__ import annotations

from functools import lru_cache

from cacheproxy.http.dates import parse_http_date
from cacheproxy.http.fields import HOP_BY_HOP, FieldList, connection_options, split_list
from cacheproxy.http.stored import (
    CachedResponse,
    first_value,
    stored_field_list,
    stored_fields_view,
)
from cacheproxy.http.validators import parse_etag

# Conditional fields a client may send; a cache filling itself strips them and
# answers the client's condition from the full response (§4.3.2), and its Range too
# (RFC 9110 §14.2: the part is cut from the whole representation it stores).
CLIENT_CONDITIONALS = frozenset(
    {"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range"}
)
CLIENT_FILL_FIELDS = CLIENT_CONDITIONALS | {"range"}


def conditional_fields(entry: CachedResponse) -> list[tuple[str, str]]:
    """§4.3.1: send the stored validators: the entity tag, and Last-Modified as a date."""
    return list(validating_fields(entry))


def validating_fields(entry: CachedResponse) -> tuple[tuple[str, str], ...]:
    """conditional_fields as a tuple (what Forward.conditional holds), the same one for
    the same stored validators: a URL revalidated on every request sends the same pair
    each time (remembered up to _MEMO_CHARS of validators)."""
    # The last entry's answer, for the very same field tuples (names and values: all it
    # is made from): a response refreshed by a 304 that repeated its fields keeps them
    # (stored.refreshed), so a URL revalidated on every request reads them once.
    global _last
    names, values = entry.names, entry.values
    last = _last
    if last[1] is values and last[0] is names:
        return last[2]
    etag, last_modified = entry.validators()
    if len(etag or "") + len(last_modified or "") > _MEMO_CHARS:
        return _validating_fields.__wrapped__(etag, last_modified)
    fields = _validating_fields(etag, last_modified)
    _last = (names, values, fields)  # (holds one entry's two tuples at most)
    return fields


_MEMO_CHARS = 192
_last: tuple[tuple[str, ...] | None, tuple[str, ...] | None,
             tuple[tuple[str, str], ...]] = (None, None, ())


@lru_cache(maxsize=256)
def _validating_fields(etag: str | None, last_modified: str | None
                       ) -> tuple[tuple[str, str], ...]:
    fields: list[tuple[str, str]] = []
    if etag:
        fields.append(("If-None-Match", etag))
    if last_modified and _is_a_date(last_modified):
        fields.append(("If-Modified-Since", last_modified))
    return tuple(fields)


def _is_a_date(last_modified: str | None) -> bool:
    """§4.3.1 validates with "the timestamp given in a Last-Modified header field": one
    that is no HTTP-date is no validator, and as If-Modified-Since it would be a field
    no sender may generate (RFC 9110 §5.6.7) that the origin ignores (§13.1.3)."""
    return parse_http_date(last_modified) is not None


def has_validator(entry: CachedResponse) -> bool:
    etag, last_modified = entry.validators()
    return bool(etag) or _is_a_date(last_modified)


def selects(entry: CachedResponse, response: list[tuple[str, str]]) -> bool:
    """§4.3.4: does a 304 apply to this stored response?"""
    new_value = first_value(response, "etag")
    new_tag = parse_etag(new_value)
    if new_tag is not None:
        if new_value == entry.etag:  # the usual 304: the very tag stored
            return True
        old = parse_etag(entry.etag)
        if old is None or old.opaque != new_tag.opaque:
            return False
        # A strong validator selects the same strong one only; a weak one selects the
        # stored response it "corresponds" to, by weak comparison (RFC 9110 §8.8.3.2): a
        # 304 whose tag a compressing origin weakened (W/"v1" for a stored "v1") still
        # validates, as the If-None-Match it answers matched by weak comparison too.
        return new_tag.weak or not old.weak
    new_lm = first_value(response, "last-modified")
    if new_lm is not None:
        return new_lm == entry.last_modified
    # No validator in the 304: it selects a stored response only if that lacks one too.
    return not has_validator(entry)


def head_matches(entry: CachedResponse, response: list[tuple[str, str]]) -> bool:
    """§4.3.5: may a 200 to a HEAD update this stored GET response? Its validators (ETag,
    Last-Modified) and Content-Length, where it has them, match the stored ones; with no
    validator at all, only a stored response without one (as §4.3.4 selects)."""
    etag = next((v for k, v in response if k.lower() == "etag"), None)
    last_modified = next((v for k, v in response if k.lower() == "last-modified"), None)
    length = next((v for k, v in response if k.lower() == "content-length"), None)
    if length is not None and length.strip() != str(len(entry.body)):
        return False
    if etag is None and last_modified is None:
        return not has_validator(entry)
    if etag is not None:
        new, old = parse_etag(etag), parse_etag(entry.etag)
        if new is None or old is None or (new.opaque, new.weak) != (old.opaque, old.weak):
            return False
    return last_modified is None or last_modified == entry.last_modified


# §3.2: fields a 304 does not replace: the stored content depends on them (its coding,
# digest, range; the length it has), whatever the 304 says.
CONTENT_BOUND_FIELDS = frozenset(
    {"content-length", "content-encoding", "content-md5", "content-range"})


def merge_304(entry: CachedResponse, response: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """§3.2: fields of the 304 replace the stored ones, except hop-by-hop fields and those
    the stored content depends on (CONTENT_BOUND_FIELDS); everything else stays."""
    named = connection_options(v for k, v in response if k.lower() == "connection")
    updates = [
        (k, v) for k, v in response
        if (lk := k.lower()) not in HOP_BY_HOP and lk not in named
        and lk not in CONTENT_BOUND_FIELDS
    ]
    replaced = {k.lower() for k, _ in updates}
    kept = [(k, v) for k, v in entry.header_pairs() if k.lower() not in replaced]
    if "vary" in replaced:
        updates = _vary_kept(entry, updates)
    return kept + updates


def _vary_kept(entry: CachedResponse, updates: list[tuple[str, str]]
               ) -> list[tuple[str, str]]:
    """§3.2: the stored content was negotiated on the fields its Vary names, and a 304 has
    no content to say otherwise: its Vary may add fields, never drop one (RFC 9110 §15.4.5
    says it repeats the 200's; Express's 304s leave out the Accept-Encoding its
    compression adds), else a gzip body would be selected for clients that cannot decode
    it (§4.1). The stored names the 304 left out follow its Vary, on a line of their own."""
    named = {n.lower() for k, v in updates if k.lower() == "vary" for n in split_list(v)}
    missing: dict[str, str] = {}
    for k, v in entry.header_pairs():
        if k.lower() == "vary":
            for name in split_list(v):
                if name.lower() not in named:
                    missing.setdefault(name.lower(), name)
    if not missing or "*" in named:
        return updates
    return [*updates, ("Vary", ", ".join(missing.values()))]


_NONE_NAMED: frozenset[str] = frozenset()


def date_only(entry: CachedResponse, response: FieldList) -> FieldList | None:
    """When merging this 304 (its fields with a Date, by name) into the stored response
    (§3.2, merge_304) would change nothing but the Date, the merged fields: the stored
    ones in their order and spelling, the 304's Date in place of theirs. Else None. So
    for the common 304 that repeats the stored ETag, Cache-Control and the like, the
    stored response is refreshed (stored.refreshed), not rebuilt. To be read, never
    changed: for a 304 with the stored Date, it is the stored fields' shared view
    (stored_fields_view)."""
    by_name = response.by_name
    dates = by_name.get("date")
    connection = by_name.get("connection")
    named = connection_options(connection) if connection else _NONE_NAMED
    if dates is None or len(dates) != 1 or "date" in named:
        return None  # (a Date the 304's Connection names is not merged: merge_304 keeps ours)
    index = entry.lines_once()
    if index is None:  # a name on more than one stored line: compared as lists
        return _date_only_repeated(entry, by_name, named, dates[0])
    at = index.get("date")
    if at is None:
        return None  # (none stored)
    values = entry.values
    for name, given in by_name.items():  # (each stored name on one line: one value)
        if name in HOP_BY_HOP or name in named or name in CONTENT_BOUND_FIELDS:
            continue  # (merge_304 leaves these out)
        if name != "date":
            i = index.get(name)
            if i is None or len(given) != 1 or values[i] != given[0]:
                return None
    date = dates[0]
    if values[at] == date:  # (the same second: nothing to change)
        return stored_fields_view(entry)
    merged = stored_field_list(entry)  # (a new list and index: changed below)
    merged[at] = (merged[at][0], date)  # type: ignore[index]
    merged.by_name["date"] = [date]
    return merged


def _date_only_repeated(entry: CachedResponse, by_name: dict[str, list[str]],
                        named: frozenset[str], date: str) -> FieldList | None:
    """date_only, for stored fields with a name on more than one line."""
    merged = stored_field_list(entry)  # (a new list and index: changed below)
    stored = merged.by_name
    if len(stored.get("date", ())) != 1:
        return None  # (none stored; or two, of which the merge leaves one)
    for name, values in by_name.items():
        if name in HOP_BY_HOP or name in named or name in CONTENT_BOUND_FIELDS:
            continue  # (merge_304 leaves these out)
        if name != "date" and stored.get(name) != values:
            return None
    if stored["date"][0] != date:
        # The 304's Date in the stored one's place (and spelling).
        at = entry.position("date")
        merged[at] = (merged[at][0], date)  # type: ignore[index]
        stored["date"] = [date]
    return merged
