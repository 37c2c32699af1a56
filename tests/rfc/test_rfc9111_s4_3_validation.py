"""RFC 9111 §4.3 Validation: §4.3.1 (sending a validation request), §4.3.2 (a cache
answering a client's conditional request), §4.3.3-§4.3.4 (handling a 304 and
freshening), with RFC 9110 §13.1.1-§13.1.3, §13.2.2 and §15.4.5."""

from __future__ import annotations

import pytest

from cacheproxy.http.conditional import is_not_modified, not_modified_fields
from cacheproxy.http.reuse import Action
from cacheproxy.http.revalidation import (
    CLIENT_CONDITIONALS,
    conditional_fields,
    has_validator,
    merge_304,
    selects,
)

T0 = 1_704_067_200.0  # Mon, 01 Jan 2024 00:00:00 GMT
DATE_T0 = "Mon, 01 Jan 2024 00:00:00 GMT"
LM = "Sun, 31 Dec 2023 23:00:00 GMT"  # T0 - 3600
BEFORE_LM = "Sun, 31 Dec 2023 22:59:59 GMT"
AFTER_LM = "Sun, 31 Dec 2023 23:00:01 GMT"


# -- §4.3.1 Sending a validation request -------------------------------------

def test_s4_3_1_sends_stored_entity_tag_and_last_modified(stored) -> None:
    entry = stored({"ETag": 'W/"v1"', "Last-Modified": LM})
    assert conditional_fields(entry) == [("If-None-Match", 'W/"v1"'), ("If-Modified-Since", LM)]
    assert has_validator(entry)


def test_s4_3_1_etag_only(stored) -> None:
    assert conditional_fields(stored({"ETag": '"v1"'})) == [("If-None-Match", '"v1"')]


def test_s4_3_1_last_modified_only(stored) -> None:
    """§4.3.1: the Last-Modified value is sent back as If-Modified-Since."""
    assert conditional_fields(stored({"Last-Modified": LM})) == [("If-Modified-Since", LM)]


def test_s4_3_1_no_validator_no_conditional(stored) -> None:
    entry = stored({"Date": DATE_T0})
    assert conditional_fields(entry) == []
    assert not has_validator(entry)


@pytest.mark.parametrize("value", ["not a date", "0", "", "Mon, 32 Jan 2024 00:00:00 GMT"])
def test_s4_3_1_a_last_modified_that_is_no_date_is_no_validator(stored, value: str) -> None:
    """§4.3.1: the validator is "the timestamp given in a Last-Modified header field";
    RFC 9110 §13.1.3 has the origin ignore an If-Modified-Since that is no HTTP-date, so
    none is sent, and the response counts as having no validator."""
    entry = stored({"Date": DATE_T0, "Last-Modified": value})
    assert conditional_fields(entry) == []
    assert not has_validator(entry)
    entry = stored({"Date": DATE_T0, "ETag": '"v1"', "Last-Modified": value})
    assert conditional_fields(entry) == [("If-None-Match", '"v1"')]


def test_s4_3_1_seed_unquoted_etag_is_sent_back_as_received(stored) -> None:
    entry = stored({"Etag": "7936caeeaf6aee6ff8834b381618b513",
                    "Last-Modified": "Tue, 19 Aug 2008 06:49:35GMT"})
    assert conditional_fields(entry) == [
        ("If-None-Match", "7936caeeaf6aee6ff8834b381618b513"),
        ("If-Modified-Since", "Tue, 19 Aug 2008 06:49:35GMT"),
    ]


def test_s4_3_2_client_preconditions_are_known() -> None:
    """§4.3.2: a cache filling itself forwards none of the client's preconditions."""
    assert frozenset({"if-none-match", "if-modified-since", "if-match",
                      "if-unmodified-since", "if-range"}) == CLIENT_CONDITIONALS


# -- §4.3.2 Handling a received validation request (RFC 9110 §13) -------------

def test_s4_3_2_if_none_match_uses_weak_comparison(stored) -> None:
    """RFC 9110 §13.1.2: If-None-Match uses the weak comparison function."""
    strong = stored({"ETag": '"v1"'})
    weak = stored({"ETag": 'W/"v1"'})
    for inm in ['"v1"', 'W/"v1"']:
        assert is_not_modified(strong, "GET", inm, None)
        assert is_not_modified(weak, "GET", inm, None)


def test_s4_3_2_if_none_match_list(stored) -> None:
    entry = stored({"ETag": '"v2"'})
    assert is_not_modified(entry, "GET", '"v0", W/"v2" , "v3"', None)
    assert not is_not_modified(entry, "GET", '"v0", "v3"', None)


def test_s4_3_2_if_none_match_list_across_lines(stored) -> None:
    """RFC 9110 §5.3: several If-None-Match lines combine into one list."""
    assert is_not_modified(stored({"ETag": '"b"'}), "GET", '"a", "b"', None)


def test_s4_3_2_if_none_match_star_matches_any_stored_representation(stored) -> None:
    """RFC 9110 §13.1.2: "*" is false when there is a current representation."""
    assert is_not_modified(stored({"ETag": '"v1"'}), "GET", "*", None)
    assert is_not_modified(stored({}), "GET", " * ", None)


def test_s4_3_2_if_none_match_without_stored_etag_does_not_match(stored) -> None:
    assert not is_not_modified(stored({"Last-Modified": LM}), "GET", '"v1"', None)


def test_s4_3_2_if_none_match_is_case_sensitive(stored) -> None:
    """RFC 9110 §8.8.3: opaque-tags compare octet by octet."""
    assert not is_not_modified(stored({"ETag": '"ABC"'}), "GET", '"abc"', None)


def test_s4_3_2_seed_request_matches_seed_response(stored) -> None:
    """The seed's pair: unquoted tags on both sides still compare equal."""
    entry = stored({"Etag": "7936caeeaf6aee6ff8834b381618b513",
                    "Last-Modified": "Tue, 19 Aug 2008 06:49:35GMT"})
    assert is_not_modified(entry, "GET", "7936caeeaf6aee6ff8834b381618b513",
                           "Tue, 19 Aug 2008 06:49:35GMT")


def test_s13_2_2_if_none_match_takes_precedence_over_if_modified_since(stored) -> None:
    """RFC 9110 §13.1.3: If-Modified-Since is ignored when If-None-Match is present."""
    entry = stored({"ETag": '"v2"', "Last-Modified": LM})
    assert not is_not_modified(entry, "GET", '"v1"', AFTER_LM)
    assert is_not_modified(entry, "GET", '"v2"', BEFORE_LM)


@pytest.mark.parametrize(("since", "expected"), [(LM, True), (AFTER_LM, True),
                                                 (BEFORE_LM, False)])
def test_s13_1_3_if_modified_since(stored, since: str, expected: bool) -> None:
    """RFC 9110 §13.1.3: 304 when last modified earlier than or at the given date."""
    assert is_not_modified(stored({"Last-Modified": LM}), "GET", None, since) is expected


@pytest.mark.parametrize("since", ["garbage", "0", "", f"{LM}, {LM}"])
def test_s13_1_3_invalid_if_modified_since_is_ignored(stored, since: str) -> None:
    """RFC 9110 §13.1.3: an invalid date or more than one member: ignore the field."""
    assert not is_not_modified(stored({"Last-Modified": LM}), "GET", None, since)


def test_s4_3_2_without_last_modified_date_stands_in(stored) -> None:
    """§4.3.2: Last-Modified, else Date, else the time the response was received."""
    entry = stored({"Date": DATE_T0})
    assert is_not_modified(entry, "GET", None, DATE_T0)
    assert not is_not_modified(entry, "GET", None, LM)


def test_s4_3_2_without_any_date_the_receipt_time_stands_in(stored) -> None:
    entry = stored({}, request_time=T0, response_time=T0)
    assert entry.modified_at == T0
    assert is_not_modified(entry, "GET", None, DATE_T0)


def test_s4_3_2_invalid_last_modified_falls_back_to_date(stored) -> None:
    entry = stored({"Last-Modified": "yesterday", "Date": DATE_T0})
    assert entry.modified_at == T0


def test_s4_3_2_a_date_at_the_epoch_is_still_a_date(stored) -> None:
    entry = stored({"Date": "Thu, 01 Jan 1970 00:00:00 GMT"}, response_time=T0)
    assert entry.modified_at == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_s13_1_conditions_apply_to_get_and_head_only(stored, method: str) -> None:
    entry = stored({"ETag": '"v1"', "Last-Modified": LM})
    assert not is_not_modified(entry, method, '"v1"', None)
    assert not is_not_modified(entry, method, None, LM)


def test_s13_1_head_is_answered_like_get(stored) -> None:
    assert is_not_modified(stored({"ETag": '"v1"'}), "HEAD", '"v1"', None)


def test_s13_2_1_only_a_200_is_answered_with_304(stored) -> None:
    entry = stored({"ETag": '"v1"', "Cache-Control": "max-age=60"}, status=404)
    assert not is_not_modified(entry, "GET", '"v1"', None)


def test_s4_3_2_no_conditional_fields_no_304(stored) -> None:
    assert not is_not_modified(stored({"ETag": '"v1"'}), "GET", None, None)


# -- RFC 9110 §15.4.5 the fields of a 304 -----------------------------------

def test_s15_4_5_304_carries_the_listed_fields_only(stored) -> None:
    entry = stored({
        "Cache-Control": "max-age=60", "Content-Location": "/r.en", "Date": DATE_T0,
        "ETag": '"v1"', "Expires": "Mon, 01 Jan 2024 00:01:00 GMT", "Vary": "Accept",
        "Content-Type": "text/html", "Content-Length": "4", "Content-Encoding": "gzip",
        "Last-Modified": LM, "X-Other": "1",
    })
    names = {k.lower() for k, _ in not_modified_fields(entry)}
    assert names == {"cache-control", "content-location", "date", "etag", "expires", "vary"}


def test_s15_4_5_last_modified_is_added_when_there_is_no_etag(stored) -> None:
    entry = stored({"Last-Modified": LM, "Content-Type": "text/html", "Date": DATE_T0})
    assert not_modified_fields(entry) == [("Date", DATE_T0), ("Last-Modified", LM)]


# -- §4.3.3 / §4.3.4 handling a 304: which stored response it selects ---------

def test_s4_3_4_strong_validator_selects_the_same_strong_tag(stored) -> None:
    assert selects(stored({"ETag": '"v1"'}), [("ETag", '"v1"')])


def test_s4_3_4_strong_validator_rejects_a_different_tag(stored) -> None:
    assert not selects(stored({"ETag": '"v1"'}), [("ETag", '"v2"')])


def test_s4_3_4_strong_validator_does_not_select_a_weak_stored_tag(stored) -> None:
    """§4.3.4: strong validators select responses with the same strong validator."""
    assert not selects(stored({"ETag": 'W/"v1"'}), [("ETag", '"v1"')])


def test_s4_3_4_weak_validator_selects_the_same_weak_tag(stored) -> None:
    assert selects(stored({"ETag": 'W/"v1"'}), [("ETag", 'W/"v1"')])
    assert not selects(stored({"ETag": 'W/"v1"'}), [("ETag", 'W/"v2"')])


def test_s4_3_4_weak_validator_selects_the_stored_tag_it_corresponds_to(stored) -> None:
    """§4.3.4: a weak validator selects the stored response it corresponds to, by weak
    comparison (RFC 9110 §8.8.3.2): an origin that weakens its tag when it compresses
    answers the cache's If-None-Match: "v1" with a 304 carrying W/"v1"."""
    assert selects(stored({"ETag": '"v1"'}), [("ETag", 'W/"v1"')])
    assert not selects(stored({"ETag": '"v1"'}), [("ETag", 'W/"v2"')])


def test_s4_3_4_etag_in_304_but_none_stored_selects_nothing(stored) -> None:
    assert not selects(stored({"Last-Modified": LM}), [("ETag", '"v1"')])


def test_s4_3_4_last_modified_selects_when_equal(stored) -> None:
    entry = stored({"Last-Modified": LM})
    assert selects(entry, [("Last-Modified", LM)])
    assert not selects(entry, [("Last-Modified", AFTER_LM)])


def test_s4_3_4_the_etag_decides_before_last_modified(stored) -> None:
    entry = stored({"ETag": '"v1"', "Last-Modified": LM})
    assert not selects(entry, [("ETag", '"v2"'), ("Last-Modified", LM)])
    assert selects(entry, [("ETag", '"v1"'), ("Last-Modified", AFTER_LM)])


def test_s4_3_4_304_without_validator_selects_only_a_stored_response_without_one(
        stored) -> None:
    """§4.3.4's third case: a 304 with no validator selects the stored response only
    "if ... that stored response also lacks a validator" (issue 9, defect 8). A 304 that
    selects nothing makes the cache fetch the full response (tests/rfc/test_flow_answer)."""
    assert not selects(stored({"ETag": '"v1"'}), [("Date", DATE_T0)])
    assert not selects(stored({"Last-Modified": LM}), [("Date", DATE_T0)])
    assert selects(stored({}), [])


# -- §4.3.4 Freshening stored responses upon validation ---------------------

def test_s4_3_4_freshened_entry_takes_new_cache_control_and_timing(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=60", "ETag": '"v1"', "Content-Length": "4",
                    "Content-Type": "text/plain", "Date": DATE_T0}, body=b"body")
    assert reuse(entry, T0 + 120).action is Action.REVALIDATE
    response = [("Cache-Control", "max-age=300"), ("ETag", '"v1"'), ("Age", "5"),
                ("Date", "Mon, 01 Jan 2024 00:02:00 GMT"), ("Connection", "keep-alive")]
    assert selects(entry, response)
    fresh = stored(merge_304(entry, response), body=entry.body,
                   request_time=T0 + 120, response_time=T0 + 121)
    assert fresh.lifetime == 300
    assert fresh.age(T0 + 121) == 6  # §4.2.3: Age 5 + 1 s response delay
    assert fresh.get("content-type") == "text/plain"
    assert fresh.get("content-length") == "4"
    assert fresh.get("age") is None
    assert fresh.body == b"body"
    assert reuse(fresh, T0 + 130).action is Action.SERVE


def test_s4_3_4_304_can_make_a_response_no_cache(stored, reuse) -> None:
    entry = stored({"Cache-Control": "max-age=60", "ETag": '"v1"'})
    fresh = stored(merge_304(entry, [("Cache-Control", "no-cache")]),
                   request_time=T0 + 100, response_time=T0 + 100)
    assert reuse(fresh, T0 + 100).action is Action.REVALIDATE
