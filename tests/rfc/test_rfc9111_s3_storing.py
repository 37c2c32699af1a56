"""RFC 9111 §3 Storing Responses in Caches: §3 (the conditions), §3.1 (which
fields are stored), §3.2 (updating stored fields from a 304), §3.5 (Authorization),
and the storing side of §5.2.1.5, §5.2.2.3, §5.2.2.5 and §5.2.2.7.
"""

from __future__ import annotations

import pytest

from cacheproxy.http.cache_control import parse_request_directives, parse_response_directives
from cacheproxy.http.fields import end_to_end
from cacheproxy.http.freshness import HEURISTICALLY_CACHEABLE
from cacheproxy.http.revalidation import merge_304
from cacheproxy.http.storability import StorePolicy, Verdict, excluded_fields, storability

T0 = 1_704_067_200.0  # Mon, 01 Jan 2024 00:00:00 GMT
DATE = ("Date", "Mon, 01 Jan 2024 00:00:00 GMT")


def verdict(
    cache_control: str = "",
    *,
    method: str = "GET",
    status: int = 200,
    request_cc: str | None = None,
    authorization: bool = False,
    expires: bool = False,
    set_cookie: bool = False,
    vary_star: bool = False,
    shared: bool = True,
    set_cookie_policy: str = "bypass",
    names_target: bool = False,
) -> Verdict:
    return storability(
        method=method, status=status,
        request=parse_request_directives(request_cc),
        response=parse_response_directives(cache_control),
        has_authorization=authorization, has_expires=expires, has_set_cookie=set_cookie,
        vary_star=vary_star, policy=StorePolicy(shared=shared, set_cookie=set_cookie_policy),
        names_target=names_target,
    )


# -- §3: the request method is understood ----------------------------------

def test_s3_get_with_explicit_freshness_is_stored() -> None:
    """§3: the common case, a GET answered 200 with max-age."""
    assert verdict("max-age=60") == Verdict(True, "")


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "DELETE", "PATCH", "get"])
def test_s3_only_get_is_stored(method: str) -> None:
    """§3: only GET responses are kept (HEAD is answered from the GET; methods are
    case-sensitive, RFC 9110 §9.1, so "get" is an unknown method)."""
    assert verdict("max-age=60, public", method=method) == Verdict(False, "method", by_request=True)


# -- RFC 9110 §9.3.3: a POST response, with explicit freshness and its own URI --------

@pytest.mark.parametrize("cache_control, expires", [
    ("max-age=60", False), ("s-maxage=60", False), ("", True)])
def test_s9_3_3_post_response_naming_its_target_with_explicit_freshness_is_stored__method_POST(
        cache_control: str, expires: bool) -> None:
    """RFC 9110 §9.3.3: "only cacheable when they include explicit freshness information
    ... and a Content-Location header field that has the same value as the POST's target
    URI"; §8.7: it is then the resource's new representation."""
    got = verdict(cache_control, method="POST", expires=expires, names_target=True)
    assert got == Verdict(True, "")


@pytest.mark.parametrize("cache_control, names_target, status", [
    ("max-age=60", False, 200),    # no Content-Location naming the target
    ("public", True, 200),         # public alone is no freshness
    ("", True, 200),               # a heuristic lifetime is not explicit
    ("s-maxage=60", True, 200),    # (see below: a private cache ignores s-maxage)
    ("max-age=60", True, 201),     # Created, No Content: the POST's own answer, not the
    ("max-age=60", True, 204),     # representation a GET would get
])
def test_s9_3_3_other_post_responses_are_not_stored(
        cache_control: str, names_target: bool, status: int) -> None:
    shared = cache_control != "s-maxage=60"
    got = verdict(cache_control, method="POST", names_target=names_target, status=status,
                  shared=shared)
    assert got == Verdict(False, "method", by_request=True)


@pytest.mark.parametrize("why, kwargs", [
    ("no-store", {"request_cc": "no-store"}),
    ("set-cookie", {"set_cookie": True}),
    ("authorization", {"authorization": True}),
])
def test_s9_3_3_a_post_response_meets_the_other_conditions_of_s3_too(
        why: str, kwargs: dict) -> None:
    got = verdict("max-age=60", method="POST", names_target=True, **kwargs)
    assert not got.storable and got.reason == why


# -- §3: the status code is final (and understood for 206/304) -------------

@pytest.mark.parametrize("status", [100, 101, 103, 199])
def test_s3_interim_responses_are_not_stored(status: int) -> None:
    """§3: "the response status code is final"."""
    assert verdict("max-age=60", status=status) == Verdict(False, "status")


@pytest.mark.parametrize("status", [206, 304])
def test_s3_partial_and_not_modified_are_not_stored_as_responses(status: int) -> None:
    """§3 / §3.3-§3.4: a 206 or a 304 is never stored as a complete response here."""
    assert verdict("max-age=60", status=status) == Verdict(False, "status")


@pytest.mark.parametrize("status", [428, 429, 431, 511])
@pytest.mark.parametrize("cache_control", ["max-age=60", "public, s-maxage=60",
                                           "max-age=60, must-understand"])
def test_rfc6585_statuses_that_must_not_be_stored_are_not(status: int, cache_control: str
                                                          ) -> None:
    """RFC 6585 §3-§6: "Responses with the 429 status code MUST NOT be stored by a cache"
    (so for 428, 431 and 511), explicit freshness or not."""
    assert verdict(cache_control, status=status) == Verdict(False, "status")
    assert verdict("", status=status, expires=True) == Verdict(False, "status")


# -- §3: something must make the response cacheable ------------------------

@pytest.mark.parametrize("status", sorted(HEURISTICALLY_CACHEABLE - {206}))
def test_s3_heuristically_cacheable_status_alone_suffices(status: int) -> None:
    """§3 last bullet, RFC 9110 §15.1: a heuristically cacheable status is enough."""
    assert verdict("", status=status).storable


def test_s3_heuristically_cacheable_set_is_the_rfc9110_list() -> None:
    """RFC 9110 §15.1: 200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501."""
    assert frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501}) \
        == HEURISTICALLY_CACHEABLE


@pytest.mark.parametrize("status", [201, 202, 302, 303, 307, 400, 403, 409, 500, 502, 503])
def test_s3_other_status_without_explicit_freshness_is_not_stored(status: int) -> None:
    """§3: a status outside RFC 9110 §15.1's list needs an explicit permission."""
    assert verdict("", status=status) == Verdict(False, "status")


@pytest.mark.parametrize(
    ("cache_control", "expires"),
    [("max-age=60", False), ("public", False), ("s-maxage=60", False), ("", True)],
)
def test_s3_explicit_permission_makes_other_status_storable(
    cache_control: str, expires: bool
) -> None:
    """§3: max-age, public, s-maxage (shared) or an Expires field each suffice."""
    assert verdict(cache_control, status=302, expires=expires).storable


def test_s3_invalid_expires_still_counts_as_expires() -> None:
    """§3 "an Expires header field" is present (its invalid value only makes it stale,
    §5.3), so a 302 with "Expires: 0" may be stored."""
    assert verdict("", status=302, expires=True).storable


def test_s3_s_maxage_only_permits_storing_in_a_shared_cache() -> None:
    """§3: "if the cache is shared: an s-maxage response directive"."""
    assert verdict("s-maxage=60", status=302, shared=True).storable
    assert verdict("s-maxage=60", status=302, shared=False) == Verdict(False, "status")


def test_s3_private_permits_storing_in_a_private_cache_only() -> None:
    """§3: "a private response directive, if the cache is not shared"."""
    assert verdict("private", status=302, shared=False).storable
    assert verdict("private", status=302, shared=True) == Verdict(False, "private")


# -- §5.2.1.5 / §5.2.2.5 no-store ------------------------------------------

def test_s5_2_2_5_response_no_store_is_not_stored() -> None:
    assert verdict("no-store, max-age=60") == Verdict(False, "no-store")


def test_s5_2_2_5_no_store_wins_over_public_and_private_cache() -> None:
    """§4.2.1 "the most restrictive directive should be honored"."""
    assert verdict("public, no-store", shared=False) == Verdict(False, "no-store")


def test_s5_2_1_5_request_no_store_is_not_stored() -> None:
    assert verdict("max-age=60", request_cc="no-store") == Verdict(
        False, "no-store", by_request=True)  # §5.2.1.5: says nothing of what is stored


# -- §5.2.2.3 must-understand ----------------------------------------------

def test_s5_2_2_3_must_understand_overrides_no_store_for_understood_status() -> None:
    """§5.2.2.3: a cache that understands the status ignores the accompanying no-store."""
    assert verdict("must-understand, no-store, max-age=60", status=200).storable


@pytest.mark.parametrize("status", [302, 303, 307])
def test_s5_2_2_3_redirects_are_understood(status: int) -> None:
    assert verdict("must-understand, no-store, max-age=60", status=status).storable


@pytest.mark.parametrize("status", [299, 418, 420, 599])
def test_s5_2_2_3_must_understand_unknown_status_is_not_stored(status: int) -> None:
    """§3 third bullet: with must-understand, the cache must understand the status."""
    assert verdict("must-understand, no-store, max-age=60", status=status) == Verdict(
        False, "must-understand"
    )


def test_s5_2_2_3_must_understand_unknown_status_without_no_store_is_not_stored() -> None:
    assert verdict("must-understand, max-age=60", status=299) == Verdict(
        False, "must-understand"
    )


def test_s5_2_2_3_must_understand_does_not_override_the_requests_no_store() -> None:
    """§5.2.1.5: the request's no-store forbids storing "any response to it";
    must-understand only concerns the response's own no-store."""
    assert verdict("must-understand, no-store, max-age=60", request_cc="no-store") == Verdict(
        False, "no-store", by_request=True
    )


# -- §5.2.2.7 private ------------------------------------------------------

def test_s5_2_2_7_unqualified_private_is_not_stored_by_a_shared_cache() -> None:
    assert verdict("private, max-age=60") == Verdict(False, "private")


def test_s5_2_2_7_unqualified_private_is_stored_by_a_private_cache() -> None:
    assert verdict("private, max-age=60", shared=False).storable


def test_s5_2_2_7_qualified_private_stores_without_the_named_fields() -> None:
    """§5.2.2.7: the qualified form forbids storing only the named fields."""
    d = parse_response_directives('private="Set-Cookie, X-User", max-age=60')
    assert verdict('private="Set-Cookie, X-User", max-age=60').storable
    assert excluded_fields(d, StorePolicy(shared=True)) == {"set-cookie", "x-user"}


def test_s5_2_2_7_qualified_private_fields_are_kept_by_a_private_cache() -> None:
    d = parse_response_directives('private="X-User", max-age=60')
    assert "x-user" not in excluded_fields(d, StorePolicy(shared=False))


def test_s5_2_2_7_qualified_private_fields_are_left_out_of_the_stored_copy(stored) -> None:
    d = parse_response_directives('private="X-User"')
    entry = stored(
        [("Cache-Control", 'private="X-User"'), ("X-User", "alice"), ("Content-Type", "a/b")],
        excluded=excluded_fields(d, StorePolicy()),
    )
    assert entry.get("x-user") is None
    assert entry.get("content-type") == "a/b"


# -- §3.5 Storing responses to authenticated requests ----------------------

def test_s3_5_authorization_without_permission_is_not_stored_by_a_shared_cache() -> None:
    assert verdict("max-age=60", authorization=True) == Verdict(False, "authorization", True)


@pytest.mark.parametrize("permission", ["public", "s-maxage=60", "must-revalidate, max-age=60"])
def test_s3_5_authorization_with_explicit_permission_is_stored(permission: str) -> None:
    """§3.5: public, s-maxage or must-revalidate explicitly allow shared caching."""
    assert verdict(permission, authorization=True).storable


@pytest.mark.parametrize("not_permission", ["proxy-revalidate, max-age=60", "no-cache"])
def test_s3_5_other_directives_do_not_permit(not_permission: str) -> None:
    """§3.5 names exactly three directives; proxy-revalidate is not one of them."""
    assert verdict(not_permission, authorization=True) == Verdict(False, "authorization", True)


def test_s3_5_authorization_does_not_restrict_a_private_cache() -> None:
    assert verdict("max-age=60", authorization=True, shared=False).storable


def test_s3_5_private_wins_over_public_with_authorization() -> None:
    """§4.2.1: with conflicting directives the most restrictive one is honoured."""
    assert verdict("public, private", authorization=True) == Verdict(False, "private")


# -- Set-Cookie (a shared cache never replays one user's cookie, §7.3) -----

def test_set_cookie_bypass_policy_does_not_store() -> None:
    assert verdict("max-age=60", set_cookie=True) == Verdict(False, "set-cookie")


def test_set_cookie_strip_policy_stores_without_the_cookie(stored) -> None:
    policy = StorePolicy(shared=True, set_cookie="strip")
    d = parse_response_directives("max-age=60")
    assert verdict("max-age=60", set_cookie=True, set_cookie_policy="strip").storable
    assert "set-cookie" in excluded_fields(d, policy)
    entry = stored(
        [("Cache-Control", "max-age=60"), ("Set-Cookie", "sid=1"), ("Set-Cookie", "x=2")],
        excluded=excluded_fields(d, policy),
    )
    assert entry.get("set-cookie") is None


def test_s5_2_2_7_private_set_cookie_lets_bypass_store_the_rest() -> None:
    """§5.2.2.7: the origin says the cookie alone is private; stored without it."""
    assert verdict('private="Set-Cookie", max-age=60', set_cookie=True).storable
    assert verdict('private="X-User", max-age=60', set_cookie=True) == Verdict(
        False, "set-cookie")


def test_set_cookie_is_a_private_caches_business() -> None:
    assert verdict("max-age=60", set_cookie=True, shared=False).storable


@pytest.mark.parametrize("mode", ["bypass", "strip"])
def test_a_private_cache_stores_set_cookie_answers_without_the_cookie(mode: str) -> None:
    """As browsers' caches do: a hit never sets a cookie again (review-authcookie)."""
    d = parse_response_directives("max-age=60")
    assert excluded_fields(d, StorePolicy(shared=False, set_cookie=mode)) == {"set-cookie"}


# -- §4.1 Vary: * ---------------------------------------------------------

def test_s4_1_vary_star_is_not_stored() -> None:
    """§4.1: "Vary: *" always fails to match, so storing it is useless."""
    assert verdict("max-age=60", vary_star=True) == Verdict(False, "vary-star")


# -- §3.1 Storing header and trailer fields --------------------------------

def test_s3_1_hop_by_hop_and_connection_named_fields_are_not_stored(stored) -> None:
    """§3.1 / RFC 9110 §7.6.1: Connection, the fields it names, and the other
    hop-by-hop fields are not stored."""
    entry = stored([
        ("Connection", "close, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"), ("Proxy-Authenticate", "Basic"), ("TE", "trailers"),
        ("Trailer", "X-T"), ("Upgrade", "h2c"), ("Content-Type", "text/plain"),
        ("ETag", '"v1"'), DATE,
    ])
    assert [name.lower() for name, _ in entry.header_pairs()] == ["content-type", "etag", "date"]


def test_s3_1_proxy_authentication_fields_are_not_stored(stored) -> None:
    """§3.1: Proxy-Authenticate, Proxy-Authentication-Info and Proxy-Authorization are
    specific to the proxy that received them: a cache MUST NOT store them (a later
    client would be replayed the first one's nextnonce)."""
    entry = stored([
        ("Proxy-Authenticate", 'Basic realm="x"'),
        ("Proxy-Authentication-Info", 'nextnonce="for-the-first-client"'),
        ("Proxy-Authorization", "Basic eDp5"), ("Content-Type", "text/plain"), DATE,
    ])
    assert [name.lower() for name, _ in entry.header_pairs()] == ["content-type", "date"]


def test_s3_1_age_is_not_replayed_from_storage(stored) -> None:
    """§4.2.3: Age is folded into the initial age and recomputed on each reuse."""
    entry = stored([("Age", "30"), ("Cache-Control", "max-age=60")])
    assert entry.get("age") is None
    assert entry.age(T0) == 30


def test_s3_1_field_names_keep_their_case_and_order(stored) -> None:
    entry = stored([("X-B", "1"), ("x-a", "2"), ("X-B", "3"), DATE])
    assert entry.header_pairs() == [("X-B", "1"), ("x-a", "2"), ("X-B", "3"), DATE]


def test_rfc9110_s6_6_1_a_message_without_date_is_stored_with_one(stored) -> None:
    """RFC 9110 §6.6.1: a cache storing a message without Date adds the receipt time."""
    entry = stored([("ETag", '"v1"')], response_time=T0 + 5)
    assert entry.get("Date") == "Mon, 01 Jan 2024 00:00:05 GMT"


def test_rfc9110_s7_6_1_end_to_end_drops_connection_options() -> None:
    pairs = [("Connection", "X-A"), ("Connection", "x-b"), ("X-A", "1"), ("X-B", "2"),
             ("Keep-Alive", "1"), ("X-C", "3")]
    assert end_to_end(pairs) == [("X-C", "3")]


# -- §3.2 Updating stored header fields (from a 304) -----------------------

def test_s3_2_304_fields_replace_stored_ones_and_others_stay(stored) -> None:
    entry = stored([("Content-Type", "text/plain"), ("Cache-Control", "max-age=10"),
                    ("ETag", '"v1"'), ("X-Old", "kept"), DATE])
    merged = merge_304(entry, [("Cache-Control", "max-age=600"), ("ETag", '"v1"'),
                               ("X-New", "added")])
    assert dict(merged) == {
        "Content-Type": "text/plain", "X-Old": "kept", "Date": DATE[1],
        "Cache-Control": "max-age=600", "ETag": '"v1"', "X-New": "added",
    }


def test_s3_2_content_length_of_the_304_is_not_taken(stored) -> None:
    """§3.2: Content-Length is excepted: the 304's describes no body."""
    entry = stored([("Content-Length", "4"), ("ETag", '"v1"')])
    merged = merge_304(entry, [("Content-Length", "0"), ("ETag", '"v1"')])
    assert [v for k, v in merged if k.lower() == "content-length"] == ["4"]


@pytest.mark.parametrize(("name", "stored_value", "new_value"), [
    ("Content-Encoding", "gzip", "br"),
    ("Content-MD5", "rL0Y20zC+Fzt72VPzMSk2A==", "N7UdGUp1E+RbVvZSTy1R8g=="),
    ("Content-Range", "bytes 0-3/4", "bytes 0-9/10"),
])
def test_s3_2_fields_the_stored_content_depends_on_stay__304_etag_update_response(
    stored, name: str, stored_value: str, new_value: str
) -> None:
    """§3.2: "Header fields that the cache's stored response depends upon" are not
    replaced: the stored bytes keep their coding, digest and range (the suite's
    304-etag-update-response-Content-Encoding, -Content-MD5, -Content-Range)."""
    entry = stored([(name, stored_value), ("ETag", '"v1"'), DATE])
    merged = merge_304(entry, [(name, new_value), ("ETag", '"v1"'), ("X-New", "1")])
    assert [v for k, v in merged if k.lower() == name.lower()] == [stored_value]
    assert ("X-New", "1") in merged


@pytest.mark.parametrize(("name", "new_value"), [
    ("Content-Type", "text/plain;charset=utf-8"), ("Content-Location", "/bar"),
    ("Content-Security-Policy", "default-src 'self' cdn.example.com"),
    ("X-Content-Foo", "b"), ("Content-Foo", "b"),
])
def test_s3_2_other_content_fields_are_updated__304_etag_update_response(
    stored, name: str, new_value: str
) -> None:
    entry = stored([(name, "a"), ("ETag", '"v1"'), DATE])
    merged = merge_304(entry, [(name, new_value), ("ETag", '"v1"')])
    assert [v for k, v in merged if k.lower() == name.lower()] == [new_value]


def test_s3_2_hop_by_hop_fields_of_the_304_are_not_taken(stored) -> None:
    """§3.2 excepts the fields §3.1 does not store: hop-by-hop ones and those the
    304's own Connection names."""
    entry = stored([("ETag", '"v1"'), DATE])
    merged = merge_304(entry, [
        ("Connection", "keep-alive, X-Hop"), ("Keep-Alive", "timeout=5"), ("X-Hop", "1"),
        ("Transfer-Encoding", "chunked"), ("ETag", '"v1"'),
    ])
    assert [k.lower() for k, _ in merged] == ["date", "etag"]


def test_s3_2_a_repeated_field_is_replaced_as_a_whole(stored) -> None:
    entry = stored([("Link", "<a>"), ("Link", "<b>"), ("ETag", '"v1"')])
    merged = merge_304(entry, [("link", "<c>")])
    assert [(k, v) for k, v in merged if k.lower() == "link"] == [("link", "<c>")]


def test_s3_2_merged_fields_give_the_new_freshness(stored) -> None:
    """§3.2 + §4.3.4: the stored response takes the 304's Cache-Control and Date."""
    entry = stored([("Cache-Control", "max-age=10"), ("ETag", '"v1"')], body=b"kept")
    merged = merge_304(entry, [("Cache-Control", "max-age=600"),
                               ("Date", "Mon, 01 Jan 2024 00:10:00 GMT")])
    fresh = stored(merged, body=entry.body, request_time=T0 + 600, response_time=T0 + 600)
    assert fresh.lifetime == 600
    assert fresh.age(T0 + 600) == 0
    assert fresh.body == b"kept"
    assert fresh.etag == '"v1"'
