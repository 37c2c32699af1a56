"""RFC 9110 §13.2 Evaluation of preconditions, by a cache (RFC 9111 §4.3.2): If-Match
(§13.1.1) and If-Unmodified-Since (§13.1.4) on a GET or HEAD are evaluated against the
stored response the client would get: 412 when false, the response when true. Without a
usable stored response they go to the origin with the request, and nothing is stored."""

from __future__ import annotations

import pytest
from flow_support import ROUTE, T0, facts

from cacheproxy.http.conditional import precondition_fails
from cacheproxy.http.flow import Forward, PreconditionFailed, Serve, ServeStale, lookup

LM = "Sun, 31 Dec 2023 23:00:00 GMT"  # T0 - 3600
BEFORE_LM = "Sun, 31 Dec 2023 22:00:00 GMT"
AFTER_LM = "Mon, 01 Jan 2024 00:00:00 GMT"


@pytest.fixture
def fresh(stored):  # type: ignore[no-untyped-def]
    return stored({"Cache-Control": "max-age=60", "ETag": '"v1"', "Last-Modified": LM})


# -- §13.1.1 If-Match: strong comparison ---------------------------------------------------

@pytest.mark.parametrize(("if_match", "fails"), [
    ('"v1"', False), ('"v0", "v1"', False), ("*", False),
    ('"v2"', True), ('W/"v1"', True), ('"v0", "v2"', True),
])
def test_s13_1_1_if_match(fresh, if_match: str, fails: bool) -> None:
    assert precondition_fails(fresh, if_match, None) is fails


def test_s13_1_1_a_weak_stored_tag_never_matches(stored) -> None:
    entry = stored({"ETag": 'W/"v1"'})
    assert precondition_fails(entry, 'W/"v1"', None) and precondition_fails(entry, '"v1"', None)
    assert not precondition_fails(entry, "*", None)


def test_s13_1_1_no_stored_tag_fails_but_star(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60"})
    assert precondition_fails(entry, '"v1"', None) and not precondition_fails(entry, "*", None)


# -- §13.1.4 If-Unmodified-Since ----------------------------------------------------------

@pytest.mark.parametrize(("since", "fails"), [
    (LM, False), (AFTER_LM, False), (BEFORE_LM, True),
    ("not a date", False),  # an invalid date is ignored
])
def test_s13_1_4_if_unmodified_since(fresh, since: str, fails: bool) -> None:
    assert precondition_fails(fresh, None, since) is fails


def test_s13_1_4_without_a_modification_date_it_is_ignored(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60", "Date": AFTER_LM})
    assert not precondition_fails(entry, None, BEFORE_LM)


def test_s13_2_2_if_match_takes_precedence_over_if_unmodified_since(fresh) -> None:
    assert not precondition_fails(fresh, '"v1"', BEFORE_LM)
    assert precondition_fails(fresh, '"v2"', AFTER_LM)


def test_s13_2_1_only_for_a_2xx_response(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60"}, status=404)
    assert not precondition_fails(entry, '"v1"', BEFORE_LM)


# -- the flow: 412 from storage, the response, or the origin's to evaluate -----------------

@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_s13_2_2_a_false_precondition_on_a_fresh_response_is_412(fresh, method: str) -> None:
    d = lookup(facts(method, {"If-Match": '"v2"'}), (fresh,), now=T0 + 1, route=ROUTE)
    assert isinstance(d, PreconditionFailed) and d.entry is fresh and d.ttl == 59


@pytest.mark.parametrize("fields", [{"If-Match": '"v1"'}, {"If-Unmodified-Since": LM}])
def test_s13_2_2_a_true_precondition_serves_the_response(fresh, fields) -> None:
    d = lookup(facts("GET", fields), (fresh,), now=T0 + 1, route=ROUTE)
    assert isinstance(d, Serve) and d.entry is fresh


def test_s13_2_2_then_if_none_match_still_applies(fresh) -> None:
    """Steps 1-2 pass, step 3 (If-None-Match) is the client_answer step's (304)."""
    req = facts("GET", {"If-Match": '"v1"', "If-None-Match": '"v1"'})
    assert isinstance(lookup(req, (fresh,), now=T0 + 1, route=ROUTE), Serve)


def test_s13_2_2_stale_while_revalidate_is_judged_as_it_would_be_served(stored) -> None:
    entry = stored({"Cache-Control": "max-age=1, stale-while-revalidate=60", "ETag": '"v1"'})
    req = facts("GET", {"If-Match": '"v2"'})
    assert isinstance(lookup(req, (entry,), now=T0 + 5, route=ROUTE), PreconditionFailed)
    ok = lookup(facts("GET", {"If-Match": '"v1"'}), (entry,), now=T0 + 5, route=ROUTE)
    assert isinstance(ok, ServeStale)


def test_rfc9111_s4_3_2_without_a_usable_response_the_origin_evaluates(stored) -> None:
    stale = stored({"Cache-Control": "max-age=1", "ETag": '"v1"'})
    req = facts("GET", {"If-Match": '"v2"'})
    assert lookup(req, (stale,), now=T0 + 5, route=ROUTE) == Forward("bypass", "GET")
    assert lookup(req, (), now=T0, route=ROUTE) == Forward("bypass", "GET")
    head = facts("HEAD", {"If-Unmodified-Since": LM})
    assert lookup(head, (stale,), now=T0 + 5, route=ROUTE) == Forward("bypass", "HEAD",
                                                                     head_of=stale)
