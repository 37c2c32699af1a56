"""RFC 9110 §7.6.2 Max-Forwards: on OPTIONS and TRACE, 0 makes this hop the final recipient;
another value is decremented before the request goes on. The field sets no ceiling: a value
past 2^31 is taken as 2^31, as RFC 9111 §1.2.2 takes a delta-seconds.

Issue 9, defect 9: a value past 4,300 digits (Python's int() refuses it) raised ValueError.
"""

from __future__ import annotations

import pytest

from cacheproxy.http.target import MAX_FORWARDS, forwards_left


@pytest.mark.parametrize(("value", "left"), [
    ("0", 0), ("3", 3), (" 3 ", 3), ("007", 7), ("2147483647", 2147483647),
])
def test_s7_6_2_max_forwards_is_read_on_options_and_trace(value: str, left: int) -> None:
    assert forwards_left("OPTIONS", value) == left
    assert forwards_left("TRACE", value) == left


def test_defect9_huge_max_forwards_is_2_31() -> None:
    assert forwards_left("OPTIONS", "9" * 5000) == MAX_FORWARDS
    assert forwards_left("TRACE", "9" * 5000) == MAX_FORWARDS


@pytest.mark.parametrize("value", ["2147483648", "2147483649", "99999999999"])
def test_values_from_2_31_on_are_2_31(value: str) -> None:
    assert MAX_FORWARDS == 2**31
    assert forwards_left("OPTIONS", value) == MAX_FORWARDS


def test_defect9_huge_run_of_leading_zeros_is_the_small_number() -> None:
    assert forwards_left("TRACE", "0" * 5000 + "2") == 2


@pytest.mark.parametrize("value", ["", "-1", "1.5", "٣", "0x10", "9" * 5000 + "a"])
def test_s7_6_2_an_invalid_max_forwards_does_not_apply(value: str) -> None:
    assert forwards_left("OPTIONS", value) is None


def test_s7_6_2_other_methods_ignore_max_forwards() -> None:
    assert forwards_left("GET", "0") is None
    assert forwards_left("GET", "9" * 5000) is None
