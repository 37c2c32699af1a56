"""Request flow, step 2: the upstream answered (RFC 9111 §3, §3.2, §4.3.3-§4.3.4, §4.4,
§5.2.1.5; RFC 5861 §4; RFC 9110 §7.6.1). Every transition: Store, Update, Keep, Evict,
Pass, Refetch, ServeStale; who may evict (only the response's own reasons)."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from flow_support import KEY, ROUTE, T0, answer, facts

from cacheproxy.http.flow import (
    CacheSettings,
    Evict,
    Forward,
    Keep,
    Pass,
    Refetch,
    ServeStale,
    Store,
    Update,
    refresh_may_store,
)
from cacheproxy.http.storability import StorePolicy
from cacheproxy.http.stored import CachedResponse

MISS = Forward("uri-miss", "GET", may_store=True, collapse=True)
FRESH = {"Cache-Control": "max-age=60"}


def revalidating(entry, *, may_store: bool = True, reason: str = "stale") -> Forward:
    return Forward(reason, "GET", stored=entry, conditional=(("If-None-Match", '"v1"'),),
                   may_store=may_store)


# -- §3: Store ----------------------------------------------------------------------------

def test_s3_storable_answer_is_stored_under_the_key_and_variant() -> None:
    req = facts("GET", {"Accept-Language": "FR"})
    d = answer(MISS, 200, {**FRESH, "Vary": "Accept-Language"}, req=req)
    assert isinstance(d, Store) and d.replaces is None
    assert d.entry.key == KEY and d.entry.body == b""
    assert (d.entry.vary, d.entry.vary_values) == (("accept-language",), ("fr",))
    assert d.entry.lifetime == 60


def test_s3_1_fields_the_route_never_stores_are_left_out() -> None:
    route = CacheSettings(policy=StorePolicy(set_cookie="strip"),
                          excluded=frozenset({"access-control-allow-origin"}))
    d = answer(MISS, 200, {**FRESH, "Set-Cookie": "a=1", "Access-Control-Allow-Origin": "*"},
               route=route)
    assert isinstance(d, Store)
    assert d.entry.get("Set-Cookie") is None and d.entry.get("Access-Control-Allow-Origin") is None


def test_s3_a_new_representation_replaces_the_validated_one(stored) -> None:
    old = stored({**FRESH, "ETag": '"v1"'})
    d = answer(revalidating(old), 200, {**FRESH, "ETag": '"v2"'})
    assert isinstance(d, Store) and d.replaces is old


# -- Pass: nothing stored before, nothing now --------------------------------------------

def test_s5_2_2_5_response_no_store_on_a_miss_passes_and_marks_hit_for_pass() -> None:
    assert answer(MISS, 200, {"Cache-Control": "no-store"}) == Pass("no-store", True)


def test_s4_1_vary_star_is_not_stored() -> None:
    assert answer(MISS, 200, {**FRESH, "Vary": "*"}) == Pass("vary-star", True)


def test_too_big_by_content_length_is_not_stored() -> None:
    d = answer(MISS, 200, FRESH, route=CacheSettings(max_object_bytes=10), length=11)
    assert d == Pass("too-big", True)


def test_nothing_to_reuse_is_not_stored() -> None:
    """A 200 without freshness or validator could never be reused."""
    assert answer(MISS, 200, {}) == Pass("not-reusable", True)


def test_s3_5_authorization_miss_passes_without_hit_for_pass() -> None:
    """The reason is this request's: other users' requests for the URL may still share."""
    req = facts("GET", {"Authorization": "Bearer x"})
    assert answer(MISS, 200, FRESH, req=req) == Pass("authorization", False)


def test_bypass_and_method_forwards_pass_plainly() -> None:
    assert answer(Forward("bypass", "GET"), 200, FRESH) == Pass(None)
    assert answer(Forward("method", "OPTIONS"), 200, FRESH) == Pass(None)


# -- Evict: only the response's own reasons remove what is stored --------------------------

def test_s4_4_unsafe_method_invalidates_the_uri_and_same_origin_locations() -> None:
    d = answer(Forward("method", "POST"), 201, {"Location": "/new", "Content-Location":
                                                 "http://other.example/x"})
    assert d == Evict((KEY, "http://example.com/new"), "invalidated", invalidation=True)


def test_s9_3_3_a_post_answer_naming_its_uri_is_stored_after_invalidating__method_POST(
        ) -> None:
    """RFC 9110 §9.3.3: explicit freshness and Content-Location = the target URI make the
    answer the URI's new representation, which later GETs get; §4.4 still invalidates
    first (the URI's other variants, Location)."""
    req = facts("POST", {"Content-Type": "text/plain", "Accept-Language": "fr"}, body=True)
    d = answer(Forward("method", "POST"), 200, {**FRESH, "Content-Location": "/resource",
                                                 "Location": "/other",
                                                 "Vary": "Accept-Language"}, req=req)
    assert isinstance(d, Store) and not d.whole_first
    assert d.invalidates == (KEY, "http://example.com/other")
    assert (d.entry.key, d.entry.status, d.entry.lifetime) == (KEY, 200, 60)
    assert (d.entry.vary, d.entry.vary_values) == (("accept-language",), ("fr",))


@pytest.mark.parametrize("fields", [
    {**FRESH, "Content-Location": "/elsewhere"},          # another resource
    {**FRESH, "Content-Location": "http://other.example/resource"},
    {**FRESH},                                            # no Content-Location
    {"Content-Location": "/resource"},                    # no explicit freshness
    {**FRESH, "Content-Location": "/resource", "Set-Cookie": "a=1"},
    {"Cache-Control": "max-age=60, private", "Content-Location": "/resource"},
])
def test_s9_3_3_other_post_answers_only_invalidate(fields: dict[str, str]) -> None:
    d = answer(Forward("method", "POST"), 200, fields, req=facts("POST", body=True))
    assert isinstance(d, Evict) and d.keys[0] == KEY and d.reason == "invalidated"


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_s9_3_3_only_a_post_answer_may_be_stored(method: str) -> None:
    """RFC 9110 §9.3.4: "Responses to the PUT method are not cacheable"; PATCH is not
    defined as cacheable (RFC 5789 §2)."""
    d = answer(Forward("method", method), 200, {**FRESH, "Content-Location": "/resource"},
               req=facts(method, body=True))
    assert d == Evict((KEY,), "invalidated", invalidation=True)


def test_s9_3_3_a_post_answer_with_request_no_store_is_not_stored() -> None:
    req = facts("POST", {"Cache-Control": "no-store"}, body=True)
    d = answer(Forward("method", "POST"), 200, {**FRESH, "Content-Location": "/resource"},
               req=req)
    assert d == Evict((KEY,), "invalidated", invalidation=True)


def test_s4_4_an_error_answer_to_an_unsafe_method_invalidates_nothing() -> None:
    assert answer(Forward("method", "DELETE"), 500) == Pass(None)


def test_a_new_representation_that_may_not_be_stored_evicts(stored) -> None:
    old = stored({**FRESH, "ETag": '"v1"'})
    d = answer(revalidating(old), 200, {"Cache-Control": "private"})
    assert d == Evict((KEY,), "private", None, True)


# -- Keep: the request's reasons never evict (issue 9, defect 1) ---------------------------

def test_defect1_s5_2_1_5_request_no_store_keeps_what_is_stored(stored) -> None:
    """ "This directive ... does not apply to the already stored response" (§5.2.1.5)."""
    old = stored({**FRESH, "ETag": '"v1"'})
    req = facts("GET", {"Cache-Control": "no-store"})
    d = answer(revalidating(old, may_store=False, reason="request"), 200,
               {**FRESH, "ETag": '"v2"'}, req=req)
    assert d == Keep(old, "no-store")


def test_defect1_s3_5_authorization_with_max_age_0_keeps_what_is_stored(stored) -> None:
    old = stored({**FRESH, "ETag": '"v1"'})
    req = facts("GET", {"Authorization": "Bearer x", "Cache-Control": "max-age=0"})
    d = answer(revalidating(old, reason="request"), 200, FRESH, req=req)
    assert d == Keep(old, "authorization")


def test_an_error_answer_to_a_validation_keeps_what_is_stored(stored) -> None:
    old = stored({**FRESH, "ETag": '"v1"'})
    assert answer(revalidating(old), 404) == Keep(old, "not-reusable", None, True)


def test_defect2_rfc9110_s7_6_1_a_nominated_vary_field_is_not_stored(stored) -> None:
    """The client's Connection made Accept-Language hop-by-hop, so the origin never saw
    it: the answer is not the fr variant and must not be stored as one (§4.1)."""
    req = facts("GET", {"Connection": "Accept-Language", "Accept-Language": "fr"})
    fields = {**FRESH, "Vary": "Accept-Language"}
    assert answer(MISS, 200, fields, req=req) == Pass("connection-nominated", False)
    old = stored({**FRESH, "ETag": '"v1"'})
    assert answer(revalidating(old), 200, fields, req=req) == Keep(old, "connection-nominated")


def test_a_nominated_field_the_response_does_not_vary_on_is_harmless() -> None:
    req = facts("GET", {"Connection": "X-Debug", "X-Debug": "1"})
    assert isinstance(answer(MISS, 200, FRESH, req=req), Store)


# -- §4.3.4: a 304 -------------------------------------------------------------------------

def test_s4_3_4_a_selecting_304_updates_with_its_fields(stored) -> None:
    old = stored({"Cache-Control": "max-age=1", "ETag": '"v1"', "X-A": "old"})
    d = answer(revalidating(old), 304, {"ETag": '"v1"', "Cache-Control": "max-age=99",
                                        "X-A": "new"}, at=T0 + 5)
    assert isinstance(d, Update)
    assert d.view.get("X-A") == "new" and d.view.lifetime == 99 and d.view.body == b"body"
    assert d.entry.get("X-A") == "new" and d.entry.born == T0 + 5  # its Date


def test_s3_2_the_stored_copy_keeps_out_what_the_view_shows_this_client(stored) -> None:
    old = stored({**FRESH, "ETag": '"v1"'})
    route = CacheSettings(policy=StorePolicy(set_cookie="strip"))
    d = answer(revalidating(old), 304, {"ETag": '"v1"', "Set-Cookie": "sid=me"}, route=route)
    assert isinstance(d, Update)
    assert d.view.get("Set-Cookie") == "sid=me" and d.entry.get("Set-Cookie") is None


def test_defect8_s4_3_4_a_304_without_validators_cannot_select_one_with_a_validator(
        stored) -> None:
    old = stored({**FRESH, "ETag": '"v1"'})
    assert answer(revalidating(old), 304, {"Cache-Control": "max-age=60"}) == Refetch(
        Forward("stale", "GET", may_store=True))


@pytest.mark.parametrize("validators", [
    {"ETag": '"abcd"'},                                   # cc-resp-must-revalidate-stale,
    {"ETag": 'W/"abcdef"'},                               # conditional-etag-*-generate*,
    {"Last-Modified": "Sun, 31 Dec 2023 23:00:00 GMT"},   # conditional-lm-stale
], ids=["strong", "weak", "last-modified"])
def test_s4_3_4_a_bare_304_selects_none_with_a_validator__cc_resp_must_revalidate_stale(
        stored, validators: dict[str, str]) -> None:
    """The suite's server answers the cache's conditional request with a 304 that carries
    no validator (RFC 9110 §15.4.5 requires the ETag a 200 would have had); §4.3.4
    identifies a stored response for such a 304 only when it "also lacks a validator"
    (issue 9, defect 8): nothing is updated, the full response is asked for once, and the
    suite counts that second request as a retry. Also conditional-etag-vary-headers and
    cc-resp-no-cache-revalidate(-fresh). README, Limits."""
    old = stored({**FRESH, **validators})
    assert answer(revalidating(old), 304, {"Content-Type": "text/plain"}) == Refetch(
        Forward("stale", "GET", may_store=True))


def test_s4_3_4_a_304_with_another_strong_etag_updates_nothing__304_etag_update_response_ETag(
        stored) -> None:
    """§4.3.4: "If none of the stored responses contain at least one of the same strong
    validators, then the cache MUST NOT use the new response to update any stored
    responses". The suite's 304 names "ghijkl" for the stored "abcdef" and expects the
    stored response freshened (and its ETag kept): the MUST NOT forbids it."""
    old = stored({"Cache-Control": "max-age=2", "ETag": '"abcdef"'})
    d = answer(revalidating(old), 304, {"Cache-Control": "max-age=2", "ETag": '"ghijkl"'})
    assert d == Refetch(Forward("stale", "GET", may_store=True))


def test_s4_3_4_a_304_without_validators_selects_one_without(stored) -> None:
    old = stored({"Cache-Control": "max-age=1"})
    assert isinstance(answer(revalidating(old), 304, {}), Update)


def test_s4_3_4_a_304_for_another_tag_refetches(stored) -> None:
    old = stored({**FRESH, "ETag": '"v1"'})
    req = facts("HEAD", {"Cache-Control": "no-store"})
    d = answer(revalidating(old, may_store=False), 304, {"ETag": '"v2"'}, req=req)
    assert d == Refetch(Forward("stale", "HEAD", may_store=False))


def test_defect1_a_304_for_a_no_store_request_keeps_the_stored_response_as_it_was(
        stored) -> None:
    old = stored({**FRESH, "ETag": '"v1"'})
    req = facts("GET", {"Cache-Control": "no-store"})
    d = answer(revalidating(old, may_store=False), 304, {"ETag": '"v1"', "X-A": "new"},
               req=req)
    assert isinstance(d, Keep) and d.stored is old and d.serve is not None
    assert d.serve.get("X-A") == "new"  # the client gets the validated, merged response


def test_s3_2_a_304_bringing_no_store_evicts_but_answers_this_client(stored) -> None:
    old = stored({**FRESH, "ETag": '"v1"'})
    d = answer(revalidating(old), 304, {"ETag": '"v1"', "Cache-Control": "no-store"})
    assert isinstance(d, Evict) and d.keys == (KEY,) and d.serve is not None


# -- RFC 5861 §4: an error answer with stale-if-error --------------------------------------

def test_rfc5861_s4_an_error_answer_within_stale_if_error_serves_stale(stored) -> None:
    old = stored({"Cache-Control": "max-age=60, stale-if-error=600", "ETag": '"v1"'})
    d = answer(revalidating(old), 503, at=T0 + 100)
    assert d == ServeStale(old, 100.0, -40.0, refresh=False, detail="stale-if-error")


def test_rfc5861_s4_past_the_window_the_error_is_relayed(stored) -> None:
    old = stored({"Cache-Control": "max-age=60, stale-if-error=10", "ETag": '"v1"'})
    assert isinstance(answer(revalidating(old), 503, at=T0 + 100), Keep)


@pytest.mark.parametrize("fields", [{}, {"Cache-Control": "no-store"}])
def test_s4_an_origin_error_is_not_shared_and_marks_no_hit_for_pass(stored, fields) -> None:
    """§4: a 5xx that may not be stored answers no collapsed request; it is the origin's
    state, not the URL's: erred (its waiters go one at a time), no hit-for-pass."""
    old = stored({**FRESH, "ETag": '"v1"'})
    kept = answer(revalidating(old), 503, fields, at=T0 + 100)
    missed = answer(MISS, 500, fields)
    assert isinstance(kept, Keep) and isinstance(missed, Pass)
    assert kept.erred and missed.erred
    assert not kept.hit_for_pass and not missed.hit_for_pass
    assert not answer(MISS, 404, {"Cache-Control": "no-store"}).erred


def test_route_shared_false_stores_private() -> None:
    private = CacheSettings(policy=StorePolicy(shared=False))
    assert isinstance(answer(MISS, 200, {"Cache-Control": "private, max-age=60"},
                             route=private), Store)
    assert answer(MISS, 200, {"Cache-Control": "private, max-age=60"}) == Pass("private", True)
    assert ROUTE.shared


def test_s3_5_an_answer_made_for_one_users_credentials_evicts_nothing(stored) -> None:
    """A private answer to a request with Authorization or Cookie is that user's; the
    shared entry stays (else any client could evict it)."""
    old = stored({**FRESH, "ETag": '"v1"'})
    for fields in ({"Authorization": "Basic eDp5", "Cache-Control": "max-age=0"},
                   {"Cookie": "sid=alice"}):
        d = answer(revalidating(old, reason="request"), 200, {"Cache-Control": "private"},
                   req=facts("GET", fields))
        assert d == Keep(old, "private")


# -- RFC 5861 §3: a background refresh's new response, once whole ------------------------

def test_rfc5861_s3_a_refresh_stores_over_what_it_refreshed_never_over_a_newer_one(
        stored) -> None:
    """Stored where the store still holds the response refreshed, nothing of its variant,
    or only older ones by Date (§4); not over one stored meanwhile with a later or equal
    Date (a reload's answer)."""
    def at(t: float, tag: str) -> CachedResponse:
        return stored({**FRESH, "ETag": f'"{tag}"', "Date": formatdate(t, usegmt=True)},
                      response_time=t)

    refreshed, new = at(T0, "v1"), at(T0 + 10, "v2")
    assert refresh_may_store(refreshed, new, (refreshed,))
    assert refresh_may_store(refreshed, new, ())
    assert refresh_may_store(refreshed, new, (at(T0 + 5, "other"),))
    assert not refresh_may_store(refreshed, new, (at(T0 + 10, "v3"),))
    assert not refresh_may_store(refreshed, new, (at(T0 + 11, "v3"),))
