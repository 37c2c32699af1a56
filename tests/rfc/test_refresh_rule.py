"""The refresh rule (revalidation.date_only + stored.refreshed) against the full merge of
a 304 (§3.2 merge_304 + make_stored_response): for any stored response and any 304 that
selects it, answered() decides the same with the rule as without it; where the rule
applies, the responses it makes differ from the merge's only in the order of fields of
different names and in the case of names (RFC 9110 §5.3, §5.1: neither carries meaning)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.http.fields import FieldList
from cacheproxy.http.flow import CacheSettings, Forward, answered, request_facts
from cacheproxy.http.flow import answer as answer_module
from cacheproxy.http.revalidation import date_only
from cacheproxy.http.storability import StorePolicy
from cacheproxy.http.stored import CachedResponse, Heuristics, make_stored_response, refreshed

T0 = 1_704_067_200.0  # Mon, 01 Jan 2024 00:00:00 GMT
DATE0 = "Mon, 01 Jan 2024 00:00:00 GMT"
DATE1 = "Mon, 01 Jan 2024 00:05:00 GMT"
ETAG = '"v1"'
# Stored fields the 304 may repeat, change or add; each can appear more than once.
FIELDS = (
    ("Cache-Control", "max-age=60"), ("Cache-Control", "no-cache"),
    ("cache-control", "s-maxage=10, must-revalidate"), ("Cache-Control", "private"),
    ("CDN-Cache-Control", "max-age=120"), ("Expires", "Mon, 01 Jan 2024 00:10:00 GMT"),
    ("Expires", "0"), ("Last-Modified", "Sun, 31 Dec 2023 00:00:00 GMT"),
    ("Content-Type", "text/plain"), ("X-Custom", "a"), ("X-Custom", "b"),
    ("Set-Cookie", "s=1"), ("Vary", "Accept"), ("Age", "30"), ("Content-Length", "3"),
    ("Connection", "X-Custom"), ("Keep-Alive", "timeout=5"), ("X-Cache", "HIT"),
    ("Surrogate-Control", 'max-age=30;cacheproxy'), ("Content-Encoding", "gzip"),
    ("Connection", "Date"),  # the 304's Date is then not merged
)
REQUESTS = ((), (("Accept", "text/html"),), (("Authorization", "Basic eA=="),),
            (("Cache-Control", "no-store"),))

field = st.sampled_from(FIELDS)


def _stored(pairs: list[tuple[str, str]], shared: bool, dated: str | bool) -> CachedResponse:
    """dated: the name the origin's Date had ("Date", "date"), or none (the cache adds one)."""
    if dated is True:
        dated = "Date"
    fields = [("ETag", ETAG), *pairs] + ([(dated, DATE0)] if dated else [])
    return make_stored_response(
        key="http://example/a", vary=(), vary_values=(), status=200, pairs=fields,
        body=b"abc", request_time=T0, response_time=T0, shared=shared,
        heuristics=Heuristics())


def _by_name(entry: CachedResponse) -> dict[str, list[str]]:
    """The fields by lower-cased name, each name's values in order."""
    named: dict[str, list[str]] = {}
    for k, v in entry.header_pairs():
        named.setdefault(k.lower(), []).append(v)
    return named


def _same_response(a: CachedResponse, b: CachedResponse) -> None:
    assert _by_name(a) == _by_name(b)
    for name in ("key", "status", "body", "born", "lifetime", "directives", "vary",
                 "vary_values", "etag", "last_modified", "modified_at"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.size == b.size  # (the same fields, so the same length)


def _same_decision(fast: Any, full: Any) -> None:
    """The same decision, its responses compared by _same_response."""
    assert type(fast) is type(full)
    for f in dataclasses.fields(full):
        a, b = getattr(fast, f.name), getattr(full, f.name)
        if isinstance(b, CachedResponse) and b is not getattr(full, "stored", None):
            _same_response(a, b)
        else:
            assert a == b, f.name


@settings(max_examples=400, deadline=None)
@given(
    stored_fields=st.lists(field, max_size=5),
    repeated=st.lists(st.integers(0, 4), max_size=5),
    extra=st.lists(field, max_size=2),
    dated_stored=st.sampled_from(("", "Date", "date")),
    date_304=st.sampled_from((None, DATE0, DATE1)),
    request=st.sampled_from(REQUESTS),
    shared=st.booleans(),
    may_store=st.booleans(),
    elapsed=st.floats(0, 400),
)
def test_answered_decides_the_same_with_the_refresh_rule_as_with_the_full_merge(
        stored_fields: list[tuple[str, str]], repeated: list[int],
        extra: list[tuple[str, str]], dated_stored: str, date_304: str | None,
        request: tuple[tuple[str, str], ...], shared: bool, may_store: bool,
        elapsed: float) -> None:
    stored = _stored(stored_fields, shared, dated_stored)
    # A 304 that mostly repeats stored fields (each name with all its values), and may
    # bring others: the rule must apply to the first kind and refuse the second.
    names = sorted({k.lower() for k, _ in stored.header_pairs()} - {"date"})
    repeats = [(k, v) for i in repeated if i < len(names)
               for k, v in stored.header_pairs() if k.lower() == names[i]]
    pairs = [("ETag", ETAG), *repeats, *extra] + ([("Date", date_304)] if date_304 else [])
    fwd = Forward("stale", "GET", stored=stored, conditional=(("If-None-Match", ETAG),),
                  may_store=may_store, collapse=True)
    route = CacheSettings(policy=StorePolicy(shared=shared))
    req = request_facts("GET", CIMultiDictProxy(CIMultiDict(request)), has_body=False)
    at = T0 + elapsed

    def decide() -> Any:
        return answered(fwd, status=304, fields=FieldList(pairs), length=None, req=req,
                        route=route, key=stored.key, request_time=at, response_time=at)

    fast = decide()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(answer_module, "date_only", lambda entry, response: None)
        full = decide()
    _same_decision(fast, full)


def _304(*pairs: tuple[str, str]) -> FieldList:
    return FieldList(pairs)


def test_a_304_repeating_stored_fields_changes_only_the_date_and_the_figures() -> None:
    stored = _stored([("Cache-Control", "max-age=60"), ("Content-Type", "text/plain")],
                     shared=True, dated=True)
    merged = date_only(stored, _304(("Date", DATE1), ("ETag", ETAG),
                                    ("Cache-Control", "max-age=60"), ("Connection", "close")))
    assert merged is not None
    assert [k for k, _ in merged] == [k for k, _ in stored.header_pairs()]  # same order
    assert merged.by_name["date"] == [DATE1]
    entry = refreshed(stored, merged, request_time=T0 + 300, response_time=T0 + 300,
                      shared=True, heuristics=Heuristics())
    assert entry.born == T0 + 300 and entry.lifetime == 60.0
    assert entry.age(T0 + 300) == 0.0  # the new Date is the time of receipt
    assert entry.body is stored.body and entry.directives == stored.directives


def test_a_304_repeating_the_stored_date_too_keeps_the_stored_field_tuple() -> None:
    """A 304 in the same second as the stored response changes no field at all: the
    refreshed entry holds the stored tuples themselves (so replay.py's last head serves it),
    with its age figured again; a new Date makes a new tuple. When the age figured again
    is the stored one's too (the same Date: the age counts from it), nothing changed at
    all, and the refreshed entry is the stored one itself (immutable: nothing is made)."""
    stored = _stored([("Cache-Control", "no-cache")], shared=True, dated=True)
    same = date_only(stored, _304(("Date", DATE0), ("ETag", ETAG)))
    assert same is not None
    entry = refreshed(stored, same, request_time=T0 + 2, response_time=T0 + 3,
                      shared=True, heuristics=Heuristics())
    assert entry.values is stored.values and entry.names is stored.names
    assert entry.born == T0 and entry.age(T0 + 3) == 3.0  # Date is T0
    assert entry is stored  # (born, lifetime and directives the stored one's)
    # An Age stored with it: the age is figured again from the 304, which carried none
    # (§4.2.3), so the refreshed entry is a new one, its born moved, the field tuples
    # still shared.
    aged = _stored([("Cache-Control", "no-cache"), ("Age", "5")], shared=True, dated=True)
    again = date_only(aged, _304(("Date", DATE0), ("ETag", ETAG)))
    assert again is not None
    moved_age = refreshed(aged, again, request_time=T0 + 2, response_time=T0 + 3,
                          shared=True, heuristics=Heuristics())
    assert moved_age is not aged and moved_age.values is aged.values
    assert aged.born == T0 - 5 and moved_age.born == T0
    later = date_only(stored, _304(("Date", DATE1), ("ETag", ETAG)))
    assert later is not None
    moved = refreshed(stored, later, request_time=T0 + 300, response_time=T0 + 300,
                      shared=True, heuristics=Heuristics())
    assert moved.values is not stored.values and moved.get("date") == DATE1
    assert moved.headers[:2] == stored.headers[:2]  # (ETag first, as stored)


@pytest.mark.parametrize("pairs", [
    (("Date", DATE1), ("ETag", ETAG), ("Cache-Control", "max-age=120")),  # a new value
    (("Date", DATE1), ("ETag", ETAG), ("X-New", "1")),  # a field not stored
    (("Date", DATE1), ("ETag", ETAG), ("Age", "5")),  # Age: the figures change
    (("Date", DATE1), ("Date", DATE0), ("ETag", ETAG)),  # two Dates
    (("Date", DATE1), ("ETag", ETAG), ("Connection", "Date")),  # its Date is not merged
    (("ETag", ETAG),),  # no Date (with_date adds one before the rule runs)
    # One of two stored Cache-Control lines: the merge keeps only this one.
    (("Date", DATE1), ("ETag", ETAG), ("Cache-Control", "max-age=60")),
])
def test_the_rule_refuses_a_304_that_changes_more_than_the_date(
        pairs: tuple[tuple[str, str], ...]) -> None:
    stored = _stored([("Cache-Control", "max-age=60"), ("Cache-Control", "public")],
                     shared=True, dated=True)
    assert date_only(stored, _304(*pairs)) is None
