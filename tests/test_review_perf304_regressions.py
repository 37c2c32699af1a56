"""Review perf304: the revalidation's own work (issue 10: revalidation >= 1.5x Squid's
req/s on one core). It looked at what a 304 costs beyond a pass-through, by instructions
(bench/instructions.py, and callgrind on each step alone): the flow's step for the 304
(http/flow/answer.py _validated: revalidation.selects, date_only, stored.refreshed and
_made, the storability of the merged fields), the lookup that sends the validators, the
store's put and the reply from storage. Its changes are of shape, not of rule: date_only
compares the 304 with the stored fields through their shape's index and hands out the
stored fields' shared, read-only view when the 304 repeats the stored Date; refreshed
puts the new Date in place rather than zipping the merged list again; an entry is filled
by plain slot stores (stored._Unsealed) and then sealed.

These tests pin what those shortcuts rely on and no earlier test did: every way an entry
is made gives a sealed, immutable CachedResponse; the shared view is never changed by the
step that reads it, nor handed out for another entry. None failed before the change (no
behaviour was meant to change). Severity, were they to fail: an entry that can be
changed after it is stored, or a view of another entry's fields, is a wrong answer for
every client of a URL (high)."""

from __future__ import annotations

import gc
import weakref
from email.utils import formatdate

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.http.cache_control import parse_response_directives
from cacheproxy.http.fields import FieldList
from cacheproxy.http.flow import CacheSettings, Forward, Update, answered, request_facts
from cacheproxy.http.revalidation import date_only
from cacheproxy.http.stored import (
    CachedResponse,
    Heuristics,
    make_stored_response,
    refreshed,
    stored_field_list,
)
from cacheproxy.http.targeted import NO_TARGETING, Targeting, governing
from cacheproxy.store import MemoryStore
from cacheproxy.store.serial import decode, encode

T0 = 1_704_067_200.0
DATE0 = formatdate(T0, usegmt=True)
DATE1 = formatdate(T0 + 10, usegmt=True)
_SETTINGS = settings(max_examples=200, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _entry(fields: list[tuple[str, str]], key: str = "http://o/x") -> CachedResponse:
    return make_stored_response(
        key=key, vary=(), vary_values=(), status=200, pairs=fields, body=b"body",
        request_time=T0, response_time=T0, shared=True, heuristics=Heuristics())


def _sealed(entry: CachedResponse) -> None:
    assert type(entry) is CachedResponse
    for name in ("key", "body", "born", "lifetime", "values"):
        with pytest.raises(AttributeError):
            setattr(entry, name, getattr(entry, name))
        with pytest.raises((AttributeError, TypeError)):  # (refused, either way)
            delattr(entry, name)
    assert weakref.ref(entry)() is entry  # (replay.py's memos hold entries weakly)
    assert entry == entry.replace() and hash(entry) == hash(entry.replace())


def test_every_way_an_entry_is_made_gives_a_sealed_immutable_response() -> None:
    """An entry is now filled by plain slot stores on a subclass (stored._Unsealed) and
    then made a CachedResponse: the constructor, make_stored_response, refreshed, replace
    and the Redis store's decoding must each give exactly a CachedResponse (the store and
    the quick path test `type(x) is CachedResponse`), immutable, weakly referable, equal
    to its copy. Wrong, a stored response could be changed under the clients that share
    it, or a store would take it for a tuple of variants (store/memory.py)."""
    made = _entry([("Date", DATE0), ("Cache-Control", "max-age=60"), ("ETag", '"v1"')])
    direct = CachedResponse(key="k", vary=("accept",), vary_values=("a",), status=200,
                            headers=("Date", DATE0), body=b"", response_time=T0,
                            initial_age=0.0, lifetime=1.0,
                            directives=parse_response_directives("max-age=1"))
    merged = date_only(made, FieldList([("Date", DATE1), ("ETag", '"v1"')]))
    assert merged is not None
    fresh = refreshed(made, merged, request_time=T0 + 9, response_time=T0 + 10,
                      shared=True, heuristics=Heuristics())
    copy = made.replace(body=b"other", lifetime=5.0)
    decoded = decode(encode(made))
    for entry in (made, direct, fresh, copy, decoded):
        _sealed(entry)
    assert direct.variant == (("accept",), ("a",)) and direct.born == T0
    assert fresh.values[0] == DATE1 and fresh.born == T0 + 9  # (a second on the way)
    assert copy.body == b"other" and copy.lifetime == 5.0 and copy.values is made.values
    store = MemoryStore(1 << 20)
    assert store.put_now(fresh) and not gc.is_tracked(fresh)
    assert store.peek("http://o/x") == (fresh,)


@_SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["Cache-Control", "ETag", "X-Custom", "Vary",
                                           "Content-Type", "Set-Cookie"]),
                          st.sampled_from(["max-age=60", "no-cache", '"v1"', "a", "b"])),
                max_size=6),
       st.booleans())
def test_the_stored_fields_view_is_only_read_and_only_for_its_own_entry(
        fields: list[tuple[str, str]], other_first: bool) -> None:
    """date_only hands out the stored fields' one shared view (stored_fields_view) for a
    304 that repeats the stored Date, rather than a new list per 304. The flow's step
    reads it (governing, Vary, storability, refreshed) and must never change it: a 304
    answered through it leaves it equal to the stored fields. And a view is never handed
    out for another entry, even one of the same shape and equal values (compared by the
    tuples' identity: the view holds them, so no new tuple takes their place). Wrong,
    one URL's fields would be stored or served for another's (RFC 9111 §3.2)."""
    a = _entry([("Date", DATE0), *fields, ("ETag", '"v1"')], "http://o/a")
    b = _entry([("Date", DATE0), *fields, ("ETag", '"v1"'), ("X-Other", "b")], "http://o/b")
    first, second = (b, a) if other_first else (a, b)
    r304 = FieldList([("Date", DATE0), ("ETag", '"v1"')])
    for entry in (first, second, first):
        view = date_only(entry, r304)
        if view is None:  # (a name on more than one line: the general merge's way)
            continue
        assert list(view) == entry.header_pairs()
        assert view.by_name == stored_field_list(entry).by_name
    fwd = Forward("stale", "GET", stored=a, conditional=(("If-None-Match", '"v1"'),),
                  may_store=True, collapse=True)
    req = request_facts("GET", CIMultiDictProxy(CIMultiDict()), has_body=False)
    route = CacheSettings(grant_varies=True)
    d = answered(fwd, status=304, fields=r304, length=None, req=req, route=route,
                 key=a.key, request_time=T0 + 1, response_time=T0 + 1)
    view = date_only(a, r304)
    if view is not None:  # (the 304 repeats the stored fields: they stay as they were)
        assert list(view) == a.header_pairs()
        assert view.by_name == stored_field_list(a).by_name
        if isinstance(d, Update):
            assert d.entry.header_pairs() == a.header_pairs()


@_SETTINGS
@given(st.lists(st.tuples(st.sampled_from([True, False]), st.sampled_from([0.1, 0.5]),
                          st.sampled_from(["s-maxage=30, max-age=5", "no-cache", None]),
                          st.booleans()),
                min_size=1, max_size=6))
def test_a_refresh_figures_its_lifetime_under_its_own_settings(
        steps: list[tuple[bool, float, str | None, bool]]) -> None:
    """stored.refreshed keeps the last refresh's figures (directives, Date, Age, lifetime)
    for the very same field tuples, so a URL revalidated many times a second figures them
    once. They must be figured again whenever what they came from differs: shared or
    private (s-maxage, §5.2.2.10), the heuristic fraction (§4.2.2), the directives this
    cache follows (a CDN-Cache-Control it targets, RFC 9213 §2.2), or another Date. Each
    refresh must give what make_stored_response gives for the merged fields. Wrong, a
    reload that changes cache.shared or the heuristics would leave a revalidated URL
    fresh for the old settings' time (severity: medium)."""
    fields = [("Date", DATE0), ("Last-Modified", formatdate(T0 - 86400, usegmt=True)),
              ("Cache-Control", "no-cache"), ("CDN-Cache-Control", "max-age=7"),
              ("ETag", '"v1"')]
    entry = _entry(fields)
    for shared, fraction, targeted, later in steps:
        targeting = Targeting() if targeted else NO_TARGETING
        date = DATE1 if later else DATE0
        merged = date_only(entry, FieldList([("Date", date), ("ETag", '"v1"')]))
        assert merged is not None
        heuristics = Heuristics(fraction=fraction)
        got = refreshed(entry, merged, request_time=T0 + 20, response_time=T0 + 20,
                        shared=shared, heuristics=heuristics, targeting=targeting,
                        rules=governing(merged, targeting))
        want = make_stored_response(
            key=entry.key, vary=(), vary_values=(), status=200, pairs=list(merged),
            body=entry.body, request_time=T0 + 20, response_time=T0 + 20, shared=shared,
            heuristics=heuristics, targeting=targeting)
        assert (got.lifetime, got.born, got.directives, got.values) == \
            (want.lifetime, want.born, want.directives, want.values)
        entry = got
