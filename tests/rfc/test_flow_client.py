"""Request flow, step 3: the answer to a conditional client from a response the cache
holds (RFC 9111 §4.3.2; RFC 9110 §13.1.1, §13.1.3, §13.2.2, §15.4.5)."""

from __future__ import annotations

import pytest
from flow_support import facts

from cacheproxy.http.flow import NotModified, client_answer

LM = "Sun, 31 Dec 2023 23:00:00 GMT"


@pytest.fixture
def entry(stored):
    return stored({"Cache-Control": "max-age=60", "ETag": 'W/"v1"', "Last-Modified": LM,
                   "Content-Type": "text/plain"})


def test_no_condition_gets_the_whole_response(entry) -> None:
    assert client_answer(entry, facts("GET")) is None


def test_s13_2_2_if_none_match_weakly_matching_is_304(entry) -> None:
    d = client_answer(entry, facts("GET", {"If-None-Match": '"x", "v1"'}))
    assert isinstance(d, NotModified)
    names = [k.lower() for k, _ in d.fields]
    # §15.4.5: what a 200 would have carried of Cache-Control, Date, ETag...; no body fields
    assert "etag" in names and "cache-control" in names and "content-type" not in names


def test_s13_2_2_if_none_match_takes_precedence_over_if_modified_since(entry) -> None:
    req = facts("GET", {"If-None-Match": '"other"', "If-Modified-Since": LM})
    assert client_answer(entry, req) is None


@pytest.mark.parametrize(("since", "current"), [
    (LM, True), ("Mon, 01 Jan 2024 00:00:00 GMT", True),
    ("Sun, 31 Dec 2023 22:59:59 GMT", False), ("not a date", False)])
def test_s13_1_3_if_modified_since(entry, since: str, current: bool) -> None:
    d = client_answer(entry, facts("HEAD", {"If-Modified-Since": since}))
    assert (d is not None) == current


def test_only_get_and_head_and_only_200s_are_answered_304(stored, entry) -> None:
    assert client_answer(entry, facts("POST", {"If-None-Match": "*"})) is None
    not_found = stored({"Cache-Control": "max-age=60", "ETag": '"v1"'}, status=404)
    assert client_answer(not_found, facts("GET", {"If-None-Match": '"v1"'})) is None


def test_s15_4_5_last_modified_helps_when_there_is_no_etag(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60", "Last-Modified": LM})
    d = client_answer(entry, facts("GET", {"If-Modified-Since": LM}))
    assert d is not None and ("Last-Modified", LM) in d.fields


def test_s4_3_2_without_last_modified_the_date_is_the_modification_date__conditional_lm_fresh_no_lm(
        stored) -> None:
    """§4.3.2: "If a request contains an If-Modified-Since header field and the
    Last-Modified header field is not present in a stored response, a cache SHOULD use the
    stored response's Date field value". The suite stores a response with Date now and no
    Last-Modified, then sends If-Modified-Since an hour earlier and expects 304; by the
    Date it may have changed since (RFC 9110 §13.1.3): the client gets the response."""
    entry = stored({"Cache-Control": "max-age=10000", "Date": "Mon, 01 Jan 2024 00:00:00 GMT"})
    earlier = facts("GET", {"If-Modified-Since": "Sun, 31 Dec 2023 23:10:00 GMT"})
    assert client_answer(entry, earlier) is None
    same = facts("GET", {"If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"})
    assert isinstance(client_answer(entry, same), NotModified)
