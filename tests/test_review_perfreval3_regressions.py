"""Review perfreval3 (issue 10: revalidation >= 1.5x Squid's req/s on one core): what a
revalidation costs beyond a pass-through. It looked at the flow's step for a 304
(http/flow/answer.py _validated: selects, with_date, date_only, governing, the storability
verdict, the Update), the refreshed entry (http/stored.py refreshed, _aged, _filled), the
memory store's put of it (store/memory.py put_now) and the lookup's revalidation branch.

What changed: the 304's step remembers what the last 304's fields made of the stored
response it selected (answer._merged_304: the 304's fields indexed and dated, the merged
fields, the rules followed, the Vary), for the very stored field tuples, route settings and
304 fields, and takes it again for the next such 304 instead of working it out; and the
verdict on storing the merged response with the fields left out of it (answer._judged),
for the same merge, request directives, Authorization and route. These tests pin what
those memos must never do: answer a 304 whose fields differ, or one for another stored
response, another route's settings or another request's directives or Authorization,
with what an earlier 304 made.
None of them failed before the change: no behaviour was meant to change. Severity, were
they to fail: a client of the URL gets fields or a freshness the origin no longer sends
(high)."""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from support import cache_status, raw_origin

from cacheproxy.http.flow import CacheSettings, Forward, Keep, Update, answered, request_facts
from cacheproxy.http.stored import Heuristics, make_stored_response
from cacheproxy.http.targeted import NO_TARGETING

T0 = 1_704_067_200.0
DATE0 = "Mon, 01 Jan 2024 00:00:00 GMT"


async def test_a_304_that_changes_a_field_is_not_answered_as_the_last_one(proxy: Any) -> None:
    """RFC 9111 §4.3.4 (§3.2): a 304's fields replace the stored ones. The origin sends the
    same 304 (the stored Date, ETag and Cache-Control: no-cache) three times, as a URL
    revalidated several times a second gets it, then one adding X-Version: 2, then one
    with Cache-Control: max-age=60. Each answer carries what its own 304 said (X-Version
    from the fourth on), and after the last the response is fresh: the next request is a
    hit, not a revalidation. Were the 304's step to take the remembered merge for a 304
    whose fields differ, the client would keep the old fields and the URL would be
    revalidated for ever (Squid and nginx merge each 304's fields as they come)."""
    date = formatdate(time.time(), usegmt=True)  # (one Date for all: the memo's case)
    sent: list[int] = []

    def answer(head: bytes) -> bytes:
        if b"if-none-match" not in head.lower():
            return (f"HTTP/1.1 200 OK\r\nDate: {date}\r\nCache-Control: no-cache\r\n"
                    f'ETag: "v1"\r\nContent-Length: 4\r\n\r\nbody').encode()
        sent.append(1)
        extra = "X-Version: 2\r\n" if len(sent) >= 4 else ""
        cc = "max-age=60" if len(sent) >= 6 else "no-cache"
        return (f"HTTP/1.1 304 Not Modified\r\nDate: {date}\r\nCache-Control: {cc}\r\n"
                f'ETag: "v1"\r\n{extra}\r\n').encode()

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        resp = await client.get("/r")
        assert resp.status == 200 and await resp.read() == b"body"
        for n in range(1, 7):
            resp = await client.get("/r")
            assert resp.status == 200 and await resp.read() == b"body"
            assert "fwd-status=304" in cache_status(resp), (n, cache_status(resp))
            assert resp.headers.getall("X-Version", []) == (["2"] if n >= 4 else []), n
            assert resp.headers.getall("Cache-Control") == [
                "max-age=60" if n >= 6 else "no-cache"], n
        resp = await client.get("/r")
        assert await resp.read() == b"body"
        assert cache_status(resp).startswith("cacheproxy; hit;"), cache_status(resp)
        assert resp.headers.getall("X-Version") == ["2"]
        assert len(sent) == 6


async def test_the_same_304_for_two_stored_responses_merges_into_each(proxy: Any) -> None:
    """RFC 9111 §4.3.4: a 304 freshens the stored response it selects, whose own fields
    stay. Two URLs store responses with the same ETag and Date but their own X-Which and
    body, /b's with Vary: Accept too, and get the very same 304 in turn: each answer has
    its own URL's X-Which, Vary and body. Were the remembered merge (keyed on the stored
    response's field tuples) taken for another stored response, /b's would be stored
    again with /a's fields, and its clients get them."""
    date = formatdate(time.time(), usegmt=True)

    def answer(head: bytes) -> bytes:
        which = head.split(b" ")[1].decode()[1]
        if b"if-none-match" in head.lower():
            return (f"HTTP/1.1 304 Not Modified\r\nDate: {date}\r\n"
                    f'Cache-Control: no-cache\r\nETag: "same"\r\n\r\n').encode()
        vary = "Vary: Accept\r\n" if which == "b" else ""
        return (f"HTTP/1.1 200 OK\r\nDate: {date}\r\nCache-Control: no-cache\r\n"
                f'ETag: "same"\r\nX-Which: {which}\r\n{vary}Content-Length: 6\r\n\r\n'
                f"body-{which}").encode()

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        for path in ["/a", "/b", "/a", "/a", "/b", "/b", "/a", "/b"]:
            resp = await client.get(path)
            assert await resp.read() == f"body-{path[1]}".encode()
            assert resp.headers.getall("X-Which") == [path[1]], path
            assert resp.headers.getall("Vary", []) == (["Accept"] if path == "/b" else [])


def test_the_same_304_under_other_targeting_follows_that_routes_field() -> None:
    """RFC 9213 §2.2: a cache that follows CDN-Cache-Control sets Cache-Control aside when
    the response has a valid one; one that does not (a route with no target list) reads
    Cache-Control. The same stored response and the same 304 (its Date repeated), answered
    under one route and then the other, and again: each answer is fresh or not by its own
    route's field (max-age=60 targeted, no-cache otherwise). Were the remembered merge's
    rules taken across routes, one route would serve from storage what the other must
    revalidate."""
    stored = make_stored_response(
        key="http://o/t", vary=(), vary_values=(), status=200,
        pairs=[("Date", DATE0), ("Cache-Control", "no-cache"),
               ("CDN-Cache-Control", "max-age=60"), ("ETag", '"t"')],
        body=b"t", request_time=T0, response_time=T0, shared=True,
        heuristics=Heuristics())
    req = request_facts("GET", CIMultiDictProxy(CIMultiDict()), has_body=False)
    fwd = Forward("stale", "GET", stored=stored, conditional=(("If-None-Match", '"t"'),),
                  may_store=True, collapse=True)
    targeted, plain = CacheSettings(), CacheSettings(targeting=NO_TARGETING)
    for route, lifetime in [(targeted, 60.0), (plain, 0.0), (plain, 0.0), (targeted, 60.0),
                            (targeted, 60.0), (plain, 0.0)]:
        d = answered(fwd, status=304, fields=[("Date", DATE0), ("ETag", '"t"')],
                     length=None, req=req, route=route, key=stored.key,
                     request_time=T0 + 1, response_time=T0 + 1)
        assert type(d) is Update
        assert d.view.lifetime == lifetime and d.entry.lifetime == lifetime


def test_the_same_304_for_another_requests_authorization_or_no_store_is_judged_again(
        ) -> None:
    """RFC 9111 §3.5 and §5.2.1.5: the response a 304 freshens is stored again only as §3
    allows for this request: not for one with Authorization (the stored response has no
    public, s-maxage or must-revalidate), nor for one with Cache-Control: no-store; the
    client still gets the freshened response (Keep with serve). The same stored response
    and 304 (its Date repeated), for requests with and without them in turn: each decision
    is its own request's. Were the remembered verdict (answer._judged) taken for another
    request, an Authorization request's answer would be stored for everyone's reuse, or
    a no-store request's stored (high: §3.5 exists so that one user's answer is not
    another's)."""
    stored = make_stored_response(
        key="http://o/j", vary=(), vary_values=(), status=200,
        pairs=[("Date", DATE0), ("Cache-Control", "no-cache"), ("ETag", '"j"')],
        body=b"j", request_time=T0, response_time=T0, shared=True, heuristics=Heuristics())
    fwd = Forward("stale", "GET", stored=stored, conditional=(("If-None-Match", '"j"'),),
                  may_store=True, collapse=True)
    plain = request_facts("GET", CIMultiDictProxy(CIMultiDict()), has_body=False)
    authorized = request_facts("GET", CIMultiDictProxy(CIMultiDict(
        [("Authorization", "Basic eDp5")])), has_body=False)
    no_store = request_facts("GET", CIMultiDictProxy(CIMultiDict(
        [("Cache-Control", "no-store")])), has_body=False)
    route = CacheSettings()
    for req, reason in [(plain, None), (authorized, "authorization"), (plain, None),
                        (plain, None), (no_store, "no-store"), (plain, None)]:
        d = answered(fwd, status=304, fields=[("Date", DATE0), ("ETag", '"j"')],
                     length=None, req=req, route=route, key=stored.key,
                     request_time=T0 + 1, response_time=T0 + 1)
        if reason is None:
            assert type(d) is Update
        else:
            assert type(d) is Keep and d.reason == reason and d.serve is not None, d
