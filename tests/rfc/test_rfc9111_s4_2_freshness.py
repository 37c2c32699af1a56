"""RFC 9111 §4.2 Freshness: §4.2.1 (lifetime), §4.2.2 (heuristics), §4.2.3 (age),
§4.2.4 (serving stale), with §5.1 Age and §5.3 Expires."""

from __future__ import annotations

import pytest

from cacheproxy.http.cache_control import MAX_DELTA, parse_response_directives
from cacheproxy.http.freshness import (
    corrected_initial_age,
    current_age,
    freshness_lifetime,
    parse_age,
    stale_by_date,
)
from cacheproxy.http.reuse import Action
from cacheproxy.http.stored import Heuristics

T0 = 1_704_067_200.0  # Mon, 01 Jan 2024 00:00:00 GMT
DATE_T0 = "Mon, 01 Jan 2024 00:00:00 GMT"
T0_PLUS_1H = "Mon, 01 Jan 2024 01:00:00 GMT"
T0_MINUS_1000 = "Sun, 31 Dec 2023 23:43:20 GMT"
T0_MINUS_1H = "Sun, 31 Dec 2023 23:00:00 GMT"


# -- §4.2.1 Calculating freshness lifetime ----------------------------------

def test_s4_2_1_s_maxage_applies_to_shared_caches_only(stored) -> None:
    fields = {"Cache-Control": "s-maxage=100, max-age=10"}
    assert stored(fields, shared=True).lifetime == 100
    assert stored(fields, shared=False).lifetime == 10


def test_s4_2_1_s_maxage_alone_gives_a_private_cache_no_explicit_lifetime(stored) -> None:
    fields = {"Cache-Control": "s-maxage=100", "Date": DATE_T0, "Expires": T0_PLUS_1H}
    assert stored(fields, shared=False).lifetime == 3600


def test_s4_2_1_s_maxage_beats_expires(stored) -> None:
    fields = {"Cache-Control": "s-maxage=5", "Date": DATE_T0, "Expires": T0_PLUS_1H}
    assert stored(fields).lifetime == 5


def test_s4_2_1_max_age_beats_expires(stored) -> None:
    """§5.3: "If a response includes a Cache-Control header field with the max-age
    directive, a recipient MUST ignore the Expires header field"."""
    fields = {"Cache-Control": "max-age=5", "Date": DATE_T0, "Expires": T0_PLUS_1H}
    assert stored(fields).lifetime == 5


def test_s4_2_1_max_age_zero_beats_a_future_expires(stored) -> None:
    fields = {"Cache-Control": "max-age=0", "Date": DATE_T0, "Expires": T0_PLUS_1H}
    assert stored(fields).lifetime == 0


def test_s4_2_1_expires_minus_date(stored) -> None:
    assert stored({"Date": DATE_T0, "Expires": T0_PLUS_1H}).lifetime == 3600


def test_s4_2_1_missing_date_uses_the_response_time(stored) -> None:
    """§4.2.1 (RFC 9110 §6.6.1): without Date, the time of receipt stands in."""
    entry = stored({"Expires": T0_PLUS_1H}, request_time=T0 + 99, response_time=T0 + 100)
    assert entry.lifetime == 3500


def test_s4_2_1_invalid_date_is_like_a_missing_one(stored) -> None:
    entry = stored({"Date": "yesterday", "Expires": T0_PLUS_1H}, response_time=T0 + 100)
    assert entry.lifetime == 3500


@pytest.mark.parametrize("expires", ["0", "-1", "garbage", "", "Mon, 32 Jan 2024 00:00:00 GMT",
                                     "Thu, 01 Jan 1970 00:00:00"])
def test_s5_3_invalid_expires_means_already_expired(stored, expires: str) -> None:
    """§5.3: an invalid date, especially "0", represents a time in the past; no
    heuristic may apply because Expires is present (§4.2.2)."""
    entry = stored({"Date": DATE_T0, "Expires": expires, "Last-Modified": T0_MINUS_1000})
    assert entry.lifetime == 0


def test_s5_3_expires_in_the_past_is_stale(stored) -> None:
    assert stored({"Date": DATE_T0, "Expires": T0_MINUS_1H}).lifetime == 0


def test_s5_3_expires_equal_to_date_is_stale(stored) -> None:
    assert stored({"Date": DATE_T0, "Expires": DATE_T0}).lifetime == 0


def test_s4_2_1_duplicate_expires_uses_the_first(stored) -> None:
    """§4.2.1: with more than one value, the first occurrence should be used."""
    entry = stored([("Date", DATE_T0), ("Expires", T0_PLUS_1H), ("Expires", "0")])
    assert entry.lifetime == 3600


def test_s4_2_1_duplicate_max_age_uses_the_first(stored) -> None:
    assert stored({"Cache-Control": "max-age=5, max-age=500"}).lifetime == 5


def test_s4_2_1_max_age_across_field_lines_uses_the_first(stored) -> None:
    """RFC 9110 §5.3: several Cache-Control lines are one comma-separated list."""
    entry = stored([("Cache-Control", "max-age=7"), ("Cache-Control", "max-age=70")])
    assert entry.lifetime == 7


def test_s4_2_1_quoted_max_age_is_accepted(stored) -> None:
    """§5.2: recipients accept the quoted-string form of a token argument."""
    assert stored({"Cache-Control": 'max-age="5"'}).lifetime == 5


@pytest.mark.parametrize("cc", ["max-age=abc", "max-age=-1", "max-age=1.5", "max-age",
                                "max-age=", "max-age=0x10", "max-age=\u0665"])
def test_s4_2_1_invalid_max_age_is_stale(stored, cc: str) -> None:
    """§4.2.1: caches are encouraged to consider invalid freshness information stale,
    even when Expires or Last-Modified would give a longer lifetime."""
    entry = stored({"Cache-Control": cc, "Date": DATE_T0, "Expires": T0_PLUS_1H,
                    "Last-Modified": T0_MINUS_1000})
    assert entry.lifetime == 0


def test_s4_2_1_invalid_first_max_age_is_stale_even_with_a_valid_second(stored) -> None:
    assert stored({"Cache-Control": "max-age=abc, max-age=60"}).lifetime == 0


def test_s1_2_2_max_age_beyond_2_31_is_capped(stored) -> None:
    """§1.2.2: a delta-seconds too large is taken as 2147483648 (2^31)."""
    assert stored({"Cache-Control": "max-age=99999999999999999999"}).lifetime == 2**31
    assert MAX_DELTA == 2**31


def test_s1_2_2_max_age_at_2_31_is_kept(stored) -> None:
    assert stored({"Cache-Control": f"max-age={2**31 - 1}"}).lifetime == 2**31 - 1


def test_seed_example_expires_gives_ten_minutes(stored) -> None:
    """The seed's response: Date 06:50:19, Expires 07:00:19, Last-Modified without
    a space before GMT, an unquoted ETag."""
    entry = stored({
        "Date": "Tue, 19 Aug 2008 06:50:19 GMT",
        "Expires": "Tue, 19 Aug 2008 07:00:19 GMT",
        "Last-Modified": "Tue, 19 Aug 2008 06:49:35GMT",
        "Etag": "7936caeeaf6aee6ff8834b381618b513",
    }, request_time=1219128619.0, response_time=1219128619.0)
    assert entry.lifetime == 600
    assert entry.modified_at == 1219128575.0  # 06:49:35
    assert entry.age(1219128619.0) == 0


# -- §4.2.2 Calculating heuristic freshness ---------------------------------

def test_s4_2_2_heuristic_is_a_fraction_of_the_time_since_last_modified(stored) -> None:
    """§4.2.2: a typical setting is 10% of the interval since Last-Modified."""
    entry = stored({"Date": DATE_T0, "Last-Modified": T0_MINUS_1000})
    assert entry.lifetime == pytest.approx(100)


def test_s4_2_2_heuristic_fraction_and_cap_are_settings(stored) -> None:
    fields = {"Date": DATE_T0, "Last-Modified": T0_MINUS_1000}
    assert stored(fields, heuristics=Heuristics(fraction=0.5)).lifetime == pytest.approx(500)
    assert stored(fields, heuristics=Heuristics(max_age=30)).lifetime == 30


def test_s4_2_2_heuristic_is_capped_by_default_at_a_day(stored) -> None:
    entry = stored({"Date": DATE_T0, "Last-Modified": "Sat, 01 Jan 2000 00:00:00 GMT"})
    assert entry.lifetime == 86400


def test_s4_2_2_heuristic_without_date_measures_from_receipt(stored) -> None:
    entry = stored({"Last-Modified": T0_MINUS_1000}, request_time=T0, response_time=T0)
    assert entry.lifetime == pytest.approx(100)


@pytest.mark.parametrize("status", [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501])
def test_s4_2_2_heuristic_for_heuristically_cacheable_status(stored, status: int) -> None:
    entry = stored({"Date": DATE_T0, "Last-Modified": T0_MINUS_1000}, status=status)
    assert entry.lifetime == pytest.approx(100)


@pytest.mark.parametrize("status", [201, 302, 303, 307, 400, 403, 500, 503])
def test_s4_2_2_no_heuristic_for_other_status(stored, status: int) -> None:
    entry = stored({"Date": DATE_T0, "Last-Modified": T0_MINUS_1000}, status=status)
    assert entry.lifetime == 0


def test_s4_2_2_public_allows_a_heuristic_for_any_status(stored) -> None:
    """§4.2.2 with §5.2.2.9: public marks the response cacheable, heuristics included."""
    entry = stored({"Cache-Control": "public", "Date": DATE_T0,
                    "Last-Modified": T0_MINUS_1000}, status=302)
    assert entry.lifetime == pytest.approx(100)


def test_s4_2_2_no_heuristic_without_last_modified(stored) -> None:
    assert stored({"Date": DATE_T0}).lifetime == 0


def test_s4_2_2_no_heuristic_when_last_modified_is_in_the_future(stored) -> None:
    assert stored({"Date": DATE_T0, "Last-Modified": T0_PLUS_1H}).lifetime == 0


def test_s4_2_2_no_heuristic_when_explicit_expiration_is_present(stored) -> None:
    """§4.2.2: a cache MUST NOT use heuristics when an explicit expiration is present."""
    entry = stored({"Cache-Control": "max-age=1", "Date": DATE_T0,
                    "Last-Modified": "Sat, 01 Jan 2000 00:00:00 GMT"})
    assert entry.lifetime == 1


def test_s4_2_2_freshness_lifetime_direct_call() -> None:
    lifetime = freshness_lifetime(
        parse_response_directives(None), status=200, date=T0, expires=None, expires_at=None,
        last_modified=T0 - 1000, response_time=T0, shared=True,
        heuristic_fraction=0.1, heuristic_max_age=86400,
    )
    assert lifetime == pytest.approx(100)


# -- §4.2.3 Calculating age (with §5.1 Age) ---------------------------------

def test_s4_2_3_worked_example_age_from_upstream_and_response_delay() -> None:
    """§4.2.3 with numbers: request at T0, response at T0+2 with Date T0-10 and Age 30.
    apparent_age = max(0, 2 - (-10)) = 12; response_delay = 2;
    corrected_age_value = 30 + 2 = 32; corrected_initial_age = max(12, 32) = 32;
    eight seconds later current_age = 32 + 8 = 40."""
    initial = corrected_initial_age(age_value=30, date=T0 - 10, request_time=T0,
                                    response_time=T0 + 2)
    assert initial == 32
    assert current_age(initial, T0 + 2, T0 + 10) == 40


def test_s4_2_3_apparent_age_wins_when_date_is_older() -> None:
    """Date T0-100, Age 5, delay 2: apparent 102 > corrected 7."""
    assert corrected_initial_age(age_value=5, date=T0 - 100, request_time=T0,
                                 response_time=T0 + 2) == 102


def test_s4_2_3_date_in_the_future_gives_no_negative_apparent_age() -> None:
    """§4.2.3: apparent_age = max(0, response_time - date_value) (clock skew)."""
    assert corrected_initial_age(age_value=0, date=T0 + 50, request_time=T0,
                                 response_time=T0 + 2) == 2


@pytest.mark.parametrize(("lifetime", "date", "age", "lag"), [
    (60.0, T0 - 600, 0, 600.0),   # fresh by Age and delay (2), stale by Date: the clock
    (60.0, T0 - 30, 0, 0.0),      # Date behind, but not enough to make it stale
    (60.0, T0 - 600, 100, 0.0),   # stale by its Age already: no clock's fault
    (60.0, T0 + 600, 0, 0.0),     # Date ahead: apparent_age 0
    (60.0, None, 0, 0.0),         # no Date
    (0.0, T0 - 600, 0, 0.0),      # never fresh anyway
])
def test_s4_2_3_stale_by_date_alone(lifetime: float, date: float | None, age: int,
                                    lag: float) -> None:
    """§4.2.3: how far behind the clock that wrote Date is, when apparent_age alone made
    the response stale on arrival (request at T0, answer at T0 + 2)."""
    assert stale_by_date(lifetime=lifetime, date=date, age_value=age, request_time=T0,
                         response_time=T0 + 2) == lag


def test_s4_2_3_missing_date_leaves_age_and_delay() -> None:
    assert corrected_initial_age(age_value=7, date=None, request_time=T0,
                                 response_time=T0 + 3) == 10


def test_s4_2_3_resident_time_never_negative() -> None:
    assert current_age(5, T0, T0 - 100) == 5


def test_s4_2_3_stored_entry_uses_age_date_and_delay(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60", "Age": "30",
                    "Date": "Sun, 31 Dec 2023 23:59:50 GMT"},
                   request_time=T0, response_time=T0 + 2)
    assert entry.age(T0 + 2) == 32
    assert entry.lifetime == 60


def test_s4_2_3_age_counts_against_max_age(stored, reuse) -> None:
    """An upstream Age of 50 leaves 10 s of a max-age=60 lifetime."""
    entry = stored({"Cache-Control": "max-age=60", "Age": "50", "Date": DATE_T0})
    assert reuse(entry, T0 + 9).action is Action.SERVE
    assert reuse(entry, T0 + 11).action is Action.REVALIDATE


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 0), ("", None), ("0", 0), ("30", 30), (" 30 ", 30), ("30, 40", None),
     ("abc", None), ("-5", None), ("1.5", None), ("99999999999999999999", 2**31),
     ("\u0663", None)],
)
def test_s5_1_age_is_delta_seconds(value: str | None, expected: int | None) -> None:
    """§5.1: Age is delta-seconds; absent is 0, anything else invalid (None); overflow
    gives 2^31."""
    assert parse_age(value) == expected


# -- §4.2 fresh versus stale, §4.2.4 Serving stale responses ------------------

def test_s4_2_fresh_while_lifetime_exceeds_age(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=60"})
    r = reuse(entry, T0 + 59)
    assert (r.action, r.age, r.ttl) == (Action.SERVE, 59, 1)


def test_s4_2_stale_when_age_equals_lifetime(stored, reuse) -> None:
    """§4.2: fresh only when freshness_lifetime > current_age."""
    r = reuse(stored({"Cache-Control": "max-age=60"}), T0 + 60)
    assert (r.action, r.ttl, r.forward) == (Action.REVALIDATE, 0, "stale")


def test_s4_2_4_stale_is_not_served_without_permission(stored, reuse) -> None:
    """§4.2.4: a cache does not generate a stale response unless permitted."""
    r = reuse(stored({"Cache-Control": "max-age=60"}), T0 + 100)
    assert (r.action, r.ttl) == (Action.REVALIDATE, -40)


def test_s4_2_4_invalid_expires_entry_revalidates_at_once(stored, reuse) -> None:
    entry = stored({"Date": DATE_T0, "Expires": "0"})
    assert reuse(entry, T0).action is Action.REVALIDATE


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate", "s-maxage=60"])
def test_s4_2_4_directives_that_forbid_stale_in_a_shared_cache(
    stored, reuse, directive: str
) -> None:
    """§4.2.4: stale is prohibited by must-revalidate, and for a shared cache by
    proxy-revalidate or s-maxage, even where max-stale or stale-while-revalidate ask."""
    entry = stored({"Cache-Control": f"max-age=60, {directive}, stale-while-revalidate=600"})
    assert reuse(entry, T0 + 100, "max-stale").action is Action.REVALIDATE
    assert reuse(entry, T0 + 100).action is Action.REVALIDATE


@pytest.mark.parametrize("directive", ["proxy-revalidate", "s-maxage=60"])
def test_s4_2_4_shared_only_directives_do_not_bind_a_private_cache(
    stored, reuse, directive: str
) -> None:
    entry = stored({"Cache-Control": f"max-age=60, {directive}"}, shared=False)
    assert reuse(entry, T0 + 100, "max-stale", shared=False).action is Action.SERVE
