"""Review perfobj: the per-request objects of a quick miss (its ClientRequest, Outcome, the
Ctx's fields callable) and the Cache-Status member of a miss, made with less work. These
tests pin that each cheaper form gives what the one it stands in for gave."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser
from aiohttp.streams import EMPTY_PAYLOAD

from cacheproxy.http.cache_status import cache_status
from cacheproxy.observe.outcome import Outcome
from cacheproxy.proxy.client_request import ClientRequest, quick_request


def test_quick_request_is_the_class_call() -> None:
    """quick_request (a quick forward's ClientRequest made without the class call's
    __init__ frame) must set every slot as ClientRequest(msg, EMPTY_PAYLOAD, remote,
    "http", port) does: a slot added to __init__ and forgotten there would be unset (an
    AttributeError in the driver or the request log: a lost answer or line), and a value
    differing would change what goes upstream (X-Forwarded-For, the scheme) or is logged.
    Severity: low (a guard)."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 65536)
        msgs, *_ = parser.feed_data(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\n"
                                    b"Accept: */*\r\n\r\n")
    finally:
        loop.close()
    msg = msgs[0][0]
    made = quick_request(msg, "10.0.0.7", 8080)
    expected = ClientRequest(msg, EMPTY_PAYLOAD, "10.0.0.7", "http", 8080)
    for name in ClientRequest.__slots__:
        assert getattr(made, name) == getattr(expected, name), name
    assert made.state is not expected.state  # (each request its own state)
    assert made.path == "/a" and made.body_exists is False


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
