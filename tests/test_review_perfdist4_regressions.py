"""Review perfdist4: the quick path's decision for a request head not seen last (an
X-Request-Id per request, as behind a load balancer), and the parse before it.

What the review looked at: server_protocol's _FallbackParser for a head not in HeadMemo
(llhttp's parse and its message: measured, kept; httptools measured and declined, see the
report), client_request, quick.py's hit (its memo of the last lines, the word on the
lines, the route), request_facts and lookup for facts of their own.

What changed, and what these tests pin:
- quick.QuickHits keeps the last lines by identity (llhttp's message for the same head
  bytes is the same object, HeadMemo) instead of comparing them field by field, which
  every new head paid in full; a head equal but parsed anew is decided again.
- The word on a request's lines (plain: none of DECISIVE_FIELDS nor Origin) is read only
  for a GET plain_serve would answer (_plain_word), not for every new head; the Expect /
  Via-loop test stays first.
- lookup() remembers a decision for new facts inline (no call, no slice).
Each is a cheaper input to, or a cheaper keeping of, the same decision: the tests compare
the new steps with the old ones (the old kept here as the oracle) and the quick path's
answers with the full path's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import hdrs
from aiohttp.http_parser import HttpRequestParser
from multidict import CIMultiDictProxy
from test_client_plane import Raw
from test_quick_hits import exchange, origin_app, request

from cacheproxy.http.fields import loops_back
from cacheproxy.proxy import quick
from cacheproxy.proxy.quick import Plain, QuickHits

# The old step, kept as the oracle: what _lines said of a request's fields before.
_OLD_FULL, _OLD_OTHER, _OLD_PLAIN = 0, 1, 2


def _old_lines(h: CIMultiDictProxy[str], cache_name: str) -> int:
    if hdrs.EXPECT in h:
        return _OLD_FULL
    if hdrs.VIA in h and loops_back(h.getall(hdrs.VIA), cache_name):
        return _OLD_FULL
    return _OLD_PLAIN if quick._plain(h) and hdrs.ORIGIN not in h else _OLD_OTHER


LOOP = tuple("Via: 1.1 cacheproxy" for _ in range(8))
FIELD_LISTS: tuple[tuple[str, ...], ...] = (
    (),
    ("X-Request-Id: 1",),
    ("Connection: keep-alive, X-Trace", "X-Trace: 1", "Keep-Alive: timeout=5"),
    ("Connection: Cache-Control", "Cache-Control: no-cache"),
    ("TE: trailers", "Upgrade-Insecure-Requests: 1", "Proxy-Connection: keep-alive"),
    ("cache-control: max-age=0",),
    ("CACHE-CONTROL: max-stale=10", "Cache-Control: min-fresh=1"),
    ("Pragma: no-cache",),
    ("Authorization: Basic dTpw",),
    ("Cookie: a=1", "Cookie: b=2"),
    ("Range: bytes=0-3",),
    ('If-Range: "v1"',),
    ('If-None-Match: "v1"', 'If-None-Match: "v2"'),
    ("If-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT",),
    ('If-Match: "v9"',),
    ("If-Unmodified-Since: Tue, 14 Nov 2023 22:13:20 GMT",),
    ("Origin: http://elsewhere.example",),
    ("origin: null", "X-Request-Id: 2"),
    ("Expect: 100-continue",),
    ("expect: nonsense",),
    ("Via: 1.1 other", "Via: 1.0 cacheproxy"),
    LOOP,
    (*LOOP[:7], "Via: 1.1 elsewhere"),
    ("Referer: http://example/page?token=secret",),
    ("X-Long: " + "v" * 6000,),
    ("X-Request-Id: " + "7" * 4000, "Accept-Encoding: gzip"),
    ("Max-Forwards: 0", "Accept-Language: de", "Accept-Language: fr"),
    ("X-Forwarded-For: 10.0.0.1", "X-Forwarded-Proto: https", "Forwarded: for=1.2.3.4"),
)


def _parsed(fields: tuple[str, ...], method: str = "GET") -> Any:
    """llhttp's message for a head with these fields, as the proxy's parser gives it."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(object(), loop, 2**16, max_line_size=8190,
                                   max_field_size=8190, max_headers=128)
        return parser.feed_data(request("/fresh", fields, method))[0][0][0]
    finally:
        loop.close()


@pytest.mark.parametrize("fields", FIELD_LISTS)
def test_the_plain_word_is_the_old_lines_word(fields: tuple[str, ...]) -> None:
    """The word on the lines, now read only for a plain GET's candidate (_plain_word),
    says what _lines said for every head the full path does not take (RFC 9111 §4: the
    fields lookup reads; an Origin's CORS grant; RFC 5842 §7.2's loop). Severity: none
    (a cost); a wrong word would replay a stored response lookup refuses."""
    h = _parsed(fields).headers
    old = _old_lines(h, "cacheproxy")
    if old != _OLD_FULL:
        assert quick._plain_word(h) == (quick._PLAIN if old == _OLD_PLAIN else quick._OTHER)


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """(message, what QuickHits.hit made of it) for every request asked; a head that the
    old _lines sent to the full path must get None."""
    real = QuickHits.hit
    seen: list[tuple[Any, Any]] = []

    def hit(self: QuickHits, msg: Any, started: float) -> Any:
        found = real(self, msg, started)
        seen.append((msg, found))
        return found

    monkeypatch.setattr(QuickHits, "hit", hit)
    return seen


async def test_every_field_list_is_decided_as_the_old_lines_said(
        proxy: Any, origin: Any, spied: list[tuple[Any, Any]]) -> None:
    """Each head of FIELD_LISTS, against a fresh stored response and a no-cache one, sent
    three times: alone, again (llhttp's same message, on another connection: the lines
    kept by identity, their word read before or not at all), and pipelined behind another
    request (an equal head parsed anew: decided again). The three answers are the same,
    and hit() answers where the old _lines allowed it: never for an Expect or a Via loop
    (the full path's answer, RFC 5842 §7.2's 508), a Plain replay for a plain GET of a
    fresh response and for nothing else. Severity: none (a cost); a wrong memo would
    give one request another's decision."""
    client = await proxy(await origin(origin_app()))
    for path in ("/fresh", "/nocache"):
        await exchange(client, request(path, ()))  # stored first
    for path in ("/fresh", "/nocache"):
        for fields in FIELD_LISTS:
            for method in ("GET", "HEAD"):
                head = request(path, fields, method)
                mine = _parsed(fields, method).raw_headers
                old = _old_lines(_parsed(fields, method).headers, "cacheproxy")
                spied.clear()
                answers = []
                for data in (head, head, request(path, ("X-Other: 1",)) + head):
                    conn = await Raw.open(client)  # (an Expect's 417 closes it)
                    await conn.send(data)
                    if data != head:
                        await conn.reply()  # (the pipelined one before it)
                    reply = await conn.reply(head=method == "HEAD")
                    answers.append((reply.status, reply.body, reply.headers.get("x-cache")))
                    conn.close()
                assert answers[0] == answers[1] == answers[2], (path, fields, method)
                found = [f for msg, f in spied if msg.raw_headers == mine]
                # (a pipelined head behind a forward in flight goes the full path's way)
                assert len(found) >= 2, (path, fields, method)
                plain = old == _OLD_PLAIN and method == "GET" and path == "/fresh"
                for one in found:
                    assert isinstance(one, Plain) == plain, (path, fields, method, one)
                    if old == _OLD_FULL:
                        assert one is None, (path, fields, method)


async def test_the_kept_lines_hold_one_head(proxy: Any, origin: Any) -> None:
    """QuickHits keeps one request's lines and what it made of them: the last head's, by
    identity, one entry whatever the heads (a 6 KB field kept once, never a table of
    them). Severity: none."""
    client = await proxy(await origin(origin_app()))
    await exchange(client, request("/fresh", ()))
    for i in range(20):
        await exchange(client, request("/nocache", (f"X-Request-Id: {i}", "X-Long: " + "v" * 6000)))
    kept = [obj for obj in _quick_hits(client)]
    assert len(kept) == 1
    last = kept[0]._last
    assert len(last) == 9
    assert last[0] == _parsed((f"X-Request-Id: {19}", "X-Long: " + "v" * 6000)).raw_headers


def _quick_hits(client: Any) -> list[QuickHits]:
    import gc

    return [obj for obj in gc.get_objects()
            if isinstance(obj, QuickHits) and obj.proxy is client.app_proxy]


@pytest.mark.parametrize("fields", [(), (("If-Match", '"v1"'),), (("Range", "bytes=0-1"),),
                                    (("Cache-Control", "max-age=0"),), (("Cookie", "a=1"),)])
@pytest.mark.parametrize("recently_passed", [False, True])
def test_lookup_remembers_new_facts_as_it_did(fields: tuple[tuple[str, str], ...],
                                              recently_passed: bool) -> None:
    """lookup() keeps, for facts of their own on a no-cache response's validation, what
    _remember_looked_up kept (now inline, without slicing): the remembered Forward's five
    parts, then the facts, recently_passed and the whole decision (§13.2.2
    preconditions, §14.2's bypass applied); the same facts again get that very decision,
    and other facts a decision equal to a lookup with nothing remembered. Severity: none
    (a cost); a wrong entry would give one request another's decision."""
    import importlib

    from multidict import CIMultiDict

    from cacheproxy.http.fields import FieldList
    from cacheproxy.http.flow import CacheSettings, request_facts
    from cacheproxy.http.flow.lookup import lookup
    from cacheproxy.http.stored import Heuristics, make_stored_response

    module = importlib.import_module("cacheproxy.http.flow.lookup")
    t0, route = 1_704_067_200.0, CacheSettings()
    pairs = [("Date", "Mon, 01 Jan 2024 00:00:00 GMT"), ("Cache-Control", "no-cache"),
             ("ETag", '"v1"')]
    stored = make_stored_response(
        key="http://example/r", vary=(), vary_values=(), status=200,
        pairs=FieldList(pairs), body=b"body", request_time=t0, response_time=t0,
        shared=True, heuristics=Heuristics())

    def facts() -> Any:
        return request_facts("GET", CIMultiDict([("Host", "example"), *fields]),
                             has_body=False)

    module._last_validating = None
    lookup(facts(), (stored,), now=t0 + 1, route=route)  # a Forward remembered
    req = facts()
    d = lookup(req, (stored,), now=t0 + 2, route=route, recently_passed=recently_passed)
    after = module._last_validating
    assert after is not None and len(after) == 8
    # (the old step's tuple: the remembered Forward's five parts, then these three)
    assert after[5] is req and after[6] is recently_passed and after[7] is d
    assert after[1] is req.directives and after[2] is route and after[0] is stored
    assert lookup(req, (stored,), now=t0 + 3, route=route,
                  recently_passed=recently_passed) is d
    module._last_validating = None
    assert lookup(facts(), (stored,), now=t0 + 2, route=route,
                  recently_passed=recently_passed) == d


@pytest.mark.parametrize("tail", [b"", b"PRI * HTTP/2.0\r\n\r\n"])
@pytest.mark.parametrize("fields", FIELD_LISTS[:6] + FIELD_LISTS[-4:])
def test_the_usual_feed_gives_llhttps_message(fields: tuple[str, ...], tail: bytes) -> None:
    """_FallbackParser's usual feed (one whole request ending the read), now reading its
    message once and the preface's tail as a slice, hands out llhttp's message for every
    new head, and after one with HTTP/2's preface line behind it, the preface's 400 (RFC
    9113 §3.4), as before. Severity: none (a cost); a wrong exit would lose a request
    or let the preface through."""
    from aiohttp.http_exceptions import BadHttpMessage

    from cacheproxy.proxy.server_protocol import HeadMemo, _FallbackParser

    loop = asyncio.new_event_loop()
    try:
        def make() -> Any:
            return HttpRequestParser(object(), loop, 2**16, max_line_size=8190,
                                     max_field_size=8190, max_headers=128,
                                     max_msg_queue_size=16)
        wrapped = _FallbackParser(make(), lambda: None, 16, make, memo=HeadMemo())
        for i in range(3):
            head = request("/fresh", (*fields, f"X-Request-Id: {i}"))
            found = wrapped.feed_data(head + tail)[0]
            plain = make().feed_data(head)[0]
            assert found[0][0].raw_headers == plain[0][0].raw_headers
            if tail:
                assert isinstance(found[-1][0], BadHttpMessage) and len(found) == 2
                break
            assert len(found) == 1 and wrapped.settled
            wrapped.message_consumed()
    finally:
        loop.close()
