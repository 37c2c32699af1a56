"""RFC 9110 §14 Range requests, answered from a stored complete response (RFC 9111 §3.3
is about storing partial content, which this cache does not): §14.1 ranges, §14.2 Range,
§13.1.5 If-Range, §14.4 Content-Range, §14.6 multipart/byteranges, §15.5.17 416. Tests
named after the suite's partial-* tests carry the id after the double underscore."""

from __future__ import annotations

import pytest
from flow_support import ROUTE, T0, answer, facts

from cacheproxy.http.flow import Forward, Pass, Refetch, Serve, Store, lookup, range_answer
from cacheproxy.http.ranges import (
    MAX_RANGES,
    Partial,
    Unsatisfiable,
    content_range,
    if_range_holds,
    multipart_byteranges,
    parse_ranges,
)

LM = "Sun, 31 Dec 2023 23:00:00 GMT"
BODY = b"01234567890"  # 11 bytes, as the suite's


@pytest.mark.parametrize(("value", "ranges"), [
    ("bytes=0-1", ((0, 1),)),
    ("bytes=5-", ((5, 10),)),  # open-ended
    ("bytes=-5", ((6, 10),)),  # suffix
    ("bytes=-50", ((0, 10),)),  # a suffix longer than the representation: all of it
    ("bytes=8-100", ((8, 10),)),  # last-pos past the end: up to the end
    ("bytes=0-1, 4-5", ((0, 1), (4, 5))),
    ("BYTES = 0-1", ((0, 1),)),
    ("bytes=0-1,,", ((0, 1),)),  # empty list members are ignored
    ("bytes=0-1, 20-30", ((0, 1),)),  # the unsatisfiable one is left out
])
def test_s14_1_satisfiable_ranges(value: str, ranges) -> None:
    assert parse_ranges(value, len(BODY)) == Partial(ranges, 11)


@pytest.mark.parametrize("value", ["bytes=11-", "bytes=20-30", "bytes=-0", "bytes=11-11, 12-"])
def test_s14_1_1_no_satisfiable_range_is_416(value: str) -> None:
    assert parse_ranges(value, len(BODY)) == Unsatisfiable(11)


def test_s14_1_1_nothing_is_satisfiable_in_an_empty_representation() -> None:
    assert parse_ranges("bytes=0-", 0) == Unsatisfiable(0)


@pytest.mark.parametrize("value", [
    "items=0-1", "bytes", "bytes=", "bytes=1-0", "bytes=a-b", "bytes=0-1, x", "bytes=--1",
    "bytes=" + ",".join(["0-0"] * (MAX_RANGES + 1)),
])
def test_s14_2_an_invalid_or_excessive_range_is_ignored(value: str) -> None:
    assert parse_ranges(value, len(BODY)) is None


@pytest.mark.parametrize("value", [
    "bytes=0-,0-", "bytes=0-10, -11", "bytes=" + ",".join(["0-"] * MAX_RANGES),
    "bytes=0-9, 2-5",  # 10 + 4 bytes of 11
])
def test_s14_2_ranges_adding_up_to_more_than_the_representation_are_ignored(value: str) -> None:
    """§14.2, §17.15: overlapping ranges must not multiply the answer (32 copies of the
    body in one 206); the whole representation goes instead, as nginx sends it."""
    assert parse_ranges(value, len(BODY)) is None


def test_s14_2_overlapping_ranges_within_the_length_are_served() -> None:
    assert parse_ranges("bytes=0-3, 2-5", len(BODY)) == Partial(((0, 3), (2, 5)), 11)


def test_s14_4_content_range() -> None:
    assert content_range(0, 1, 11) == "bytes 0-1/11"


def test_s14_6_multipart_byteranges() -> None:
    body = multipart_byteranges(BODY, Partial(((0, 1), (4, 5)), 11), "text/plain", "XYZ")
    assert body == (b"\r\n--XYZ\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/11"
                    b"\r\n\r\n01\r\n--XYZ\r\nContent-Type: text/plain\r\nContent-Range: "
                    b"bytes 4-5/11\r\n\r\n45\r\n--XYZ--\r\n")


# -- §13.1.5 If-Range ------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "holds"), [
    ('"v1"', True), ('"v2"', False), ('W/"v1"', False), (LM, True),
    ("Mon, 01 Jan 2024 00:00:00 GMT", False), ("garbage", False),
])
def test_s13_1_5_if_range(stored, value: str, holds: bool) -> None:
    entry = stored({"ETag": '"v1"', "Last-Modified": LM})
    assert if_range_holds(value, entry) is holds


# -- the flow: a fresh stored response answers; otherwise the origin does ------------------

@pytest.fixture
def fresh(stored):  # type: ignore[no-untyped-def]
    return stored({"Cache-Control": "max-age=3600", "ETag": '"v1"'}, body=BODY)


def test_s14_2_a_fresh_response_answers_the_range__partial_store_complete_reuse_partial(
    fresh
) -> None:
    req = facts("GET", {"Range": "bytes=0-1"})
    assert isinstance(lookup(req, (fresh,), now=T0 + 1, route=ROUTE), Serve)
    assert range_answer(fresh, req) == Partial(((0, 1),), 11)


def test_s14_2_no_last__partial_store_complete_reuse_partial_no_last(fresh) -> None:
    assert range_answer(fresh, facts("GET", {"Range": "bytes=5-"})) == Partial(((5, 10),), 11)


def test_s14_2_suffix__partial_store_complete_reuse_partial_suffix(fresh) -> None:
    assert range_answer(fresh, facts("GET", {"Range": "bytes=-5"})) == Partial(((6, 10),), 11)


def test_s13_1_5_a_false_if_range_gets_the_whole_response(fresh) -> None:
    req = facts("GET", {"Range": "bytes=0-1", "If-Range": '"v0"'})
    assert range_answer(fresh, req) is None
    ok = facts("GET", {"Range": "bytes=0-1", "If-Range": '"v1"'})
    assert range_answer(fresh, ok) == Partial(((0, 1),), 11)


def test_s14_2_only_a_get_of_a_200(stored, fresh) -> None:
    assert range_answer(fresh, facts("HEAD", {"Range": "bytes=0-1"})) is None
    missing = stored({"Cache-Control": "max-age=3600"}, status=404, body=BODY)
    assert range_answer(missing, facts("GET", {"Range": "bytes=0-1"})) is None


def test_s14_2_several_ranges_of_a_coded_response_are_sent_whole(stored) -> None:
    entry = stored({"Cache-Control": "max-age=3600", "Content-Encoding": "gzip"}, body=BODY)
    assert range_answer(entry, facts("GET", {"Range": "bytes=0-1, 4-5"})) is None
    assert range_answer(entry, facts("GET", {"Range": "bytes=0-1"})) == Partial(((0, 1),), 11)


def test_s14_2_a_stale_response_is_validated_then_cut(stored) -> None:
    stale = stored({"Cache-Control": "max-age=1", "ETag": '"v1"'}, body=BODY)
    d = lookup(facts("GET", {"Range": "bytes=0-1"}), (stale,), now=T0 + 5, route=ROUTE)
    assert isinstance(d, Forward) and d.stored is stale and d.may_store
    assert d.strips_client_conditionals  # the Range does not go upstream


# -- answered(): the whole representation was asked for ----------------------------------

MISS = Forward("uri-miss", "GET", may_store=True)
RANGED = facts("GET", {"Range": "bytes=0-1"})


def test_s14_2_a_stored_200_of_known_length_is_read_whole_then_cut() -> None:
    d = answer(MISS, 200, {"Cache-Control": "max-age=60"}, req=RANGED, length=11)
    assert isinstance(d, Store) and d.whole_first


def test_s14_2_without_a_length_the_range_is_the_origins() -> None:
    d = answer(MISS, 200, {"Cache-Control": "max-age=60"}, req=RANGED, length=None)
    assert d == Refetch(Forward("bypass", "GET"))


@pytest.mark.parametrize("fields", [{"Cache-Control": "no-store"}, {"Cache-Control": "private"}])
def test_s14_2_a_200_not_stored_the_range_is_the_origins(fields) -> None:
    """(hit-for-pass: the URL's next Range goes to the origin as it is at once)"""
    assert answer(MISS, 200, fields, req=RANGED, length=11) == Refetch(
        Forward("bypass", "GET"), hit_for_pass=True)


def test_s14_2_an_error_is_relayed_as_it_is() -> None:
    assert answer(MISS, 404, {}, req=RANGED, length=3) == Pass("not-reusable", True)


def test_s14_2_too_big_to_store_the_range_is_the_origins() -> None:
    d = answer(MISS, 200, {"Cache-Control": "max-age=60"}, req=RANGED, length=10**10)
    assert d == Refetch(Forward("bypass", "GET"), hit_for_pass=True)
