"""The shared grammar (cacheproxy/http/abnf.py) against the ABNF it quotes: RFC 9110 §5.6.2
(token), RFC 3986 §3.2 (authority), RFC 6454 §7.1 (serialized origin), RFC 9110 §8.8.3
(entity-tag lists), RFC 5234 B.1 (DIGIT)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacheproxy.http.abnf import (
    AUTHORITY_RE,
    ENTITY_TAG_RE,
    ETAG_LIST_MEMBER_RE,
    ORIGIN_RE,
    TOKEN_RE,
    bounded_digits,
)

# RFC 9110 §5.6.2: tchar, spelled out as the RFC lists it.
TCHARS = set("!#$%&'*+-.^_`|~") | set(string.digits) | set(string.ascii_letters)


def test_s5_6_2_tchar_is_exactly_the_rfc_list() -> None:
    accepted = {chr(c) for c in range(256) if TOKEN_RE.fullmatch(chr(c))}
    assert accepted == TCHARS
    assert TOKEN_RE.fullmatch("") is None  # token = 1*tchar


@pytest.mark.parametrize("value", [
    "example.com", "example.com:8080", "[::1]:80", "127.0.0.1", "a.b%2e", "x:", "",
])
def test_rfc3986_s3_2_authorities(value: str) -> None:
    assert AUTHORITY_RE.fullmatch(value)


@pytest.mark.parametrize("value", [
    "a/b", "a?b", "a#b", "u@host", "a b", "[::1", "host:80a", "é.example",
])
def test_rfc3986_s3_2_not_authorities(value: str) -> None:
    assert AUTHORITY_RE.fullmatch(value) is None


def test_rfc6454_s7_1_origin_groups() -> None:
    match = ORIGIN_RE.fullmatch("https://[::1]:8443")
    assert match is not None and match.groups() == ("https", "[::1]", "8443")
    assert ORIGIN_RE.fullmatch("https://a.example/") is None  # no path in an origin
    assert ORIGIN_RE.fullmatch("https://a.example:123456") is None


def test_s8_8_3_list_splits_outside_quotes_only() -> None:
    assert ETAG_LIST_MEMBER_RE.findall('"a,b", W/"c", d') == ['"a,b"', ' W/"c"', " d"]


def test_s8_8_3_entity_tag_groups_the_opaque_tag() -> None:
    assert ENTITY_TAG_RE.findall('W/"x", "y", z') == ["x", "y"]
    assert ENTITY_TAG_RE.fullmatch('"unclosed') is None


# RFC 5234 B.1: 1*DIGIT, read without handing int() a string past its 4300-digit limit.

@given(st.text(alphabet="0123456789", min_size=1, max_size=40),
       st.integers(min_value=0, max_value=2**40))
def test_bounded_digits_is_min_of_the_value_and_the_cap(text: str, cap: int) -> None:
    assert bounded_digits(text, cap) == min(int(text), cap)


# "\u0661" and "\u00b2" (Arabic-Indic one, superscript two) are digits to str.isdigit().
@pytest.mark.parametrize("text", ["", " 1", "1 ", "-1", "+1", "1e3", "\u0661", "\u00b2"])
def test_bounded_digits_refuses_what_is_not_1_digit(text: str) -> None:
    assert bounded_digits(text, 100) is None


def test_bounded_digits_never_converts_a_huge_string() -> None:
    assert bounded_digits("9" * 100_000, 2**31) == 2**31
    assert bounded_digits("0" * 100_000 + "12", 2**31) == 12


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab.:[]/@?# %é019", max_size=12) | st.text(max_size=300))
def test_rfc3986_s3_2_a_remembered_authority_check_answers_as_the_pattern(value: str) -> None:
    """valid_authority keeps its answers for the Hosts it saw lately: the same answer as
    the pattern, the first time and the next, and the table stays bounded."""
    from cacheproxy.http import target

    expected = AUTHORITY_RE.fullmatch(value) is not None
    assert target.valid_authority(value) is expected
    assert target.valid_authority(value) is expected
    assert target._checked.cache_info().currsize <= 1024
