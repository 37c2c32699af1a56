"""Review perfobj: the per-request objects of a quick miss (its ClientRequest, Outcome, the
Ctx's fields callable) and the Cache-Status member of a miss, made with less work. These
tests pin that each cheaper form gives what the one it stands in for gave (a ClientRequest
made without its __init__, and an Outcome without routed_outcome, were taken back: a second
copy of the constructor's stores, for a few hundred instructions)."""

from __future__ import annotations

import pytest

from cacheproxy.http.cache_status import cache_status
from cacheproxy.observe.outcome import Outcome


def _outcome(**fields: object) -> Outcome:
    return Outcome(**{"fwd": "uri-miss", "fwd_status": 200, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize("detail", ["no-store", "private", None])
def test_a_misss_member_is_its_own_after_the_last_one_asked(detail: str | None) -> None:
    """Outcome.cache_status hands out the last miss's member again when the cache name (by
    identity) and the eight inputs equal the last ones. Misses that differ in one input,
    or in the name, must each get their own member (RFC 9211 §2: fwd, fwd-status,
    detail, stored, collapsed): a member taken from the request before would tell the
    client, the request log and /stats a wrong reason (`detail=private` for a no-store
    answer, another cache's name after a reload renamed it). Severity: medium."""
    a, b = "cacheproxy", "edge-cache"
    asked = [(a, _outcome(detail=detail)), (a, _outcome(detail="other")),
             (a, _outcome(detail=detail)), (b, _outcome(detail=detail)),
             (a, _outcome(detail=detail, fwd_status=304)),
             (a, _outcome(detail=detail, stored=True)),
             (a, _outcome(detail=detail, collapsed=True)),
             (a, _outcome(detail=detail, collapsed=True, went_on=True)),
             (a, _outcome(detail=detail, fwd="bypass")),
             (a, _outcome(detail=detail)), (a, _outcome(detail=detail))]
    for name, o in asked:
        expected = cache_status(name, hit=o.hit, fwd=o.fwd, fwd_status=o.fwd_status,
                                stored=o.stored, ttl=o.ttl,
                                collapsed=(not o.went_on) if o.collapsed else None,
                                detail=o.detail)
        assert o.cache_status(name) == expected
        assert o.final_cache_status() == expected  # (what the log line shows)
