"""RFC 9111 §4.3.5 Freshening responses with HEAD: a 200 to a HEAD sent as HEAD (one the
cache cannot answer itself: a precondition it may not evaluate on a stored response)
updates the stored GET response it could
have chosen when validators and Content-Length match, and makes it stale otherwise.
The suite's head-* tests are checks (informational); their ids are in the names."""

from __future__ import annotations

import pytest
from flow_support import ROUTE, T0, answer, facts

from cacheproxy.http.flow import Evict, Forward, Freshen, Pass, Serve, bypass, lookup
from cacheproxy.http.reuse import Action, decide_reuse
from cacheproxy.http.revalidation import head_matches

DATE = ("Date", "Mon, 01 Jan 2024 00:00:00 GMT")
LM = "Sun, 31 Dec 2023 23:00:00 GMT"


# If-Match is the origin's to evaluate once the client asks for validation (max-age=0):
# the HEAD goes as it is, with the stored GET response its 200 may update.
UNANSWERABLE = {"If-Match": '"v1"', "Cache-Control": "max-age=0"}


def test_s4_3_5_a_head_the_cache_cannot_answer_goes_as_head_with_the_stored_get(stored):
    entry = stored({"Cache-Control": "max-age=60", "ETag": '"v1"'})
    req = facts("HEAD", UNANSWERABLE)
    assert bypass(req) is None  # looked up, to find the GET response it may update
    assert lookup(req, (entry,), now=T0, route=ROUTE) == Forward(
        "bypass", "HEAD", head_of=entry)
    assert bypass(facts("GET", body=True)) == Forward("bypass", "GET")


@pytest.mark.parametrize("fields", [{"Range": "bytes=0-1"},
                                    {"Range": "bytes=0-1", "If-Range": '"v1"'}])
def test_s4_3_5_a_head_with_range_is_any_other_head(stored, fields) -> None:
    """RFC 9110 §14.2: Range is defined for GET only, and other methods ignore it (and
    If-Range with it, §13.1.5): the stored GET response answers the HEAD."""
    entry = stored({"Cache-Control": "max-age=60", "ETag": '"v1"'})
    assert isinstance(lookup(facts("HEAD", fields), (entry,), now=T0, route=ROUTE), Serve)


@pytest.mark.parametrize(("fields", "matches"), [
    ([("ETag", '"v1"')], True),
    ([("ETag", '"v2"')], False),
    ([("ETag", 'W/"v1"')], False),
    ([("Last-Modified", LM)], True),
    ([("ETag", '"v1"'), ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")], False),
    ([("ETag", '"v1"'), ("Content-Length", "4")], True),
    ([("ETag", '"v1"'), ("Content-Length", "5")], False),
    ([], False),  # no validator: only a stored response without one
])
def test_s4_3_5_validators_and_length_must_match(stored, fields, matches) -> None:
    entry = stored([("ETag", '"v1"'), ("Last-Modified", LM), DATE], body=b"body")
    assert head_matches(entry, fields) is matches


def test_s4_3_5_without_validators_on_either_side_it_matches(stored) -> None:
    assert head_matches(stored([DATE], body=b"body"), [("Content-Length", "4")])


def test_s4_3_5_a_matching_200_updates_fields_and_freshness__head_200_update(stored) -> None:
    entry = stored([("Cache-Control", "max-age=1"), ("ETag", '"v1"'), ("Template-A", "1"),
                    ("X-Kept", "yes"), DATE], body=b"body")
    d = answer(Forward("bypass", "HEAD", head_of=entry), 200,
               [("Cache-Control", "max-age=1000"), ("ETag", '"v1"'), ("Template-A", "2"),
                ("Content-Length", "4")], req=facts("HEAD", UNANSWERABLE), at=T0 + 10)
    assert isinstance(d, Freshen)
    new = d.entry
    assert new.body == b"body" and new.lifetime == 1000 and new.born == T0 + 10
    assert new.get("Template-A") == "2" and new.get("X-Kept") == "yes"  # head-200-retain
    assert new.get("Content-Length") is None or new.get("Content-Length") == "4"


def test_s4_3_5_a_mismatching_200_makes_the_stored_response_stale(stored) -> None:
    entry = stored([("Cache-Control", "max-age=600"), ("ETag", '"v1"'), DATE])
    d = answer(Forward("bypass", "HEAD", head_of=entry), 200, [("ETag", '"v2"')],
               req=facts("HEAD", UNANSWERABLE))
    assert isinstance(d, Freshen) and d.entry.lifetime == 0
    reuse = decide_reuse(lifetime=d.entry.lifetime, initial_age=0.0,
                         response_time=d.entry.born, directives=d.entry.directives,
                         request=facts().directives, now=T0, shared=True)
    assert reuse.action is Action.REVALIDATE


def test_s4_3_5_new_fields_that_forbid_storing_evict(stored) -> None:
    entry = stored([("Cache-Control", "max-age=600"), ("ETag", '"v1"'), DATE])
    d = answer(Forward("bypass", "HEAD", head_of=entry), 200,
               [("ETag", '"v1"'), ("Cache-Control", "no-store")],
               req=facts("HEAD", UNANSWERABLE))
    assert d == Evict((entry.key,), "no-store")


def test_s5_2_1_5_a_no_store_head_updates_nothing(stored) -> None:
    entry = stored([("Cache-Control", "max-age=600"), ("ETag", '"v1"'), DATE])
    req = facts("HEAD", {"If-Match": '"v1"', "Cache-Control": "max-age=0, no-store"})
    assert answer(Forward("bypass", "HEAD", head_of=entry), 200, [("ETag", '"v1"')],
                  req=req) == Pass(None)


@pytest.mark.parametrize("status", [206, 304, 404, 500])
def test_s4_3_5_only_a_200_updates(stored, status: int) -> None:
    entry = stored([("Cache-Control", "max-age=600"), ("ETag", '"v1"'), DATE])
    d = answer(Forward("bypass", "HEAD", head_of=entry), status, [("ETag", '"v1"')],
               req=facts("HEAD", UNANSWERABLE))
    assert d == Pass(None)
