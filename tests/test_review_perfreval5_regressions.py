"""Review perfreval5 (issue 10: revalidation >= 1.5x Squid's req/s on one core): a
revalidation's own steps beyond a pass-through's. It looked at the flow's step for a 304
(answer._validated, _merged_304, _judged, freshened_still_held), stored.refreshed, the
lookup's revalidation branch (reuse.decide_reuse, revalidation.validating_fields), the
driver's validated_now / reply_validated / served and respond.stored_response.

What changed: _validated hands out again the Update it made for the same stored response
(a 304 that repeats the stored Date refreshes the stored response into itself, cbd3a47)
when every input it was decided from is the same (answer._last_update says which). These
tests pin that an input that differs is decided afresh: each compares the decision made
right after a remembered one with the decision made with nothing remembered. A memo keyed
on the stored response alone fails every one of them."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import pytest
from multidict import CIMultiDict

from cacheproxy.http.fields import FieldList
from cacheproxy.http.flow import CacheSettings, Forward, Update, answered, request_facts
from cacheproxy.http.flow import answer as answer_module
from cacheproxy.http.flow.lookup import lookup
from cacheproxy.http.stored import CachedResponse, Heuristics, make_stored_response

T0 = 1_704_067_200.0  # Mon, 01 Jan 2024 00:00:00 GMT
DATE0 = "Mon, 01 Jan 2024 00:00:00 GMT"
KEY = "http://example/r"
STORED = [("Date", DATE0), ("Content-Type", "text/plain"), ("Cache-Control", "no-cache"),
          ("ETag", '"v1"'), ("Last-Modified", "Sun, 31 Dec 2023 00:00:00 GMT")]
NOT_MODIFIED = [("Date", DATE0), ("Cache-Control", "no-cache"), ("ETag", '"v1"')]
ROUTE = CacheSettings()
# (the module: the package exports its lookup function under the same name)
lookup_module = importlib.import_module("cacheproxy.http.flow.lookup")


def _stored(body: bytes = b"body") -> CachedResponse:
    return make_stored_response(
        key=KEY, vary=(), vary_values=(), status=200, pairs=FieldList(STORED), body=body,
        request_time=T0, response_time=T0, shared=True, heuristics=Heuristics())


def _facts(*fields: tuple[str, str]) -> Any:
    return request_facts("GET", CIMultiDict([("Host", "example"), *fields]), has_body=False)


def _forget() -> None:
    answer_module._last_update = None
    answer_module._last_merged = None
    answer_module._last_judged = None


def _answer(stored: CachedResponse, req: Any = None, fields: list[tuple[str, str]] | None = None,
            route: CacheSettings = ROUTE, at: float = T0 + 0.25) -> Any:
    req = _facts() if req is None else req
    fwd = lookup(req, (stored,), now=at, route=route)
    assert isinstance(fwd, Forward) and fwd.stored is stored
    return answered(fwd, 304, FieldList(NOT_MODIFIED if fields is None else fields), None,
                    req, route, KEY, at, at + 0.001)


def _same(a: Any, b: Any) -> None:
    assert type(a) is type(b), (a, b)
    for f in dataclasses.fields(b):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(y, CachedResponse):
            assert (x.header_pairs(), x.born, x.lifetime, x.directives, x.body) == (
                y.header_pairs(), y.born, y.lifetime, y.directives, y.body), f.name
        else:
            assert x == y, f.name


@pytest.mark.parametrize("case", ["authorization", "no-store", "private-304", "new-etag",
                                  "too-big", "requested-before-date"])
def test_a_remembered_update_is_not_handed_to_other_inputs(case: str) -> None:
    """A 304 that repeats the stored Date and changes nothing leaves the stored response
    as it is (refreshed hands it back itself), and _validated now remembers that Update
    for the next 304 to the same stored response. Were the memo keyed on the stored
    response alone, a request with Authorization (RFC 9111 §3.5: not stored without
    public), a no-store request (§5.2.1.5), a 304 that brings `private` (§3, §4.3.4: the
    merged response is judged like a new one) or another ETag (§4.3.4: it selects
    nothing), a route whose object limit the body passes, or a 304 requested before the
    stored Date (§4.2.3: born at the request time, a new entry) would be told the stored
    response was validated and stored as it was: a private answer kept for everyone, or
    a stale one served as fresh (nginx and Squid judge every 304's merged headers).
    Severity, were it to fail: high."""
    stored = _stored()
    _forget()
    first = _answer(stored)
    assert type(first) is Update and first.entry is stored and first.view is stored
    assert _answer(stored) is first  # (remembered: the same inputs, the same decision)
    req, fields, route, at = _facts(), None, ROUTE, T0 + 0.25
    if case == "authorization":
        req = _facts(("Authorization", "Basic eA=="))
    elif case == "no-store":
        req = _facts(("Cache-Control", "no-store"))
    elif case == "private-304":
        fields = [*NOT_MODIFIED, ("Cache-Control", "private")]
    elif case == "new-etag":
        fields = [("Date", DATE0), ("ETag", '"v2"')]
    elif case == "too-big":
        route = CacheSettings(max_object_bytes=2)
    else:
        at = T0 - 5.0  # (this clock behind the origin's Date)
    after_memo = _answer(stored, req, fields, route, at)
    _forget()
    fresh = _answer(stored, req, fields, route, at)
    assert not (type(after_memo) is Update and after_memo.entry is stored), after_memo
    _same(after_memo, fresh)


def test_a_remembered_update_holds_a_small_body_only() -> None:
    """The remembered Update refers to the stored response it was made for (view, entry,
    stored), so the memo holds that response and its body after the store evicts it: up
    to max_object_bytes (8 MiB) that cache.max_bytes does not count, had it no bound. It
    remembers responses of bodies up to 64 KiB only (a larger one is decided each time,
    as before). Severity, were it to fail: low."""
    for size, kept in ((answer_module._UPDATE_BODY_MAX, True),
                       (answer_module._UPDATE_BODY_MAX + 1, False)):
        stored = _stored(b"x" * size)
        _forget()
        first = _answer(stored)
        assert type(first) is Update and first.entry is stored
        again = _answer(stored)
        assert type(again) is Update and again.entry is stored
        assert (again is first) is kept, size
        held = answer_module._last_update
        assert (held is not None and held[0] is stored) is kept


def _forget_lookup() -> None:
    lookup_module._last_validating = None


@pytest.mark.parametrize("case", ["only-if-cached", "no-store", "sibling", "new-response"])
def test_a_remembered_validation_is_not_handed_to_other_inputs(case: str) -> None:
    """lookup() now remembers the last Forward that validates a stored no-cache response
    for the next request for it. Were it keyed on the stored response alone, a request
    with only-if-cached (RFC 9111 §5.2.1.7: a 504, nothing goes forward) or no-store
    (§5.2.1.5: its answer is stored for no one), a key that came to hold a second variant
    with the same strong ETag (§4.3.4: a 304 updates both), or a new response stored for
    the key (validated with its own validators, §4.3.1) would get the first request's
    Forward: a 504 not given, a no-store answer stored, a sibling left stale, or the old
    ETag sent (nginx and Squid decide every request's lookup afresh). Severity, were it
    to fail: high."""
    stored = _stored()
    _forget_lookup()
    first = lookup(_facts(), (stored,), now=T0 + 1, route=ROUTE)
    assert isinstance(first, Forward) and first.stored is stored
    assert lookup(_facts(), (stored,), now=T0 + 2, route=ROUTE) is first  # (remembered)
    req, variants, route, passed = _facts(), (stored,), ROUTE, False
    if case == "only-if-cached":
        req = _facts(("Cache-Control", "only-if-cached"))
    elif case == "no-store":
        req = _facts(("Cache-Control", "no-store"))
    elif case == "sibling":
        other = make_stored_response(
            key=KEY, vary=("accept",), vary_values=("text/html",), status=200,
            pairs=FieldList([*STORED, ("Vary", "Accept")]), body=b"body",
            request_time=T0, response_time=T0, shared=True, heuristics=Heuristics())
        variants = (stored, other)
    else:
        variants = (_stored(b"new"),)
    after_memo = lookup(req, variants, now=T0 + 3, route=route, recently_passed=passed)
    _forget_lookup()
    fresh = lookup(req, variants, now=T0 + 3, route=route, recently_passed=passed)
    assert after_memo == fresh and after_memo is not first, (after_memo, fresh)


@pytest.mark.parametrize("at", [T0 - 3600, T0, T0 + 0.5, T0 + 86_400 * 365])
def test_a_no_cache_response_is_validated_the_same_at_any_age(at: float) -> None:
    """What lets lookup() remember the Forward for a no-cache response without keying it
    on the time: RFC 9111 §5.2.2.4, a no-cache response is not used without successful
    validation whatever its age, and decide_reuse says so before any freshness. Were a
    later change to let the age decide anything for it (serving it fresh, or stale under
    max-stale), the remembered Forward would be wrong: this fails first. Severity, were
    it to fail: high."""
    stored = _stored()
    for req in (_facts(), _facts(("Cache-Control", "max-stale=99999999")),
                _facts(("Cache-Control", "min-fresh=1"))):
        _forget_lookup()
        d = lookup(req, (stored,), now=at, route=ROUTE)
        _forget_lookup()
        base = lookup(req, (stored,), now=T0 + 1, route=ROUTE)
        assert isinstance(d, Forward) and d == base and d.reason == "stale"
