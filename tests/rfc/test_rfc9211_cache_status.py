"""RFC 9211 The Cache-Status HTTP response header field: §2 (the list member and
its parameters), §2.1 hit, §2.2 fwd, §2.3 fwd-status, §2.4 stored, §2.5 ttl,
§2.6 collapsed, §2.8 detail."""

from __future__ import annotations

import math
import re

import pytest

from cacheproxy.http.cache_status import cache_status
from cacheproxy.http.reuse import Action

T0 = 1_704_067_200.0

# RFC 8941 §3.1.2 parameters after an sf-token item, as RFC 9211 §2 uses them.
_KEY = r"[a-z*][a-z0-9_.*-]*"
_BARE = r"(?:-?\d{1,15}|[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*|\"[^\"\\]*\")"
MEMBER = re.compile(
    rf"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*(?:; ?{_KEY}(?:={_BARE})?)*"
)


def params(member: str) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for part in member.split(";")[1:]:
        key, eq, value = part.strip().partition("=")
        out[key] = value if eq else True
    return out


def test_s2_1_hit() -> None:
    value = cache_status("cacheproxy", hit=True, ttl=42)
    assert value == "cacheproxy; hit; ttl=42"
    assert MEMBER.fullmatch(value)


def test_s2_2_s2_3_s2_4_miss_forwarded_and_stored() -> None:
    value = cache_status("cacheproxy", fwd="uri-miss", fwd_status=200, stored=True, ttl=60)
    assert value == "cacheproxy; fwd=uri-miss; fwd-status=200; stored; ttl=60"
    assert MEMBER.fullmatch(value)


@pytest.mark.parametrize("fwd", ["bypass", "method", "uri-miss", "vary-miss", "miss",
                                 "request", "stale", "partial"])
def test_s2_2_fwd_reasons_are_tokens(fwd: str) -> None:
    value = cache_status("cacheproxy", fwd=fwd)
    assert MEMBER.fullmatch(value)
    assert params(value) == {"fwd": fwd}


@pytest.mark.parametrize(("ttl", "shown"), [
    (59.9, 59), (60.0, 60), (0.4, 0), (0.0, 0), (-0.1, -1), (-0.5, -1), (-30.0, -30),
    (-30.2, -31), (2.0**31, 2**31),
])
def test_s2_5_ttl_is_an_integer_floor_and_may_be_negative(ttl: float, shown: int) -> None:
    """§2.5: "ttl" is the remaining freshness in whole seconds, negative when stale;
    flooring never shows a stale response as fresh (ttl=0 is not fresh, §4.2)."""
    value = cache_status("c", hit=True, ttl=ttl)
    assert params(value)["ttl"] == str(shown)
    assert MEMBER.fullmatch(value)


@pytest.mark.parametrize("ttl", [math.inf, -math.inf, math.nan, None])
def test_s2_5_no_ttl_when_not_a_number(ttl: float | None) -> None:
    assert cache_status("c", hit=True, ttl=ttl) == "c; hit"


def test_s2_6_collapsed_and_s2_8_detail() -> None:
    value = cache_status("c", fwd="uri-miss", fwd_status=200, collapsed=True,
                         detail="set-cookie")
    assert value == "c; fwd=uri-miss; fwd-status=200; collapsed; detail=set-cookie"
    assert MEMBER.fullmatch(value)


def test_s2_no_parameters_is_just_the_cache_name() -> None:
    assert cache_status("cacheproxy") == "cacheproxy"


def test_s2_5_ttl_of_a_stale_served_response(stored, reuse) -> None:
    """§2.5 with RFC 5861: a stale response served while revalidating shows ttl < 0."""
    entry = stored({"Cache-Control": "max-age=60, stale-while-revalidate=30"})
    r = reuse(entry, T0 + 75.5)
    assert r.action is Action.SERVE_STALE_REVALIDATE
    assert cache_status("c", hit=True, ttl=r.ttl) == "c; hit; ttl=-16"


def test_s2_2_revalidation_forward_reason_from_reuse(stored, reuse) -> None:
    """§2.2: fwd=stale when the stored response was stale, fwd=request when the
    request (no-cache, max-age=0) forced the forward."""
    entry = stored({"Cache-Control": "max-age=60"})
    stale = reuse(entry, T0 + 61)
    forced = reuse(entry, T0 + 1, "max-age=0")
    assert cache_status("c", fwd=stale.forward, fwd_status=304, ttl=stale.ttl) == \
        "c; fwd=stale; fwd-status=304; ttl=-1"
    assert cache_status("c", fwd=forced.forward, fwd_status=304) == \
        "c; fwd=request; fwd-status=304"
