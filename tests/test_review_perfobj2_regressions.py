"""Review perfobj2 (issue 10: revalidation >= 1.5x Squid's req/s on one core): a
revalidation's own steps between the request's parse and the pool (quick.hit and lookup's
revalidation branch, CacheProxy.planned, the Outcome, Ctx and ClientRequest made per
request, QuickForward, Driver.decided / validated_now, QuickForward._reply and
client_conn.send_stored).

What changed: lookup() hands out its whole decision again (preconditions and a Range's
bypass applied) for the same RequestFacts object, route, stored no-cache response (the
key holding it alone) and recently_passed, with nothing waited for nor a loop
(lookup._last_validating). These tests pin that a change of any one of those inputs gets
the decision made afresh: each compares the decision right after a remembered one with
the one made with nothing remembered. Severity, were they to fail: high (an old
validator sent, a client's precondition or Range or only-if-cached ignored, a request
collapsed that must not be)."""

from __future__ import annotations

import importlib
import time
from email.utils import formatdate
from typing import Any

import pytest
from multidict import CIMultiDict
from support import cache_status, raw_origin

from cacheproxy.http.fields import FieldList
from cacheproxy.http.flow import CacheSettings, Forward, request_facts
from cacheproxy.http.flow.lookup import Waited, lookup
from cacheproxy.http.stored import CachedResponse, Heuristics, make_stored_response

T0 = 1_704_067_200.0  # Mon, 01 Jan 2024 00:00:00 GMT
DATE0 = "Mon, 01 Jan 2024 00:00:00 GMT"
KEY = "http://example/r"
ROUTE = CacheSettings()
# (the module: the package exports its lookup function under the same name)
lookup_module = importlib.import_module("cacheproxy.http.flow.lookup")
ASKS = {"Cache-Control": "min-fresh=1"}  # (lookup decides: not a plain GET, quick.py)


def _stored(tag: str = '"v1"', body: bytes = b"body", cc: str = "no-cache") -> CachedResponse:
    pairs = [("Date", DATE0), ("Content-Type", "text/plain"), ("Cache-Control", cc),
             ("ETag", tag), ("Last-Modified", "Sun, 31 Dec 2023 00:00:00 GMT")]
    return make_stored_response(
        key=KEY, vary=(), vary_values=(), status=200, pairs=FieldList(pairs), body=body,
        request_time=T0, response_time=T0, shared=True, heuristics=Heuristics())


def _facts(*fields: tuple[str, str], method: str = "GET") -> Any:
    return request_facts(method, CIMultiDict([("Host", "example"), *fields]), has_body=False)


def _fresh(req: Any, variants: tuple[CachedResponse, ...], **kw: Any) -> Any:
    lookup_module._last_validating = None
    return lookup(req, variants, **kw)


def test_the_same_facts_again_get_the_remembered_decision() -> None:
    """The memo is used (so the tests below test it): the same facts object, route,
    stored response and recently_passed give the very decision made before, at any time
    (§5.2.2.4: a no-cache response is validated whatever its age)."""
    stored, req = _stored(), _facts()
    first = _fresh(req, (stored,), now=T0 + 1, route=ROUTE)
    assert isinstance(first, Forward) and first.stored is stored
    assert lookup(req, (stored,), now=T0 + 86_400, route=ROUTE) is first
    held = lookup_module._last_validating
    assert held is not None and held[5] is req and held[7] is first


@pytest.mark.parametrize("case", ["new-response", "route", "recently-passed", "waited",
                                  "passed-here", "sibling", "fresh-response"])
def test_the_same_facts_with_another_input_are_decided_afresh(case: str) -> None:
    """Between two requests with the same facts object, the stored response is replaced
    (a new ETag and Last-Modified: §4.3.1 validates with the new ones, or a fresh one is
    served, §4.2), a reload gives new route settings, the key is marked hit-for-pass (no
    collapse), the request waited behind another's answer, comes back through this cache
    (Via: no collapse), or the key comes to hold a sibling (§4.3.4). Each must get what a
    lookup with nothing remembered gets, not the remembered Forward."""
    stored, req = _stored(), _facts()
    first = _fresh(req, (stored,), now=T0 + 1, route=ROUTE)
    assert lookup(req, (stored,), now=T0 + 2, route=ROUTE) is first
    variants: tuple[CachedResponse, ...] = (stored,)
    kw: dict[str, Any] = {"now": T0 + 3, "route": ROUTE}
    if case == "new-response":
        variants = (_stored('"v2"', b"new body"),)
    elif case == "fresh-response":
        variants = (_stored('"v2"', cc="max-age=60"),)
    elif case == "route":
        kw["route"] = CacheSettings(collapse=False)
    elif case == "recently-passed":
        kw["recently_passed"] = True
    elif case == "waited":
        kw["waited"] = Waited(None)
    elif case == "passed-here":
        kw["passed_here"] = True
    else:
        variants = (stored, _stored('"v1"', b"other"))
    after = lookup(req, variants, **kw)
    fresh = _fresh(req, variants, **kw)
    assert after == fresh and after is not first, (after, fresh)


@pytest.mark.parametrize("fields", [
    (("If-None-Match", '"v1"'),),  # the client's own validators (§4.3.2)
    (("If-Modified-Since", DATE0),),
    (("If-Match", '"other"'),),  # a precondition (RFC 9110 §13.2.2): bypass
    (("Range", "bytes=0-1"),),  # RFC 9110 §14.2
    (("Cache-Control", "only-if-cached"),),  # §5.2.1.7
    (("Cache-Control", "no-store"),),  # §5.2.1.5
    (("Authorization", "Basic dTpw"),),  # §3.5
    (("Origin", "http://app.example"),),
    (),  # (a HEAD, below)
])
def test_other_facts_after_a_remembered_decision_are_decided_afresh(
        fields: tuple[tuple[str, str], ...]) -> None:
    """A request with other facts (its own validators, a precondition, a Range,
    only-if-cached, no-store, credentials, an Origin, a HEAD) right after a remembered
    decision for the plain GET gets the decision made for it with nothing remembered."""
    stored = _stored()
    _fresh(_facts(), (stored,), now=T0 + 1, route=ROUTE)
    req = _facts(*fields, method="GET" if fields else "HEAD")
    after = lookup(req, (stored,), now=T0 + 2, route=ROUTE)
    fresh = _fresh(req, (stored,), now=T0 + 2, route=ROUTE)
    assert after == fresh, (after, fresh)


def test_a_remembered_decision_holds_a_small_body_only() -> None:
    """The decision is kept beside the remembered Forward, which holds the stored
    response: only for bodies up to 64 KiB (as before this review), so an evicted large
    response is not kept alive by the memo."""
    big = _stored(body=b"x" * (lookup_module._VALIDATING_BODY_MAX + 1))
    req = _facts()
    first = _fresh(req, (big,), now=T0 + 1, route=ROUTE)
    assert isinstance(first, Forward)
    held = lookup_module._last_validating
    assert held is None or held[0] is not big
    assert lookup(req, (big,), now=T0 + 2, route=ROUTE) is not first


def _if_none_match(head: bytes) -> str | None:
    """The If-None-Match of a request head (the last one, if several)."""
    inm = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"if-none-match":
            inm = value.strip().decode()
    return inm


def _recording_origin(tags: dict[str, str], seen: list[str | None], date: str) -> Any:
    """One no-cache URL (validated on every use): a 304 for a conditional request naming
    its current tag (repeating the stored Date), else a 200 with that tag; the
    If-None-Match of every request it got, in seen."""
    def answer(head: bytes) -> bytes:
        tag, body = tags["tag"], tags["body"]
        inm = _if_none_match(head)
        seen.append(inm)
        if inm == tag:
            return (f"HTTP/1.1 304 Not Modified\r\nDate: {date}\r\nCache-Control: no-cache"
                    f"\r\nETag: {tag}\r\n\r\n").encode()
        return (f"HTTP/1.1 200 OK\r\nDate: {date}\r\nCache-Control: no-cache\r\n"
                f"ETag: {tag}\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()
    return answer


async def test_a_replaced_response_is_validated_with_its_own_tag(proxy: Any) -> None:
    """RFC 9111 §4.3.1 / §4.3.3: after a 200 replaces the stored response, the next
    revalidation of the same client's same request (the same lines on one keep-alive
    connection: the quick path's same facts) sends the new response's ETag, not the
    remembered decision's old one (the origin would answer a 200 each time, or worse, a
    304 for a representation the cache no longer holds)."""
    date = formatdate(time.time(), usegmt=True)
    tags = {"tag": '"v1"', "body": "body"}
    seen: list[str | None] = []
    async with raw_origin(_recording_origin(tags, seen, date)) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        assert await (await client.get("/r")).read() == b"body"
        for tag, body in (('"v1"', "body"), ('"v2"', "a longer body"), ('"v3"', "b")):
            tags["tag"], tags["body"] = tag, body
            assert await (await client.get("/r")).read() == body.encode()  # (200 or 304)
            del seen[:]
            for _ in range(3):
                resp = await client.get("/r")
                assert (resp.status, await resp.read()) == (200, body.encode())
                assert resp.headers["ETag"] == tag
                assert "fwd=stale; fwd-status=304" in cache_status(resp)
            assert seen == [tag] * 3


async def test_a_304_that_makes_the_response_fresh_ends_the_validations(proxy: Any) -> None:
    """RFC 9111 §4.3.4: a 304's Cache-Control replaces the stored one. When a validation's
    304 says max-age=60 where the stored response said no-cache, the next identical
    request (the same facts, the same route) is served from storage without going
    forward (§4.2), not sent to the origin with the remembered Forward. (The client asks
    with min-fresh=1, RFC 9111 §5.2.1.3, so that lookup decides, not quick.py's plain
    GET check.)"""
    date = formatdate(time.time(), usegmt=True)
    state = {"cc": "no-cache", "tag": '"v1"'}
    seen: list[str | None] = []

    def answer(head: bytes) -> bytes:
        inm = _if_none_match(head)
        seen.append(inm)
        if inm == state["tag"]:
            return (f"HTTP/1.1 304 Not Modified\r\nDate: {date}\r\nCache-Control: "
                    f"{state['cc']}\r\nETag: {state['tag']}\r\n\r\n").encode()
        return (f"HTTP/1.1 200 OK\r\nDate: {date}\r\nCache-Control: no-cache\r\n"
                f"ETag: {state['tag']}\r\nContent-Length: 4\r\n\r\nbody").encode()

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        assert await (await client.get("/r", headers=ASKS)).read() == b"body"  # stored, no-cache
        for _ in range(2):
            resp = await client.get("/r", headers=ASKS)
            assert "fwd=stale; fwd-status=304" in cache_status(resp)
        assert seen == [None, '"v1"', '"v1"']
        state["cc"] = "max-age=60"
        resp = await client.get("/r", headers=ASKS)  # its 304 refreshes the directives
        assert "fwd-status=304" in cache_status(resp)
        for _ in range(2):
            resp = await client.get("/r", headers=ASKS)
            assert (resp.status, await resp.read()) == (200, b"body")
            assert resp.headers["X-Cache"] == "HIT" and "fwd=" not in cache_status(resp)
        assert len(seen) == 4
