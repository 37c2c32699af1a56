"""RFC 9110 §5.6.7 (HTTP-date), §8.8.3 (ETag and its comparison), §13.1.1 /
§13.1.2 (If-Match / If-None-Match lists), §5.6.1 (lists)."""

from __future__ import annotations

import pytest

from cacheproxy.http.dates import format_http_date, parse_http_date
from cacheproxy.http.fields import split_list
from cacheproxy.http.validators import (
    ETag,
    none_match,
    parse_etag,
    parse_etag_list,
    strong_match,
    weak_match,
)

SUNDAY = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example instant


# -- §5.6.7 Date/Time Formats --------------------------------------------------

@pytest.mark.parametrize("value", [
    "Sun, 06 Nov 1994 08:49:37 GMT",    # IMF-fixdate
    "Sunday, 06-Nov-94 08:49:37 GMT",   # obsolete RFC 850 format
    "Sun Nov  6 08:49:37 1994",         # ANSI C's asctime() format
])
def test_s5_6_7_the_three_formats(value: str) -> None:
    """§5.6.7: recipients MUST accept all three formats."""
    assert parse_http_date(value) == SUNDAY


@pytest.mark.parametrize("value", [
    "sun, 06 nov 1994 08:49:37 gmt",
    "SUN, 06 NOV 1994 08:49:37 GMT",
    "  Sun, 06 Nov 1994 08:49:37 GMT  ",
    "Sun, 6 Nov 1994 08:49:37 GMT",
    "Sun Nov 6 08:49:37 1994",
    "Sunday, 06 Nov 1994 08:49:37 GMT",
    "Sun, 06-Nov-1994 08:49:37 GMT",
])
def test_s5_6_7_lenient_variants(value: str) -> None:
    """§5.6.7: recipients are encouraged to be robust in parsing timestamps."""
    assert parse_http_date(value) == SUNDAY


def test_s5_6_7_seed_form_without_space_before_gmt() -> None:
    """The seed's "Tue, 19 Aug 2008 06:49:35GMT" (a real server's output)."""
    assert parse_http_date("Tue, 19 Aug 2008 06:49:35GMT") == 1219128575.0
    assert parse_http_date("Tue, 19 Aug 2008 06:49:35 GMT") == 1219128575.0


@pytest.mark.parametrize(("yy", "year_start"), [
    ("94", 757382400.0),    # 1994
    ("99", 915148800.0),    # 1999
    ("00", 946684800.0),    # 2000
    ("05", 1104537600.0),   # 2005
    ("30", 1893456000.0),   # 2030
    ("70", 0.0),            # 1970: "01-Jan-70", the idiom for "already expired"
])
def test_s5_6_7_two_digit_years(yy: str, year_start: float) -> None:
    """§5.6.7: a two-digit year more than 50 years in the future is in the past
    century ("94" is 1994, "30" is 2030)."""
    assert parse_http_date(f"Saturday, 01-Jan-{yy} 00:00:00 GMT") == year_start


@pytest.mark.parametrize("value", [
    None, "", "0", "-1", "1704067200", "tomorrow", "garbage",
    "Sun, 06 Nov 1994",                       # no time
    "Sun, 06 Nov 1994 08:49:37",              # IMF without GMT
    "Sun, 06 Nov 1994 08:49:37 PST",          # not GMT
    "Sun, 06 Foo 1994 08:49:37 GMT",          # no such month
    "Sun, 00 Nov 1994 08:49:37 GMT",          # day 0
    "Sun, 32 Nov 1994 08:49:37 GMT",          # day 32
    "Thu, 31 Feb 1994 08:49:37 GMT",          # no 31 February
    "Sun, 29 Feb 2023 00:00:00 GMT",          # 2023 is no leap year
    "Sun, 06 Nov 1994 24:00:00 GMT",          # hour 24
    "Sun, 06 Nov 1994 08:60:00 GMT",          # minute 60
    "Sun, 06 Nov 1994 08:49:61 GMT",          # second 61
    "Sun, 06 Nov 0000 08:49:37 GMT",          # year 0
    "Sun, 06 Nov 1994 08:49:37 GMT trailing",
    "Sun, 06 Nov 1994 8:49:37 GMT",           # one-digit hour
    "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
    "\u0000",
    "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",  # Arabic-Indic digits: DIGIT is ASCII (RFC 5234)
    "Sun,\u200306 Nov 1994 08:49:37 GMT",     # an em space: whitespace is SP / HTAB
])
def test_s5_6_7_garbage_is_not_a_date(value: str | None) -> None:
    assert parse_http_date(value) is None


def test_s5_6_7_leap_day_in_a_leap_year() -> None:
    assert parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT") == 1709164800.0


def test_s5_6_7_leap_second_is_accepted() -> None:
    """§5.6.7 second = 2DIGIT allows 60 (a leap second): taken as :59."""
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT") == 1483228799.0


def test_s5_6_7_day_name_is_not_checked_against_the_date() -> None:
    """The day name is redundant; a wrong one does not invalidate the date."""
    assert parse_http_date("Mon, 06 Nov 1994 08:49:37 GMT") == SUNDAY


def test_s5_6_7_senders_generate_imf_fixdate() -> None:
    assert format_http_date(SUNDAY) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert format_http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


def test_s5_6_7_format_drops_fractions_of_a_second() -> None:
    assert format_http_date(SUNDAY + 0.999) == "Sun, 06 Nov 1994 08:49:37 GMT"


# -- §8.8.3 ETag -------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ('"xyzzy"', ETag(False, '"xyzzy"')),
    ('W/"xyzzy"', ETag(True, '"xyzzy"')),
    ('""', ETag(False, '""')),
    ('W/""', ETag(True, '""')),
    ('  "v1"  ', ETag(False, '"v1"')),
    ('"a,b"', ETag(False, '"a,b"')),              # "," is an etagc
    ('"!#~\x80\xff"', ETag(False, '"!#~\x80\xff"')),  # etagc includes "!" and obs-text
])
def test_s8_8_3_entity_tags(value: str, expected: ETag) -> None:
    assert parse_etag(value) == expected


def test_s8_8_3_seed_unquoted_tag_is_taken_as_its_opaque_tag() -> None:
    """Servers in the wild (the seed's) send unquoted tags; accept them as strong."""
    assert parse_etag("7936caeeaf6aee6ff8834b381618b513") == ETag(
        False, '"7936caeeaf6aee6ff8834b381618b513"')


@pytest.mark.parametrize("value", [
    None, "", "W/", '"', '"abc', 'W/"abc', '"a b"', '"a\tb"', "a b", "a,b", 'W/ ',
])
def test_s8_8_3_invalid_entity_tags(value: str | None) -> None:
    assert parse_etag(value) is None


# RFC 9110 §8.8.3.2's table: (a, b, strong comparison, weak comparison).
COMPARISON_TABLE = [
    ('W/"1"', 'W/"1"', False, True),
    ('W/"1"', 'W/"2"', False, False),
    ('W/"1"', '"1"', False, True),
    ('"1"', '"1"', True, True),
]


@pytest.mark.parametrize(("a", "b", "strong", "weak"), COMPARISON_TABLE)
def test_s8_8_3_2_comparison_table(a: str, b: str, strong: bool, weak: bool) -> None:
    ta, tb = parse_etag(a), parse_etag(b)
    assert ta is not None and tb is not None
    assert strong_match(ta, tb) is strong
    assert weak_match(ta, tb) is weak
    assert strong_match(tb, ta) is strong  # both functions are symmetric
    assert weak_match(tb, ta) is weak


def test_s8_8_3_2_opaque_tags_compare_case_sensitively() -> None:
    assert not weak_match(ETag(False, '"a"'), ETag(False, '"A"'))


# -- §13.1.1 / §13.1.2 If-Match and If-None-Match lists ---------------------------

def test_s13_1_2_star() -> None:
    assert parse_etag_list("*") is None
    assert parse_etag_list("  *  ") is None
    assert none_match("*", '"anything"')
    assert none_match("*", None)


def test_s13_1_2_list_of_tags() -> None:
    assert parse_etag_list('"a", W/"b",  "c,d"') == [
        ETag(False, '"a"'), ETag(True, '"b"'), ETag(False, '"c,d"')]


def test_s13_1_2_a_backslash_in_an_entity_tag_escapes_nothing() -> None:
    """§8.8.3: etagc includes "\\"; an entity-tag is not a quoted-string."""
    assert parse_etag_list(r'"a\", "b"') == [ETag(False, r'"a\"'), ETag(False, '"b"')]
    assert none_match(r'"x", "a\"', r'"a\"')


def test_s13_1_2_invalid_members_are_skipped() -> None:
    assert parse_etag_list('"a", "b c", , W/, "d"') == [ETag(False, '"a"'), ETag(False, '"d"')]


def test_s13_1_2_star_inside_a_list_is_not_star() -> None:
    """§13.1.2 grammar: "*" / #entity-tag, so "*" mixed with tags is not the wildcard."""
    assert parse_etag_list('"a", *') is not None
    assert not none_match('"a", *', '"b"')


@pytest.mark.parametrize(("inm", "etag", "matched"), [
    ('"v1"', '"v1"', True),
    ('W/"v1"', '"v1"', True),       # weak comparison (§13.1.2)
    ('"v1"', 'W/"v1"', True),
    ('"v0", "v1"', '"v1"', True),
    ('"v0", "v2"', '"v1"', False),
    ('"v1"', None, False),
    ('"v1"', "", False),
    ("", '"v1"', False),
    ('"a,b"', '"a,b"', True),
    ("7936caeeaf6aee6ff8834b381618b513", "7936caeeaf6aee6ff8834b381618b513", True),
])
def test_s13_1_2_if_none_match(inm: str, etag: str | None, matched: bool) -> None:
    assert none_match(inm, etag) is matched


# -- §5.6.1 Lists ---------------------------------------------------------------

@pytest.mark.parametrize(("value", "members"), [
    ("a, b,c", ["a", "b", "c"]),
    (" , a ,, b , ", ["a", "b"]),           # empty elements are ignored
    ('"a, b", c', ['"a, b"', "c"]),         # commas inside quoted strings are kept
    (r'"a\", b", c', [r'"a\", b"', "c"]),   # an escaped quote does not end the string
    ('x="1,2", y', ['x="1,2"', "y"]),
    ("", []),
    (",", []),
])
def test_s5_6_1_split_list(value: str, members: list[str]) -> None:
    assert split_list(value) == members
