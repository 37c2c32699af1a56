"""Request flow, step 1: lookup (RFC 9111 §4, §4.2, §4.3.1, §5.2.1; RFC 5861 §3;
RFC 9211 §2.2). Every transition: bypass, Forward (miss, vary-miss, stale, request),
Serve, ServeStale, Refuse; collapsing and the collapsed waiter's second look."""

from __future__ import annotations

import pytest
from flow_support import ROUTE, T0, facts

from cacheproxy.http.flow import (
    CacheSettings,
    Forward,
    Refuse,
    Serve,
    ServeStale,
    Waited,
    background_refresh,
    bypass,
    lookup,
)

# -- RFC 9211 §2.2: what never looks the cache up ------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_other_methods_go_forward_as_method(method: str) -> None:
    assert bypass(facts(method)) == Forward("method", method)


@pytest.mark.parametrize("field", ["Range", "If-Range"])
def test_rfc9110_s14_2_a_range_miss_fills_the_cache(field: str) -> None:
    """The whole representation is fetched and the range cut from it (answered()); a
    request that may not store passes its range to the origin."""
    req = facts("GET", {field: "x"})
    assert bypass(req) is None  # a stored response may answer it (RFC 9110 §14.2)
    assert lookup(req, (), now=T0, route=ROUTE) == Forward(
        "uri-miss", "GET", may_store=True, collapse=True)
    no_store = facts("GET", {field: "x", "Cache-Control": "no-store"})
    assert lookup(no_store, (), now=T0, route=ROUTE) == Forward("bypass", "GET")


@pytest.mark.parametrize("field", ["If-Match", "If-Unmodified-Since", "Range"])
def test_rfc9110_s13_2_preconditions_look_the_cache_up(field: str) -> None:
    """Evaluated against a stored response (test_rfc9110_s13_2_preconditions.py)."""
    assert bypass(facts("GET", {field: "x"})) is None


def test_a_get_with_a_body_bypasses() -> None:
    assert bypass(facts("GET", body=True)) == Forward("bypass", "GET")


def test_plain_get_and_head_look_the_cache_up() -> None:
    assert bypass(facts("GET")) is None
    assert bypass(facts("HEAD", {"If-None-Match": '"a"'})) is None


# -- misses -----------------------------------------------------------------------------

def test_s4_uri_miss_may_store_and_collapse() -> None:
    d = lookup(facts(), (), now=T0, route=ROUTE)
    assert d == Forward("uri-miss", "GET", may_store=True, collapse=True)
    assert d.strips_client_conditionals  # §4.3.2: the cache answers them itself


def test_s4_1_vary_miss(stored) -> None:
    fr = stored({"Vary": "Accept-Language", "Cache-Control": "max-age=60"},
                vary=("accept-language",), vary_values=("fr",))
    d = lookup(facts("GET", {"Accept-Language": "de"}), (fr,), now=T0, route=ROUTE)
    assert isinstance(d, Forward) and d.reason == "vary-miss" and d.stored is None


def test_rfc9110_s9_3_2_head_miss_is_sent_as_get() -> None:
    assert lookup(facts("HEAD"), (), now=T0, route=ROUTE).method == "GET"


def test_s5_2_1_5_no_store_miss_sends_the_method_and_stores_nothing() -> None:
    d = lookup(facts("HEAD", {"Cache-Control": "no-store"}), (), now=T0, route=ROUTE)
    assert d == Forward("uri-miss", "HEAD", may_store=False, collapse=False)
    assert not d.strips_client_conditionals


@pytest.mark.parametrize("conditional", [{"If-None-Match": '"a"'},
                                         {"If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"}])
def test_s4_3_2_a_miss_that_cannot_fill_sends_the_clients_conditionals(conditional) -> None:
    """The client's validators are stripped only so that the cache can fill from a full
    answer. After an answer no one could store (hit-for-pass), or with Authorization
    (§3.5: seldom storable), they go to the origin, whose 304 the client then gets
    (Varnish's pass); without a conditional the request still tries to fill."""
    for req, passed in ((facts("GET", conditional), True),
                        (facts("GET", {**conditional, "Authorization": "Bearer x"}), False),
                        (facts("HEAD", {**conditional, "Authorization": "Bearer x"}), True)):
        d = lookup(req, (), now=T0, route=ROUTE, recently_passed=passed)
        assert d == Forward("bypass", req.method) and not d.strips_client_conditionals
    d = lookup(facts("GET", conditional), (), now=T0, route=ROUTE)  # no reason: it fills
    assert d.may_store and d.strips_client_conditionals


@pytest.mark.parametrize("fields", [{"Range": "bytes=0-99"},
                                    {"Range": "bytes=0-99", "If-Range": '"a"'}])
def test_rfc9110_s14_2_a_miss_that_cannot_fill_sends_the_clients_range(fields) -> None:
    """The Range is left out upstream only so that the cache can fill from the whole
    representation and cut the part from it. After an answer no one could store
    (hit-for-pass), or with Authorization, it goes to the origin as it is: one request,
    not a whole GET abandoned once seen unstorable and then the Range again."""
    for req, passed in ((facts("GET", fields), True),
                        (facts("GET", {**fields, "Authorization": "Bearer x"}), False)):
        d = lookup(req, (), now=T0, route=ROUTE, recently_passed=passed)
        assert d == Forward("bypass", "GET") and not d.strips_client_conditionals
    d = lookup(facts("GET", fields), (), now=T0, route=ROUTE)  # no reason: it fills
    assert d.may_store and d.strips_client_conditionals
    d = lookup(facts("GET"), (), now=T0, route=ROUTE, recently_passed=True)
    assert d == Forward("uri-miss", "GET", may_store=True)
    d = lookup(facts("GET", {"Authorization": "Bearer x"}), (), now=T0, route=ROUTE)
    assert d.may_store  # (public, s-maxage or must-revalidate make it storable, §3.5)


def test_s5_2_1_7_only_if_cached_miss_is_504() -> None:
    d = lookup(facts("GET", {"Cache-Control": "only-if-cached"}), (), now=T0, route=ROUTE)
    assert isinstance(d, Refuse) and d.status == 504 and d.detail == "only-if-cached"


# -- hits -------------------------------------------------------------------------------

def test_s4_2_fresh_is_served(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60"})
    assert lookup(facts(), (entry,), now=T0 + 10, route=ROUTE) == Serve(entry, 10.0, 50.0)


def test_s5_2_1_2_stale_within_max_stale_is_served(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60"})
    d = lookup(facts("GET", {"Cache-Control": "max-stale=30"}), (entry,), now=T0 + 80,
               route=ROUTE)
    assert d == Serve(entry, 80.0, -20.0)


def test_rfc5861_s3_stale_while_revalidate_serves_and_refreshes(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60, stale-while-revalidate=30"})
    d = lookup(facts(), (entry,), now=T0 + 70, route=ROUTE)
    assert d == ServeStale(entry, 70.0, -10.0, refresh=True, detail="stale-while-revalidate")


def test_rfc5861_s3_no_store_request_gets_stale_but_triggers_no_refresh(stored) -> None:
    """§5.2.1.5: nothing of a no-store exchange is stored, so no refresh is made for it."""
    entry = stored({"Cache-Control": "max-age=60, stale-while-revalidate=30"})
    d = lookup(facts("GET", {"Cache-Control": "no-store"}), (entry,), now=T0 + 70,
               route=ROUTE)
    assert isinstance(d, ServeStale) and not d.refresh


# -- forward to validate ------------------------------------------------------------------

def test_s4_3_1_stale_is_validated_with_the_stored_validators(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60", "ETag": '"v1"'})
    d = lookup(facts("HEAD"), (entry,), now=T0 + 61, route=ROUTE)
    assert d == Forward("stale", "GET", stored=entry,
                        conditional=(("If-None-Match", '"v1"'),), may_store=True,
                        collapse=False)  # HEAD: only GETs wait for one another


def test_s5_2_1_4_request_no_cache_forwards_as_request(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60", "ETag": '"v1"'})
    d = lookup(facts("GET", {"Cache-Control": "no-cache"}), (entry,), now=T0, route=ROUTE)
    assert isinstance(d, Forward) and d.reason == "request" and d.collapse


def test_s5_2_2_4_no_cache_response_is_validated_alone(stored) -> None:
    """A response that demands validation per request: another's validation is not this
    request's (no collapsing)."""
    entry = stored({"Cache-Control": "no-cache", "ETag": '"v1"'})
    d = lookup(facts(), (entry,), now=T0, route=ROUTE)
    assert isinstance(d, Forward) and d.reason == "stale" and not d.collapse


def test_s5_2_1_7_only_if_cached_with_a_stale_entry_is_504(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60"})
    d = lookup(facts("GET", {"Cache-Control": "only-if-cached"}), (entry,), now=T0 + 61,
               route=ROUTE)
    assert isinstance(d, Refuse) and d.status == 504


def test_s5_2_1_5_no_store_request_validates_but_may_not_store(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60", "ETag": '"v1"'})
    d = lookup(facts("GET", {"Cache-Control": "no-store, max-age=0"}), (entry,), now=T0,
               route=ROUTE)
    assert isinstance(d, Forward) and d.stored is entry and not d.may_store


# -- collapsing ----------------------------------------------------------------------------

def test_hit_for_pass_and_route_setting_turn_collapsing_off() -> None:
    assert not lookup(facts(), (), now=T0, route=ROUTE, recently_passed=True).collapse
    assert not lookup(facts(), (), now=T0, route=CacheSettings(collapse=False)).collapse


def test_rfc9110_s7_6_3_a_request_that_came_through_this_cache_does_not_collapse() -> None:
    """Its Via names this cache: in a loop back into the process it would wait for its
    own earlier hop; it still may be stored."""
    assert lookup(facts(), (), now=T0, route=ROUTE).collapse
    d = lookup(facts(), (), now=T0, route=ROUTE, passed_here=True)
    assert not d.collapse and d.may_store


def test_collapsed_waiter_asking_validation_takes_the_leaders_answer(stored) -> None:
    """max-age=0 from a waiter: the response stored from the leader's answer, which came
    after the waiter began to wait, was validated after its request was made."""
    old = stored({"Cache-Control": "max-age=60"}, request_time=T0, response_time=T0)
    entry = stored({"Cache-Control": "max-age=60"}, request_time=T0 + 1, response_time=T0 + 1)
    req = facts("GET", {"Cache-Control": "max-age=0"})
    d = lookup(req, (old,), now=T0 + 1, route=ROUTE)
    assert isinstance(d, Forward) and d.stored is old and d.collapse
    # (born and values by value: a copy read back from Redis is the same response)
    copy = entry.replace(body=bytes(entry.body))
    assert lookup(req, (copy,), now=T0 + 2, route=ROUTE,
                  waited=Waited((entry.born, entry.values))) == Serve(copy, 1.0, 59.0)
    # Nothing stored after it began to wait (the leader's answer was not stored, or
    # came before), or another response: validate, alone (never collapsed again).
    for mark in (None, (old.born, old.values)):
        d = lookup(req, (entry,), now=T0 + 2, route=ROUTE, waited=Waited(mark))
        assert isinstance(d, Forward) and d.reason == "request" and not d.collapse


def test_rfc5861_s3_background_refresh_has_no_client_directives(stored) -> None:
    entry = stored({"Cache-Control": "max-age=1, stale-while-revalidate=60",
                    "Last-Modified": "Sun, 31 Dec 2023 23:00:00 GMT"})
    req, fwd = background_refresh(facts("HEAD", {"Cache-Control": "no-cache"}), entry)
    assert req.method == "GET" and not req.directives.no_cache
    assert fwd == Forward("stale", "GET", stored=entry, may_store=True, conditional=(
        ("If-Modified-Since", "Sun, 31 Dec 2023 23:00:00 GMT"),))
