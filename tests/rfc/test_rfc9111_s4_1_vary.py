"""RFC 9111 §2 (the primary cache key) and §4.1 (calculating cache keys with Vary)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from cacheproxy.http.cache_key import (
    normalise,
    primary_key,
    select_variant,
    vary_fields,
    vary_values,
)


def request(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


# -- §2 the primary key ------------------------------------------------------

def test_s2_primary_key_is_the_target_uri() -> None:
    assert primary_key("http", "example.com", "/a?b=1") == "http://example.com/a?b=1"


@pytest.mark.parametrize(
    ("scheme", "host", "expected"),
    [
        ("http", "Example.COM:80", "http://example.com/"),
        ("https", "example.com:443", "https://example.com/"),
        ("http", "example.com:443", "http://example.com:443/"),
        ("https", "example.com:8443", "https://example.com:8443/"),
        ("http", "[::1]:80", "http://[::1]/"),
        ("http", "[::1]:8080", "http://[::1]:8080/"),
        ("http", "[::1]", "http://[::1]/"),
    ],
)
def test_s2_equivalent_authorities_share_a_key(scheme: str, host: str, expected: str) -> None:
    """RFC 9110 §4.2.3: host is case-insensitive and a default port equals its absence."""
    assert primary_key(scheme, host, "/") == expected


def test_s2_empty_target_is_root() -> None:
    assert primary_key("http", "example.com", "") == "http://example.com/"


def test_s2_path_and_query_are_case_sensitive() -> None:
    assert primary_key("http", "h", "/A?Q=1") != primary_key("http", "h", "/a?q=1")


# -- §4.1 the Vary field names -----------------------------------------------

@pytest.mark.parametrize("vary", [None, "", "   ", ",", " , ,"])
def test_s4_1_absent_or_empty_vary_varies_on_nothing(vary: str | None) -> None:
    assert vary_fields(vary) == ()


def test_s4_1_field_names_are_case_insensitive_and_trimmed() -> None:
    """§4.1 / RFC 9110 §5.1: field names are case-insensitive; list OWS is not part of them."""
    assert vary_fields("  Accept-Encoding ,USER-agent\t") == ("accept-encoding", "user-agent")


def test_s4_1_repeated_field_names_count_once() -> None:
    assert vary_fields("Accept, accept, ACCEPT") == ("accept",)


def test_s4_1_empty_list_members_are_ignored() -> None:
    """RFC 9110 §5.6.1: recipients ignore empty list elements."""
    assert vary_fields(", ,Accept,,") == ("accept",)


@pytest.mark.parametrize("vary", ["*", " * ", "Accept, *", "*, Accept-Encoding"])
def test_s4_1_vary_star_never_matches(vary: str) -> None:
    """§4.1: a Vary containing "*" always fails to match."""
    assert vary_fields(vary) is None


def test_s4_1_star_as_part_of_a_name_is_not_star() -> None:
    assert vary_fields("X-*") == ("x-*",)


# -- §4.1 normalising the request's values ----------------------------------

def test_s4_1_absent_request_field_is_none_and_differs_from_empty() -> None:
    """§4.1: an absent field only matches another request where it is absent too."""
    fields = ("accept-encoding",)
    absent = vary_values(fields, request())
    empty = vary_values(fields, request(("Accept-Encoding", "")))
    assert absent == (None,)
    assert empty == ("",)
    assert absent != empty


def test_s4_1_request_field_lookup_is_case_insensitive() -> None:
    fields = ("accept-encoding",)
    assert vary_values(fields, request(("ACCEPT-ENCODING", "gzip"))) == ("gzip",)


def test_s4_1_whitespace_and_list_layout_are_normalised() -> None:
    """§4.1: values may be normalised, e.g. by removing whitespace or combining lines."""
    fields = ("accept-encoding",)
    one_line = vary_values(fields, request(("Accept-Encoding", "gzip,  br")))
    two_lines = vary_values(fields, request(("Accept-Encoding", "gzip"),
                                            ("Accept-Encoding", "br")))
    padded = vary_values(fields, request(("Accept-Encoding", "  gzip ,\tbr  ")))
    assert one_line == two_lines == padded == ("gzip,br",)


def test_s4_1_member_order_is_significant() -> None:
    """§4.1 allows no reordering: "gzip, br" and "br, gzip" may select differently."""
    fields = ("accept-encoding",)
    assert vary_values(fields, request(("Accept-Encoding", "gzip, br"))) != vary_values(
        fields, request(("Accept-Encoding", "br, gzip")))


def test_s4_1_accept_language_order_is_significant__vary_normalise_lang_order() -> None:
    """§4.1 allows "reordering field values when order is not significant"; RFC 9110
    §12.5.4: "some recipients treat the order in which language tags are listed as an
    indication of descending priority, particularly for tags that are assigned equal
    quality values" (so do Express's and Django's negotiation): "en, de" may be answered in
    English and "de, en" in German, so they are different variants."""
    fields = ("accept-language",)
    assert vary_values(fields, request(("Accept-Language", "en, de"))) != vary_values(
        fields, request(("Accept-Language", "de, en")))


def test_s4_1_another_accept_language_does_not_select__vary_normalise_lang_select(
        stored) -> None:
    """§4.1: a stored response is used (without validation) only when the nominated fields
    match, i.e. can be transformed into each other without changing their meaning. The
    suite stores the German answer to "en, de" and expects it for "fr;q=0.5, de;q=1.0":
    another request, which the cache would have to negotiate for the origin."""
    entry = stored({"Cache-Control": "max-age=5000", "Vary": "Accept-Language",
                    "Content-Language": "de"}, vary=("accept-language",), vary_values=(
        normalise("accept-language", "en, de"),))
    other = request(("Accept-Language", "fr;q=0.5, de;q=1.0"))
    assert select_variant((entry,), other) is None
    assert select_variant((entry,), request(("Accept-Language", "EN ,de"))) is entry


@pytest.mark.parametrize("name", ["accept", "accept-charset", "accept-encoding",
                                  "accept-language"])
def test_s4_1_content_negotiation_values_compare_caselessly(name: str) -> None:
    """RFC 9110 §12.5: the tokens in these fields are case-insensitive."""
    assert normalise(name, "GZIP, En-US") == normalise(name, "gzip,en-us")


@pytest.mark.parametrize("name", ["user-agent", "cookie", "x-custom", "authorization"])
def test_s4_1_other_values_keep_their_case(name: str) -> None:
    assert normalise(name, "Value") != normalise(name, "value")


def test_s4_1_normalise_keeps_none_and_empty_apart() -> None:
    assert normalise("accept", None) is None
    assert normalise("accept", "") == ""
    assert normalise("accept", "   ") == ""


def test_s4_1_values_follow_the_vary_field_order() -> None:
    fields = vary_fields("Accept-Language, Accept-Encoding")
    assert fields is not None
    got = vary_values(fields, request(("Accept-Encoding", "br"), ("Accept-Language", "DE")))
    assert got == ("de", "br")


def test_s4_1_stored_response_keeps_vary_and_its_request_values(stored) -> None:
    """§4.1: the stored response remembers the values that selected it."""
    entry = stored([("Vary", "Accept-Encoding"), ("Cache-Control", "max-age=60")],
                   vary=("accept-encoding",), vary_values=("gzip",))
    assert entry.vary == ("accept-encoding",)
    assert entry.vary_values == ("gzip",)
    assert entry.get("vary") == "Accept-Encoding"
