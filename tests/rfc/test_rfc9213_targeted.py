"""RFC 9213 Targeted HTTP Cache Control (CDN-Cache-Control) and Surrogate-Control (W3C Edge
Architecture Specification 1.0). Tests named after http-cache-tests' surrogate-* tests carry
the suite's id after the double underscore."""

from __future__ import annotations

import pytest

from cacheproxy.http.reuse import Action
from cacheproxy.http.stored import CachedResponse, Heuristics, make_stored_response
from cacheproxy.http.targeted import (
    NO_TARGETING,
    Governing,
    Targeting,
    downstream_removed,
    governing,
    surrogate_capability,
    surrogate_directives,
    targeted_directives,
)

T0 = 1_704_067_200.0  # Mon, 01 Jan 2024 00:00:00 GMT
DATE_T0 = "Mon, 01 Jan 2024 00:00:00 GMT"
AFTER_10000 = "Mon, 01 Jan 2024 02:46:40 GMT"
BEFORE_10000 = "Sun, 31 Dec 2023 21:13:20 GMT"
ME = Targeting(device="edge-1")


def entry_of(fields: list[tuple[str, str]], targeting: Targeting = ME) -> CachedResponse:
    return make_stored_response(
        key="http://example.com/r", vary=(), vary_values=(), status=200, pairs=fields,
        body=b"body", request_time=T0, response_time=T0, shared=True, heuristics=Heuristics(),
        targeting=targeting)


def fresh_at(reuse, fields: list[tuple[str, str]], seconds: float,
             targeting: Targeting = ME) -> bool:
    entry = entry_of([("Date", DATE_T0), *fields], targeting)
    return reuse(entry, T0 + seconds).action is Action.SERVE


# -- §2.2 Cache behaviour: the first targeted field present wins ---------------------------

def test_s2_2_without_a_targeted_field_cache_control_governs() -> None:
    assert governing([("Cache-Control", "max-age=5"), ("Cache-Control", "public")], ME) == \
        Governing("max-age=5, public")
    assert governing([], ME) == Governing(None)


def test_s2_2_the_first_of_the_target_list_wins() -> None:
    pairs = [("Cache-Control", "max-age=5"), ("Surrogate-Control", "max-age=60"),
             ("CDN-Cache-Control", "max-age=600")]
    assert governing(pairs, ME) == Governing("max-age=600", "cdn-cache-control")
    by_surrogate = Targeting(("surrogate-control", "cdn-cache-control"), "edge-1")
    assert governing(pairs, by_surrogate) == Governing("max-age=60", "surrogate-control")
    assert governing(pairs, NO_TARGETING) == Governing("max-age=5")


def test_s2_2_an_invalid_targeted_field_is_skipped() -> None:
    pairs = [("Cache-Control", "max-age=5"), ("CDN-Cache-Control", "max-age=600,"),
             ("Surrogate-Control", "max-age=60")]
    assert governing(pairs, ME) == Governing("max-age=60", "surrogate-control")


def test_s2_2_a_targeted_field_sets_expires_aside(reuse) -> None:
    fields = [("CDN-Cache-Control", "max-age=3600"), ("Expires", BEFORE_10000)]
    assert fresh_at(reuse, fields, 100)
    fields = [("CDN-Cache-Control", "max-age=0"), ("Expires", AFTER_10000)]
    assert not fresh_at(reuse, fields, 1)


def test_s2_2_the_long_targeted_lifetime_beats_a_short_cache_control(reuse) -> None:
    fields = [("Cache-Control", "public, max-age=10"), ("CDN-Cache-Control", "max-age=600")]
    assert fresh_at(reuse, fields, 500)
    assert not fresh_at(reuse, fields, 500, NO_TARGETING)


def test_s2_2_targeted_no_store_and_private_count() -> None:
    e = entry_of([("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "no-store")])
    assert e.directives.no_store and e.directives.max_age is None


# -- §2.1 Syntax: a Structured Fields dictionary -------------------------------------------

@pytest.mark.parametrize(("value", "directives"), [
    ("max-age=60", "max-age=60"),
    ("max-age=60, must-revalidate", "max-age=60, must-revalidate"),
    ("max-age=60;a=1, public", "max-age=60, public"),  # parameters are ignored
    ('no-cache="set-cookie"', 'no-cache="set-cookie"'),
    ("public=?1, private=?0", "public"),
    ("none", "none"),  # §3.1: a value with no known directive is not empty
    ("max-age=1.5", "max-age=1.5"),  # a decimal: the Cache-Control parser makes it stale
])
def test_s2_1_a_dictionary_becomes_directives(value: str, directives: str) -> None:
    assert targeted_directives(value) == directives


@pytest.mark.parametrize("value", [
    "", "  ", "max-age=60,", "Max-Age=60", "max-age=(1 2)", "max-age 60", "max-age=60 60",
    "=60", 'private="unterminated',
])
def test_s2_1_an_empty_or_invalid_field_is_ignored(value: str) -> None:
    assert targeted_directives(value) is None


# -- Surrogate-Control (Edge Architecture 1.0 §2.2, §3) ------------------------------------

@pytest.mark.parametrize(("value", "directives"), [
    ("max-age=3600", "max-age=3600"),
    ("MaX-aGe=3600", "max-age=3600"),
    ("foobar, max-age=3600", "foobar, max-age=3600"),
    ("max-age=3600;edge-1", "max-age=3600"),
    ("max-age=3600;EDGE-1", "max-age=3600"),
    ("max-age=3600;not-for-you", None),
    ("no-store;other, max-age=60", "max-age=60"),
    ("max-age=60+30", "max-age=60"),
    ('content="ESI/1.0", max-age=5', 'content="ESI/1.0", max-age=5'),
    ("max-age =100", None), ("max-age= 100", None),
])
def test_surrogate_directives_for_this_device(value: str, directives: str | None) -> None:
    assert surrogate_directives(value, "edge-1") == directives


def test_surrogate_max_age_is_followed__surrogate_max_age(reuse) -> None:
    assert fresh_at(reuse, [("Surrogate-Control", "max-age=3600")], 3)


@pytest.mark.parametrize("value", ["max-age=2147483648", "max-age=99999999999"])
def test_surrogate_huge_max_age__surrogate_max_age_max(reuse, value: str) -> None:
    assert fresh_at(reuse, [("Surrogate-Control", value)], 10**6)


def test_surrogate_targeted_at_me__surrogate_max_age_me_target(reuse) -> None:
    assert fresh_at(reuse, [("Surrogate-Control", "max-age=3600;edge-1")], 3)


def test_surrogate_targeted_elsewhere__surrogate_max_age_other_target(reuse) -> None:
    fields = [("Surrogate-Control", "max-age=3600;not-for-you"), ("Age", "7200")]
    assert not fresh_at(reuse, fields, 3)


def test_surrogate_age_counts__surrogate_max_age_age(reuse) -> None:
    fields = [("Surrogate-Control", "max-age=3600"), ("Age", "7200")]
    assert not fresh_at(reuse, fields, 3)


def test_surrogate_max_age_0__surrogate_max_age_0(reuse) -> None:
    assert not fresh_at(reuse, [("Surrogate-Control", "max-age=0")], 1)


def test_surrogate_past_expires__surrogate_max_age_expires(reuse) -> None:
    fields = [("Surrogate-Control", "max-age=3600"), ("Expires", BEFORE_10000)]
    assert fresh_at(reuse, fields, 3)


def test_surrogate_invalid_expires__surrogate_max_age_cc_max_age_invalid_expires(reuse) -> None:
    assert fresh_at(reuse, [("Surrogate-Control", "max-age=3600"), ("Expires", "0")], 3)


def test_surrogate_0_future_expires__surrogate_max_age_0_expires(reuse) -> None:
    fields = [("Surrogate-Control", "max-age=0"), ("Expires", AFTER_10000)]
    assert not fresh_at(reuse, fields, 1)


def test_surrogate_long_beats_short_cc__surrogate_max_age_short_cc_max_age(reuse) -> None:
    fields = [("Cache-Control", "max-age=1"), ("Surrogate-Control", "max-age=3600")]
    assert fresh_at(reuse, fields, 3)


def test_surrogate_short_beats_long_cc__surrogate_max_age_long_cc_max_age(reuse) -> None:
    fields = [("Cache-Control", "max-age=3600"), ("Surrogate-Control", "max-age=1")]
    assert not fresh_at(reuse, fields, 3)


def test_surrogate_no_store_beats_cc__surrogate_no_store_cc_fresh() -> None:
    fields = [("Cache-Control", "max-age=10000"), ("Surrogate-Control", "no-store"),
              ("Expires", AFTER_10000)]
    assert entry_of(fields).directives.no_store


def test_surrogate_fresh_beats_cc_no_store__surrogate_fresh_cc_nostore(reuse) -> None:
    fields = [("Cache-Control", "no-store"), ("Surrogate-Control", "max-age=10000;edge-1")]
    entry = entry_of([("Date", DATE_T0), *fields])
    assert not entry.directives.no_store and entry.lifetime == 10000


def test_surrogate_capability_names_this_device__surrogate_append_capabilities() -> None:
    assert surrogate_capability(ME) == 'edge-1="Surrogate/1.0"'
    assert surrogate_capability(Targeting(("cdn-cache-control",), "edge-1")) is None


def test_surrogate_control_is_removed_downstream__surrogate_remove_header() -> None:
    assert downstream_removed(ME, strip_targeted=False) == {"surrogate-control"}
    assert downstream_removed(ME, strip_targeted=True) == {"surrogate-control",
                                                           "cdn-cache-control"}
    only_cdn = Targeting(("cdn-cache-control",), "edge-1")
    assert downstream_removed(only_cdn, strip_targeted=False) == frozenset()
