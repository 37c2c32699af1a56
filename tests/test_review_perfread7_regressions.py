"""Review perfread7: this afternoon's second round of performance merges (perfobj,
perfhit5, perfdecide and the lead's follow-ups), read for a memo's missing input and
state that outlives its request. The flow's remembered Pass (answered's _last_pass, now
compared part by part) is fuzzed here against the decision made in full; the other memos
(Outcome.cache_status' last member, Observer._last_hit, Driver.decided's Pass branch)
were read and found to compare every input (see the report), and are pinned here where
a test through the memo itself says more than the existing ones."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from support import raw_origin
from test_client_plane import Raw
from test_quick_hits import request
from test_review_perfflow2_regressions import _ok

from cacheproxy.http.fields import FieldList
from cacheproxy.http.flow import CacheSettings, Forward, Pass, answered, request_facts
from cacheproxy.http.flow import answer as answer_module
from cacheproxy.http.storability import StorePolicy
from cacheproxy.http.targeted import NO_TARGETING, Targeting

T0 = 1_704_067_200.0
KEY = "http://example.com/m"


def _facts(method: str, pairs: tuple[tuple[str, str], ...], body: bool = False) -> Any:
    return request_facts(method, CIMultiDictProxy(CIMultiDict(pairs)), has_body=body)


# Pools the fuzz draws from: a few objects each, some equal by value but not identical,
# so that both the identity and the value comparisons of the memo are taken.
_ROUTES = [
    CacheSettings(),
    CacheSettings(),  # equal to the first, another object (a reload's)
    CacheSettings(grant_varies=True),
    CacheSettings(policy=StorePolicy(shared=False)),
    CacheSettings(policy=StorePolicy(set_cookie="strip")),
    CacheSettings(targeting=NO_TARGETING),
    CacheSettings(targeting=Targeting(fields=("surrogate-control",))),
    CacheSettings(max_object_bytes=1),
    CacheSettings(rewritten=frozenset({"x-forwarded-for"})),
]
_FORWARDS = [
    Forward("uri-miss", "GET", may_store=True, collapse=True),
    Forward("uri-miss", "GET", may_store=True, collapse=True),  # equal, another object
    Forward("uri-miss", "GET", may_store=True),
    Forward("vary-miss", "GET", may_store=True, collapse=True),
    Forward("bypass", "GET"),
    Forward("request", "GET"),
    Forward("method", "POST"),
    Forward("uri-miss", "HEAD", may_store=True),
]
_REQUEST_FIELDS: list[tuple[tuple[str, str], ...]] = [
    (),
    (("Cache-Control", "no-store"),),
    (("Cache-Control", "no-cache"),),
    (("Cache-Control", "max-age=0"),),
    (("Pragma", "no-cache"),),
    (("Authorization", "Basic dTpw"),),
    (("Cookie", "a=1"),),
    (("Range", "bytes=0-1"),),
    (("If-Range", '"a"'),),
    (("Connection", "accept"), ("Accept", "text/html")),
    (("Accept", "text/html"),),
    (("Origin", "https://a.example"),),
    (("X-Forwarded-For", "10.0.0.1"),),
]
_REQUESTS = [_facts(m, f, b) for m in ("GET", "HEAD") for f in _REQUEST_FIELDS
             for b in (False, True)]
_REQUESTS += [_facts("GET", f) for f in _REQUEST_FIELDS]  # equal, other objects
_STATUSES = [200, 203, 204, 206, 301, 302, 304, 307, 404, 405, 410, 414, 500, 501, 502,
             503, 599, 299]
_ANSWER_FIELDS: list[tuple[str, list[str | None]]] = [
    ("Cache-Control", [None, None, "no-store", "private", "max-age=60", "s-maxage=60",
                       "public", "no-cache", "max-age=0", 'private="set-cookie"',
                       'no-cache="set-cookie"', "must-understand, no-store",
                       "must-understand, max-age=60", "public, max-age=60",
                       "s-maxage=60, private", "proxy-revalidate"]),
    ("Expires", [None, None, None, "Mon, 01 Jan 2024 01:00:00 GMT", "0"]),
    ("Set-Cookie", [None, None, None, "s=1"]),
    ("Vary", [None, None, None, "*", "Accept", "Origin", "X-Forwarded-For", "accept, *"]),
    ("Content-Type", [None, "text/plain", "text/event-stream"]),
    ("CDN-Cache-Control", [None, None, None, "no-store", "max-age=60"]),
    ("Surrogate-Control", [None, None, None, "no-store", "max-age=60",
                           "max-age=60;cacheproxy"]),
    ("Access-Control-Allow-Origin", [None, None, "*", "https://a.example"]),
    ("ETag", [None, '"a"']),
    ("Last-Modified", [None, "Mon, 01 Jan 2024 00:00:00 GMT"]),
    ("Content-Location", [None, None, "/m"]),
    ("Location", [None, None, "/other"]),
]


def _answer_fields(rng: random.Random) -> FieldList:
    pairs = [("Date", "Mon, 01 Jan 2024 00:00:00 GMT")]
    for name, values in _ANSWER_FIELDS:
        v = rng.choice(values)
        if v is not None:
            pairs.append((name, v))
    return FieldList(pairs)


def _cases(rng: random.Random, n: int) -> Iterator[tuple[Any, ...]]:
    """Streams where consecutive cases often differ in one input only, so that the memo
    is consulted for nearly-equal answers (the cases a missing input would get wrong)."""
    case: list[Any] = [_FORWARDS[0], 200, _answer_fields(rng), rng.randrange(0, 10),
                       _REQUESTS[0], _ROUTES[0]]
    for _ in range(n):
        which = rng.randrange(8)
        if which == 0:
            case[0] = rng.choice(_FORWARDS)
        elif which == 1:
            case[1] = rng.choice(_STATUSES)
        elif which == 2:
            case[2] = _answer_fields(rng)
        elif which == 3:
            case[3] = rng.choice((None, 2, 10_000_000))
        elif which == 4:
            case[4] = rng.choice(_REQUESTS)
        elif which == 5:
            case[5] = rng.choice(_ROUTES)
        elif which == 6:  # one of the answer's fields changed, the others kept
            name, values = rng.choice(_ANSWER_FIELDS)
            pairs = [p for p in case[2] if p[0] != name]
            v = rng.choice(values)
            case[2] = FieldList(pairs if v is None else [*pairs, (name, v)])
        # (which == 7: the same inputs again, the memo's own case)
        yield tuple(case)


def test_the_remembered_pass_is_the_decision_made_in_full(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review perfread7 of perfdecide (13023d0): answered()'s one-entry memo of its last
    Pass now compares its inputs one by one (the route and Forward by identity then value,
    the status, the request's facts by identity then [2:7] by value, Cache-Control,
    Content-Type only when the remembered verdict read it, the rare fields by one
    isdisjoint or by value). Fuzzed: 60,000 answers, each differing from the one before
    in one input (one of the answer's fields, or all of them: Cache-Control with
    s-maxage/private/no-cache with field names/must-understand, Expires, Set-Cookie, Vary,
    Content-Type, CDN-Cache-Control, Surrogate-Control, a CORS grant; the Forward; the
    status, heuristically cacheable or not; the length; the request's no-store,
    Authorization, Cookie, Range, a body, HEAD, Connection; the route and an equal route
    of another object, as after a reload) or in none, each decided with the memo as the
    stream left it and again with the memo emptied: the two must be equal. A difference
    would be a URL cached that must not be (RFC 9111 §3, §3.5, §5.2.2) or one the origin
    asks to cache passed on. Passes on main; fails when any one compared input is left
    out (the route, the Forward, the status, the request's directives, Authorization,
    credentials or bypass, Cache-Control, Content-Type, the rare fields' set or values:
    checked by mutation). (has_body is compared though no Pass reads it: lookup's Forward
    carries it.) Severity if broken: high."""
    decided = [0]
    in_full_of = answer_module._answered

    def counted(*args: Any, **kwargs: Any) -> Any:
        decided[0] += 1
        return in_full_of(*args, **kwargs)

    monkeypatch.setattr(answer_module, "_answered", counted)
    monkeypatch.setattr(answer_module, "_last_pass", None)
    rng = random.Random(7)
    passes = remembered = 0
    for fwd, status, fields, length, req, route in _cases(rng, 60_000):
        args = (fwd, status, fields, length, req, route, KEY, T0, T0)
        was = decided[0]
        with_memo = answered(*args)
        if type(with_memo) is Pass:
            passes += 1
            remembered += decided[0] == was  # (the memo's answer: nothing decided)
        answer_module._last_pass = None
        in_full = answered(*args)
        assert type(with_memo) is type(in_full), args
        if type(in_full) is Pass:
            assert with_memo == in_full, args
    # (the memo was taken often enough for the comparison to mean something)
    assert passes > 10_000 and remembered > 2_000, (passes, remembered)


async def test_a_pass_marks_its_url_and_the_next_stored_answer_unmarks_it(proxy: Any) -> None:
    """Review perfread7 of perfdecide (ea9c6a3): Driver.decided notes a Pass in its own
    branch first (its mark, then note_answered's detail) and unmarks on a stored
    answer. Through the real proxy: a
    private answer (RFC 9111 §5.2.2.7) is passed on with its detail in Cache-Status and
    marks the URL hit-for-pass; the next answer, storable, is stored and takes the mark
    away (its requests may collapse again, as Varnish's hit-for-pass object ends when an
    object is cached), and the request after it is a hit. A branch that skipped the
    detail would lose Cache-Status' reason; one that missed the mark in the look before
    unmark_pass would keep the URL out of collapsing for PASS_SECONDS after it became
    cacheable. Severity if broken: medium."""
    answers = iter([_ok("Cache-Control: private"), _ok("Cache-Control: max-age=60")])
    async with raw_origin(lambda head: next(answers)) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        marked = client.app_proxy.driver.collapser._pass
        conn = await Raw.open(client)
        await conn.send(request("/m", ()))
        first = await conn.reply()
        assert first.headers.get("x-cache") == "MISS"
        assert "detail=private" in first.headers["cache-status"]
        assert [k for k in marked if k.endswith("/m")], "the Pass marked nothing"
        await conn.send(request("/m", ()))
        second = await conn.reply()
        assert second.headers.get("x-cache") == "MISS"
        assert "stored" in second.headers["cache-status"]
        assert not [k for k in marked if k.endswith("/m")], "the stored answer left the mark"
        await conn.send(request("/m", ()))
        assert (await conn.reply()).headers.get("x-cache") == "HIT"
