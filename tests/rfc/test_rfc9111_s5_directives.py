"""RFC 9111 §5.2 Cache-Control (parsing, §5.2.1 request and §5.2.2 response
directives and their effect on reuse), §5.4 Pragma, and RFC 5861 §3
stale-while-revalidate / §4 stale-if-error."""

from __future__ import annotations

import pytest

from cacheproxy.http.cache_control import (
    MAX_DELTA,
    RequestDirectives,
    ResponseDirectives,
    parse_request_directives,
    parse_response_directives,
)
from cacheproxy.http.reuse import (
    Action,
    Reuse,
    may_serve_stale_on_error,
    shareable_validation,
    stale_forbidden,
)

T0 = 1_704_067_200.0  # Mon, 01 Jan 2024 00:00:00 GMT


# -- §5.2 parsing the field ------------------------------------------------

def test_s5_2_absent_or_empty_is_no_directive() -> None:
    assert parse_response_directives(None) == ResponseDirectives()
    assert parse_response_directives("") == ResponseDirectives()
    assert parse_request_directives(None) == RequestDirectives()


def test_s5_2_2_every_response_directive() -> None:
    d = parse_response_directives(
        "max-age=1, s-maxage=2, public, private, no-cache, no-store, must-revalidate, "
        "proxy-revalidate, must-understand, immutable, stale-while-revalidate=3, "
        "stale-if-error=4"
    )
    assert d == ResponseDirectives(
        max_age=1, s_maxage=2, public=True, private=True, no_cache=True, no_store=True,
        must_revalidate=True, proxy_revalidate=True, must_understand=True, immutable=True,
        stale_while_revalidate=3, stale_if_error=4,
    )
    assert d.has_explicit_freshness


def test_s5_2_1_every_request_directive() -> None:
    d = parse_request_directives(
        "max-age=1, max-stale=2, min-fresh=3, no-cache, no-store, only-if-cached, "
        "stale-if-error=4"
    )
    assert d == RequestDirectives(max_age=1, max_stale=2, min_fresh=3, no_cache=True,
                                  no_store=True, only_if_cached=True, stale_if_error=4)


def test_s5_2_directive_names_are_case_insensitive() -> None:
    assert parse_response_directives("MAX-AGE=5, No-Store") == ResponseDirectives(
        max_age=5, no_store=True)
    assert parse_request_directives("Max-Stale, ONLY-IF-CACHED") == RequestDirectives(
        max_stale=MAX_DELTA, only_if_cached=True)


def test_s5_2_whitespace_and_empty_members_are_tolerated() -> None:
    assert parse_response_directives(" ,  max-age = 5 ,, public ,") == ResponseDirectives(
        max_age=5, public=True)


def test_s5_2_3_unknown_extensions_are_ignored() -> None:
    """§5.2.3: unrecognised directives are ignored, quoted commas included."""
    d = parse_response_directives('community="UCI, x", foo, max-age=5, bar=baz')
    assert d == ResponseDirectives(max_age=5)


def test_s5_2_a_directive_name_is_matched_whole() -> None:
    assert parse_response_directives("max-age-ish=5, no-stores") == ResponseDirectives()


def test_s5_2_quoted_argument_with_quoted_pairs() -> None:
    """RFC 9110 §5.6.4: a quoted-pair stands for the octet after the backslash."""
    d = parse_response_directives(r'private="X-\A, Set-Cookie"')
    assert d.private_fields == ("x-a", "set-cookie")


def test_s5_2_parsed_values_are_memoised() -> None:
    """One parse per distinct field value; stored entries share the object."""
    assert parse_response_directives("max-age=9") is parse_response_directives("max-age=9")


@pytest.mark.parametrize("cc", ["stale-while-revalidate=abc", "stale-while-revalidate",
                                "stale-while-revalidate=-1"])
def test_rfc5861_invalid_stale_while_revalidate_is_dropped(cc: str) -> None:
    assert parse_response_directives(cc).stale_while_revalidate is None


def test_s5_2_1_invalid_request_deltas_are_dropped() -> None:
    d = parse_request_directives("max-age=x, min-fresh=-1, max-stale=abc, stale-if-error=")
    assert d == RequestDirectives()


def test_s5_2_1_duplicate_request_directive_uses_the_first() -> None:
    assert parse_request_directives("max-age=5, max-age=50").max_age == 5


def test_s1_2_2_request_deltas_cap_at_2_31() -> None:
    d = parse_request_directives("max-age=99999999999, min-fresh=99999999999")
    assert (d.max_age, d.min_fresh) == (MAX_DELTA, MAX_DELTA)


# -- §5.2.2.7 private / §5.2.2.4 no-cache forms --------------------------------

def test_s5_2_2_7_qualified_private_lists_lower_cased_fields() -> None:
    d = parse_response_directives('private="Set-Cookie, X-User"')
    assert d.private is False
    assert d.private_fields == ("set-cookie", "x-user")


def test_s5_2_2_7_unqualified_private() -> None:
    d = parse_response_directives("private")
    assert d.private is True
    assert d.private_fields == ()


def test_s5_2_2_7_qualified_and_unqualified_together_is_private() -> None:
    d = parse_response_directives('private="X-User", private')
    assert d.private is True


def test_s5_2_2_4_qualified_no_cache_is_treated_as_unqualified(stored, reuse) -> None:
    """§5.2.2.4: a cache may treat the qualified form like the unqualified one."""
    entry = stored({"Cache-Control": 'no-cache="Set-Cookie", max-age=600'})
    assert entry.directives.no_cache
    assert reuse(entry, T0 + 1).action is Action.REVALIDATE


# -- §5.2.1 request directives and reuse -------------------------------------

def test_s5_2_1_1_max_age_zero_revalidates_a_fresh_response(stored, reuse) -> None:
    """§5.2.1.1: a reload (max-age=0) asks for validation of a fresh response."""
    entry = stored({"Cache-Control": "max-age=600"})
    r = reuse(entry, T0 + 1, "max-age=0")
    assert (r.action, r.forward) == (Action.REVALIDATE, "request")


def test_s5_2_1_1_max_age_limits_the_acceptable_age(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=600"})
    assert reuse(entry, T0 + 30, "max-age=60").action is Action.SERVE
    assert reuse(entry, T0 + 60, "max-age=60").action is Action.SERVE
    assert reuse(entry, T0 + 61, "max-age=60").action is Action.REVALIDATE


def test_s5_2_1_1_seed_reload_request_revalidates(stored, reuse) -> None:
    """The seed's F5 request carries max-age=0 with both validators."""
    entry = stored({"Date": "Tue, 19 Aug 2008 06:50:19 GMT",
                    "Expires": "Tue, 19 Aug 2008 07:00:19 GMT"},
                   request_time=1219128619.0, response_time=1219128619.0)
    assert reuse(entry, 1219128620.0).action is Action.SERVE
    assert reuse(entry, 1219128620.0, "max-age=0").action is Action.REVALIDATE


def test_s5_2_1_2_max_stale_without_value_accepts_any_staleness(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=60"})
    r = reuse(entry, T0 + 1_000_000, "max-stale")
    assert r.action is Action.SERVE
    assert r.ttl < 0


def test_s5_2_1_2_max_stale_with_value_bounds_the_staleness(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=60"})
    assert reuse(entry, T0 + 90, "max-stale=30").action is Action.SERVE
    assert reuse(entry, T0 + 91, "max-stale=30").action is Action.REVALIDATE


def test_s5_2_1_3_min_fresh(stored, reuse) -> None:
    """§5.2.1.3: the response must stay fresh for at least min-fresh more seconds."""
    entry = stored({"Cache-Control": "max-age=60"})
    assert reuse(entry, T0 + 30, "min-fresh=30").action is Action.SERVE
    r = reuse(entry, T0 + 31, "min-fresh=30")
    assert (r.action, r.forward) == (Action.REVALIDATE, "request")


def test_s5_2_1_4_request_no_cache_revalidates(stored, reuse) -> None:
    r = reuse(stored({"Cache-Control": "max-age=600"}), T0 + 1, "no-cache")
    assert (r.action, r.forward) == (Action.REVALIDATE, "request")


def test_s5_2_1_7_only_if_cached_serves_what_is_fresh(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=60"})
    assert reuse(entry, T0 + 1, "only-if-cached").action is Action.SERVE


def test_s5_2_1_7_only_if_cached_with_nothing_usable_is_unusable(stored, reuse) -> None:
    """§5.2.1.7: the cache answers 504 rather than forward."""
    entry = stored({"Cache-Control": "max-age=60"})
    assert reuse(entry, T0 + 61, "only-if-cached").action is Action.UNUSABLE
    assert reuse(entry, T0 + 1, "only-if-cached, no-cache").action is Action.UNUSABLE


def test_s5_2_1_7_only_if_cached_with_max_stale_serves_stale(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=60"})
    assert reuse(entry, T0 + 100, "only-if-cached, max-stale").action is Action.SERVE


# -- §5.4 Pragma ----------------------------------------------------------------

def test_s5_4_pragma_no_cache_without_cache_control_means_no_cache(stored, reuse) -> None:
    assert parse_request_directives(None, "no-cache") == RequestDirectives(no_cache=True)
    assert parse_request_directives(None, "No-Cache, x") == RequestDirectives(no_cache=True)
    entry = stored({"Cache-Control": "max-age=600"})
    assert reuse(entry, T0 + 1, pragma="no-cache").action is Action.REVALIDATE


def test_s5_4_pragma_is_ignored_when_cache_control_is_present(stored, reuse) -> None:
    """§5.4: with Cache-Control in the request, Pragma is ignored."""
    assert parse_request_directives("max-stale", "no-cache").no_cache is False
    entry = stored({"Cache-Control": "max-age=600"})
    assert reuse(entry, T0 + 1, "max-age=700", pragma="no-cache").action is Action.SERVE


def test_s5_4_other_pragma_values_mean_nothing() -> None:
    assert parse_request_directives(None, "x-no-cache, cache") == RequestDirectives()


def test_s5_4_pragma_in_a_response_is_not_a_directive(stored, reuse) -> None:
    entry = stored({"Pragma": "no-cache", "Cache-Control": "max-age=60"})
    assert reuse(entry, T0 + 1).action is Action.SERVE


# -- §5.2.2 response directives and reuse --------------------------------------

def test_s5_2_2_4_no_cache_response_always_revalidates(stored, reuse) -> None:
    entry = stored({"Cache-Control": "no-cache, max-age=600, stale-while-revalidate=60"})
    for cc in (None, "max-stale", "only-if-cached"):
        r = reuse(entry, T0 + 1, cc)
        assert r.action in (Action.REVALIDATE, Action.UNUSABLE)
    assert reuse(entry, T0 + 1).forward == "stale"


def test_s5_2_2_2_must_revalidate_serves_fresh(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=60, must-revalidate"})
    assert reuse(entry, T0 + 59).action is Action.SERVE


def test_s5_2_2_2_must_revalidate_forbids_stale_even_with_max_stale(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=60, must-revalidate"})
    assert reuse(entry, T0 + 61, "max-stale").action is Action.REVALIDATE
    assert reuse(entry, T0 + 61, "max-stale, only-if-cached").action is Action.UNUSABLE


def test_s5_2_2_2_must_revalidate_binds_private_caches_too(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=60, must-revalidate"}, shared=False)
    assert reuse(entry, T0 + 61, "max-stale", shared=False).action is Action.REVALIDATE


def test_s5_2_2_8_proxy_revalidate_binds_shared_caches_only() -> None:
    d = parse_response_directives("max-age=60, proxy-revalidate")
    assert stale_forbidden(d, shared=True)
    assert not stale_forbidden(d, shared=False)


def test_s5_2_2_10_s_maxage_implies_proxy_revalidate_for_shared_caches() -> None:
    d = parse_response_directives("s-maxage=60")
    assert stale_forbidden(d, shared=True)
    assert not stale_forbidden(d, shared=False)


def test_s4_2_4_nothing_forbids_stale_by_default() -> None:
    assert not stale_forbidden(parse_response_directives("max-age=60, public"), shared=True)


def test_s5_2_2_6_immutable_is_parsed_and_lifetime_still_applies(stored, reuse) -> None:
    """RFC 8246: immutable does not extend freshness."""
    entry = stored({"Cache-Control": "max-age=60, immutable"})
    assert entry.directives.immutable
    assert reuse(entry, T0 + 61).action is Action.REVALIDATE


# -- RFC 5861 §3 stale-while-revalidate -------------------------------------------

def test_rfc5861_s3_stale_while_revalidate_window(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=60, stale-while-revalidate=30"})
    assert reuse(entry, T0 + 59).action is Action.SERVE
    r = reuse(entry, T0 + 90)
    assert (r.action, r.ttl, r.forward) == (Action.SERVE_STALE_REVALIDATE, -30, "stale")
    assert reuse(entry, T0 + 91).action is Action.REVALIDATE


@pytest.mark.parametrize("forbid", ["must-revalidate", "proxy-revalidate", "s-maxage=60"])
def test_rfc5861_s3_stale_while_revalidate_yields_to_s4_2_4(stored, reuse, forbid) -> None:
    entry = stored({"Cache-Control": f"max-age=60, stale-while-revalidate=600, {forbid}"})
    assert reuse(entry, T0 + 61).action is Action.REVALIDATE


def test_rfc5861_s3_request_directives_still_apply(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=60, stale-while-revalidate=600"})
    assert reuse(entry, T0 + 61, "no-cache").action is Action.REVALIDATE
    assert reuse(entry, T0 + 61, "max-age=30").action is Action.REVALIDATE


def test_rfc5861_s3_max_stale_within_bound_serves_without_revalidating(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=60, stale-while-revalidate=600"})
    assert reuse(entry, T0 + 70, "max-stale=20").action is Action.SERVE


@pytest.mark.parametrize("cc", ["max-stale=0", "max-stale=5", "min-fresh=1"])
def test_rfc5861_s3_a_client_bound_on_staleness_is_not_overridden(stored, reuse, cc) -> None:
    """§5.2.1.2/§5.2.1.3: a client that says how stale (max-stale=N) or how fresh
    (min-fresh) an answer it takes is not sent one 10 s stale because the origin allowed
    stale-while-revalidate; the cache validates for it (§4.2.4: stale only where permitted)."""
    entry = stored({"Cache-Control": "max-age=60, stale-while-revalidate=600"})
    r = reuse(entry, T0 + 70, cc)
    assert (r.action, r.forward) == (Action.REVALIDATE, "request")
    assert reuse(entry, T0 + 70).action is Action.SERVE_STALE_REVALIDATE  # no bound said


# -- RFC 5861 §4 stale-if-error ---------------------------------------------------

def error_ok(cc: str, ttl: float, request: str | None = None, *, shared: bool = True) -> bool:
    return may_serve_stale_on_error(
        ttl=ttl, directives=parse_response_directives(cc),
        request=parse_request_directives(request), shared=shared,
    )


def test_rfc5861_s4_fresh_response_covers_an_error() -> None:
    assert error_ok("max-age=60", ttl=10)


def test_rfc5861_s4_response_stale_if_error_window() -> None:
    assert error_ok("max-age=60, stale-if-error=300", ttl=-300)
    assert not error_ok("max-age=60, stale-if-error=300", ttl=-301)


def test_rfc5861_s4_request_stale_if_error_window() -> None:
    """RFC 5861 §4: the directive may also appear in a request."""
    assert error_ok("max-age=60", ttl=-100, request="stale-if-error=100")
    assert not error_ok("max-age=60", ttl=-101, request="stale-if-error=100")


def test_s4_2_4_max_stale_permits_stale_on_error() -> None:
    assert error_ok("max-age=60", ttl=-1000, request="max-stale")


def test_rfc5861_s4_no_window_no_stale_on_error() -> None:
    assert not error_ok("max-age=60", ttl=-1)


@pytest.mark.parametrize("forbid", ["must-revalidate", "proxy-revalidate", "s-maxage=60"])
def test_rfc5861_s4_stale_if_error_yields_to_s4_2_4(forbid: str) -> None:
    """§5.2.2.2: with must-revalidate a disconnected cache answers an error instead."""
    assert not error_ok(f"max-age=60, stale-if-error=600, {forbid}", ttl=-1,
                        request="max-stale")


def test_rfc5861_s4_proxy_revalidate_does_not_bind_a_private_cache() -> None:
    assert error_ok("max-age=60, stale-if-error=600, proxy-revalidate", ttl=-1, shared=False)


def test_s5_2_2_4_no_cache_response_is_never_served_on_error() -> None:
    """§5.2.2.4: a no-cache response is not reused without successful validation,
    fresh or not, whatever stale-if-error says (§4.2.4 lists no-cache among the
    directives that prohibit stale responses)."""
    assert not error_ok("no-cache, max-age=600, stale-if-error=600", ttl=500)
    assert not error_ok("no-cache, stale-if-error=600", ttl=-1, request="max-stale")


# -- §5.2.2.4 / §4.2.4: whose validation may a waiting request use? ------------------------------

@pytest.mark.parametrize(("no_cache", "lifetime", "forward", "shareable"), [
    (False, 60.0, None, True),        # a miss: the leader's stored answer serves everyone
    (False, 60.0, "stale", True),     # stale, freshened by the leader's validation
    (True, 60.0, "stale", False),     # no-cache: validated for each request (§5.2.2.4)
    (False, 0.0, "stale", False),     # never fresh: the same
    (True, 0.0, "request", True),     # the waiter asked for validation itself (§5.2.1.4)
])
def test_s5_2_2_4_a_waiter_shares_a_validation_only_when_it_may(
        no_cache, lifetime, forward, shareable) -> None:
    reuse = None if forward is None else Reuse(Action.REVALIDATE, 10.0, lifetime - 10, forward)
    assert shareable_validation(no_cache=no_cache, lifetime=lifetime, reuse=reuse) is shareable
