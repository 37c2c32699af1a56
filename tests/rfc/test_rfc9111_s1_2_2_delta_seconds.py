"""RFC 9111 §1.2.2 delta-seconds: "a recipient ... MUST use 2147483648 (2^31) if the
delta-seconds is too large to represent", in every directive and field that carries one:
Cache-Control on requests (§5.2.1) and responses (§5.2.2, RFC 5861) and Age (§5.1).

Issue 9, defect 9: a value past 4,300 digits (Python's int() refuses it) raised ValueError.
"""

from __future__ import annotations

import pytest

from cacheproxy.http.cache_control import (
    MAX_DELTA,
    parse_request_directives,
    parse_response_directives,
)
from cacheproxy.http.freshness import parse_age

HUGE = "9" * 5000


def test_max_delta_is_2_31() -> None:
    assert MAX_DELTA == 2**31


def test_defect9_huge_max_age_is_2_31() -> None:
    assert parse_request_directives(f"max-age={HUGE}").max_age == MAX_DELTA
    assert parse_response_directives(f"max-age={HUGE}").max_age == MAX_DELTA


@pytest.mark.parametrize("text", ["1" + "0" * 10, "2147483649", "2147483648"])
def test_values_from_2_31_on_are_2_31(text: str) -> None:
    assert parse_request_directives(f"max-age={text}").max_age == MAX_DELTA
    assert parse_response_directives(f"max-age={text}").max_age == MAX_DELTA


@pytest.mark.parametrize("name", ["max-age", "max-stale", "min-fresh", "stale-if-error"])
def test_defect9_huge_request_directive_is_2_31(name: str) -> None:
    directives = parse_request_directives(f"{name}={HUGE}")
    assert getattr(directives, name.replace("-", "_")) == MAX_DELTA


@pytest.mark.parametrize(
    "name", ["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"])
def test_defect9_huge_response_directive_is_2_31(name: str) -> None:
    directives = parse_response_directives(f"{name}={HUGE}")
    assert getattr(directives, name.replace("-", "_")) == MAX_DELTA


def test_defect9_huge_quoted_argument_is_2_31() -> None:
    # §5.2: the quoted form is accepted where a token is expected.
    assert parse_response_directives(f'max-age="{HUGE}"').max_age == MAX_DELTA


def test_defect9_leading_zeros_do_not_make_a_number_huge() -> None:
    assert parse_request_directives("max-age=" + "0" * 5000 + "7").max_age == 7
    assert parse_response_directives("s-maxage=" + "0" * 5000).s_maxage == 0
    assert parse_age("0" * 5000 + "42") == 42


def test_the_largest_representable_value_is_kept() -> None:
    assert parse_response_directives("max-age=2147483647").max_age == 2147483647


def test_defect9_huge_age_is_2_31() -> None:
    """§5.1: Age is delta-seconds."""
    assert parse_age(HUGE) == MAX_DELTA
    assert parse_age(f"{HUGE}, 5") is None  # a list is no delta-seconds (stale, §4.2.1)


def test_a_huge_number_that_is_no_delta_seconds_stays_invalid() -> None:
    assert parse_request_directives(f"max-age=-{HUGE}").max_age is None
    assert parse_response_directives(f"max-age={HUGE}x").max_age == 0  # §4.2.1: stale
    assert parse_age(f"{HUGE}.5") is None
