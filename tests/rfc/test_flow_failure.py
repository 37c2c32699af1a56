"""Request flow, step 2b: the upstream failed (RFC 5861 §4; RFC 9111 §4.2.4, §5.2.2.2).
Every transition: Refuse with the upstream's status, ServeStale, Refuse(504) when stale
is forbidden."""

from __future__ import annotations

import pytest
from flow_support import ROUTE, T0, facts

from cacheproxy.http.flow import CacheSettings, Forward, Refuse, ServeStale, failed
from cacheproxy.http.storability import StorePolicy

MISS = Forward("uri-miss", "GET", may_store=True)


def fail(fwd: Forward, status: int = 502, *, cc: str | None = None, at: float = T0,
         route: CacheSettings = ROUTE):
    req = facts("GET", {"Cache-Control": cc} if cc else {})
    return failed(fwd, status=status, message="upstream unreachable", req=req, route=route,
                  now=at)


@pytest.mark.parametrize("status", [502, 504])
def test_a_miss_gets_the_upstreams_error(status: int) -> None:
    assert fail(MISS, status) == Refuse(status, "upstream unreachable")


def test_rfc5861_s4_stale_if_error_serves_the_stored_response(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60, stale-if-error=300"})
    d = fail(Forward("stale", "GET", stored=entry), at=T0 + 120)
    assert d == ServeStale(entry, 120.0, -60.0, refresh=False, detail="stale-if-error")


def test_rfc5861_s4_the_request_may_ask_for_stale_if_error(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60"})
    d = fail(Forward("stale", "GET", stored=entry), cc="stale-if-error=300", at=T0 + 120)
    assert isinstance(d, ServeStale)


def test_past_every_window_the_error_is_the_answer(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60, stale-if-error=30"})
    assert fail(Forward("stale", "GET", stored=entry), at=T0 + 120) == \
        Refuse(502, "upstream unreachable")


def test_a_fresh_response_a_client_wanted_validated_answers_when_the_origin_is_down(
        stored) -> None:
    entry = stored({"Cache-Control": "max-age=60"})
    d = fail(Forward("request", "GET", stored=entry), cc="max-age=0", at=T0 + 10)
    assert isinstance(d, ServeStale) and d.ttl == 50


@pytest.mark.parametrize(("cc", "by"), [
    ("max-age=60, must-revalidate, stale-if-error=300", "must-revalidate"),
    ("s-maxage=60, stale-if-error=300", "s-maxage"),
    ("max-age=60, proxy-revalidate, stale-if-error=300", "proxy-revalidate")])
def test_s5_2_2_2_stale_forbidden_is_504_never_the_stale_copy(stored, cc: str, by: str
                                                              ) -> None:
    """§5.2.2.2, §5.2.2.8, §5.2.2.10: the 504 names the directive (RFC 9211 §2.8 detail)."""
    entry = stored({"Cache-Control": cc})
    assert fail(Forward("stale", "GET", stored=entry), at=T0 + 120) == \
        Refuse(504, f"upstream unavailable ({by})", by)


def test_s5_2_2_8_proxy_revalidate_binds_shared_caches_only(stored) -> None:
    entry = stored({"Cache-Control": "max-age=60, proxy-revalidate, stale-if-error=300"},
                   shared=False)
    private = CacheSettings(policy=StorePolicy(shared=False))
    assert isinstance(fail(Forward("stale", "GET", stored=entry), at=T0 + 120,
                           route=private), ServeStale)


def test_s5_2_2_4_no_cache_is_never_served_without_validation(stored) -> None:
    entry = stored({"Cache-Control": "no-cache, stale-if-error=300"})
    assert isinstance(fail(Forward("stale", "GET", stored=entry), at=T0 + 1), Refuse)


@pytest.mark.parametrize(("cc", "status"), [
    ("max-age=2, must-revalidate", 504),   # stale-close-must-revalidate (§5.2.2.2)
    ("max-age=2, proxy-revalidate", 504),  # stale-close-proxy-revalidate (§5.2.2.8)
    ("max-age=2, s-maxage=2", 504),        # stale-close-s-maxage=2 (§5.2.2.10)
    ("max-age=2, no-cache", 502),          # stale-close-no-cache (§5.2.2.4)
    ("max-age=2", 502),                    # stale-close: no stale-if-error, no stale
])
def test_s4_2_4_the_origin_closing_is_an_error_without_stale_if_error__stale_close(
        stored, cc: str, status: int) -> None:
    """The suite's server drops the connection. Where stale is forbidden the error is an
    RFC MUST ("if a cache is disconnected, the cache MUST generate an error response",
    §5.2.2.2); the suite's stale-close-* then expect the origin's request counter in that
    error, which no response made by a cache has. Without stale-if-error the stale copy is
    not served either (§4.2.4 permits it when disconnected; this proxy serves stale only
    where RFC 5861 allows, DESIGN.md)."""
    entry = stored({"Cache-Control": cc})
    d = fail(Forward("stale", "GET", stored=entry), at=T0 + 3)
    assert isinstance(d, Refuse) and d.status == status
