"""RFC 9111 §4.4 Invalidating stored responses (after unsafe requests)."""

from __future__ import annotations

import pytest

from cacheproxy.http.invalidation import SAFE_METHODS, invalidated_uris

TARGET = "http://example.com/items/1"


def test_s4_4_unsafe_method_with_success_invalidates_the_target() -> None:
    assert invalidated_uris("POST", 200, TARGET, None, None) == [TARGET]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "PURGE", "get",
                                    "propfind", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK"])
def test_s4_4_unsafe_and_unknown_methods_invalidate(method: str) -> None:
    """§4.4: "(including methods whose safety is unknown)"; methods are case-sensitive
    (RFC 9110 §9.1), so "get" is unknown, hence unsafe."""
    assert invalidated_uris(method, 204, TARGET, None, None) == [TARGET]


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "REPORT",
                                    "SEARCH", "QUERY"])
def test_s4_4_safe_methods_invalidate_nothing(method: str) -> None:
    """RFC 9110 §9.2.1: the safe methods, and the registry's other safe ones."""
    assert invalidated_uris(method, 207, TARGET, "/items/2", "/items/3") == []


def test_s4_4_safe_methods_are_rfc9110s_and_the_registrys() -> None:
    """RFC 9110 §9.2.1; the HTTP Method Registry (RFC 7237 §3, RFC 10008)."""
    assert frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "REPORT", "SEARCH",
                      "QUERY"}) == SAFE_METHODS


@pytest.mark.parametrize("status", [200, 201, 204, 301, 302, 303, 399])
def test_s4_4_non_error_status_invalidates(status: int) -> None:
    """§4.4: a non-error status code: 2xx or 3xx."""
    assert invalidated_uris("POST", status, TARGET, None, None) == [TARGET]


@pytest.mark.parametrize("status", [100, 400, 404, 409, 500, 502, 503])
def test_s4_4_error_or_interim_status_invalidates_nothing(status: int) -> None:
    assert invalidated_uris("POST", status, TARGET, "/items/2", None) == []


def test_s4_4_same_origin_location_and_content_location_are_invalidated() -> None:
    got = invalidated_uris("POST", 201, TARGET, "/items/2", "http://example.com/items/3")
    assert got == [TARGET, "http://example.com/items/2", "http://example.com/items/3"]


def test_s4_4_relative_references_resolve_against_the_target() -> None:
    got = invalidated_uris("PUT", 200, TARGET, "2", " ../all ")
    assert got == [TARGET, "http://example.com/items/2", "http://example.com/all"]


@pytest.mark.parametrize("other", [
    "http://other.example/items/2",      # another host
    "https://example.com/items/2",       # another scheme
    "http://example.com:8080/items/2",   # another port
    "//evil.example/items/2",            # network-path reference to another host
])
def test_s4_4_other_origins_are_not_invalidated(other: str) -> None:
    """§4.4: only when Location / Content-Location share the target's origin
    (a denial-of-service defence, §7.2)."""
    assert invalidated_uris("POST", 200, TARGET, other, other) == [TARGET]


def test_s4_4_the_same_uri_is_listed_once() -> None:
    assert invalidated_uris("POST", 200, TARGET, TARGET, "/items/1") == [TARGET]


@pytest.mark.parametrize("bad", ["http://[::1", "http://[zz]/x", ""])
def test_s4_4_unparsable_references_are_ignored(bad: str) -> None:
    assert invalidated_uris("DELETE", 200, TARGET, bad, bad) == [TARGET]


def test_s4_4_derived_uris_are_written_as_keys_are() -> None:
    """Scheme and host compare case-insensitively and the default port is the same origin
    (RFC 6454 §4, RFC 9110 §4.2.3): the URI is written as primary_key writes a key."""
    got = invalidated_uris("POST", 200, TARGET, "HTTP://EXAMPLE.com:80/items/2#frag", None)
    assert got == [TARGET, "http://example.com/items/2"]


def test_s4_4_a_private_routes_key_suffix_is_kept() -> None:
    target = TARGET + "#private:app"
    got = invalidated_uris("POST", 200, target, "/items/2", "/items/3?x=1")
    assert got == [target, "http://example.com/items/2#private:app",
                   "http://example.com/items/3?x=1#private:app"]
