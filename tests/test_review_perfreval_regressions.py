"""Review of the CPU a revalidation costs (issue 10: revalidation >= 1.5x Squid's req/s on
one core), which looked at the path of the common 304 (the origin repeats the stored
validator and fields, only Date changes): the flow's step for it (http/flow/answer.py
_validated, revalidation.date_only, stored.refreshed and _made), the memory store's put
of the refreshed response (store/memory.py put_now, CachedResponse.size), the lookup that
sends the validators and the reply from storage. The changes made there are shortcuts
that must answer exactly as the plain rules they stand for; these tests guard them,
standing alone (no old code kept), on generated inputs. None of them failed before the
change: no behaviour was meant to change.

Severity, were they to fail: a refreshed response with a wrong field or freshness is a
wrong answer to every client of its URL (high); a store that counts bytes wrongly grows
past cache.max_bytes or evicts too early (medium)."""

from __future__ import annotations

import gc
from email.utils import formatdate
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import cache_status, raw_origin

from cacheproxy.http.cache_control import parse_response_directives
from cacheproxy.http.dates import parse_http_date
from cacheproxy.http.fields import FieldList
from cacheproxy.http.freshness import corrected_initial_age, freshness_lifetime, parse_age
from cacheproxy.http.revalidation import date_only
from cacheproxy.http.stored import (
    CachedResponse,
    Heuristics,
    make_stored_response,
    refreshed,
    with_date,
)
from cacheproxy.http.targeted import NO_TARGETING, governing
from cacheproxy.store import MemoryStore

T0 = 1_704_067_200.0
_SETTINGS = settings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
_DATES = [formatdate(T0 + s, usegmt=True) for s in (0, 10, 3600)] + ["yesterday", ""]
_NAME = st.sampled_from(["Cache-Control", "cache-control", "Expires", "expires",
                         "Last-Modified", "Age", "age", "ETag", "Content-Type", "X-Custom",
                         "x-custom", "Set-Cookie", "Vary", "Date", "date"])
_VALUE = st.one_of(st.sampled_from([*_DATES, "max-age=60", "no-cache", "s-maxage=5",
                                    'private="X-Custom"', "public", "0", "5", "-1", "1, 2",
                                    '"v1"', "text/plain", "Accept-Encoding", "x" * 200]),
                   st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                           max_size=12))
_PAIRS = st.lists(st.tuples(_NAME, _VALUE), max_size=10)


def _plain_first(pairs: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in pairs if k.lower() == name), None)


def _plain_figures(pairs: list[tuple[str, str]], status: int, request_time: float,
                   response_time: float) -> tuple[float, float]:
    """§4.2.1, §4.2.3 by a plain scan of the fields: (lifetime, born)."""
    pairs = with_date(pairs, response_time)
    rules = governing(pairs, NO_TARGETING)
    directives = parse_response_directives(rules.cache_control)
    date = parse_http_date(_plain_first(pairs, "date"))
    expires = _plain_first(pairs, "expires")
    ages = [v for k, v in pairs if k.lower() == "age"]
    age = parse_age(", ".join(ages) if ages else None)
    initial = corrected_initial_age(age_value=age or 0, date=date, request_time=request_time,
                                    response_time=response_time)
    lifetime = 0.0 if age is None else float(freshness_lifetime(
        directives, status=status, date=date, expires=expires,
        expires_at=None if expires is None else parse_http_date(expires),
        last_modified=parse_http_date(_plain_first(pairs, "last-modified")),
        response_time=response_time, shared=True, heuristic_fraction=0.1,
        heuristic_max_age=86400.0))
    return lifetime, response_time - initial


def _made(pairs: list[tuple[str, str]], key: str = "http://o/x", body: bytes = b"body",
          at: float = T0) -> CachedResponse:
    return make_stored_response(
        key=key, vary=(), vary_values=(), status=200, pairs=pairs, body=body,
        request_time=at - 1, response_time=at, shared=True, heuristics=Heuristics())


@_SETTINGS
@given(_PAIRS, st.sampled_from(_DATES[:3]), st.integers(1, 7200))
def test_a_date_only_refresh_is_the_stored_fields_with_the_304s_date(
        pairs: list[tuple[str, str]], date: str, later: int) -> None:
    """Guards revalidation.date_only (the merged list made by the comprehension of
    stored_field_list, the Date changed in place only when it differs) and what the
    store's shortcut relies on: the refreshed response holds the stored names and values
    in their order with the 304's Date in the stored Date's place, the stored tuples
    themselves when the Date is the same, and the freshness figures of the merged fields
    (§4.2.1, §4.2.3, by a plain scan of them)."""
    stored = _made(pairs)
    r304 = FieldList(with_date([("Date", date)], T0 + later))
    merged = date_only(stored, r304)
    if merged is None:  # (two stored Dates: the general merge's)
        assert sum(k.lower() == "date" for k in stored.names) != 1
        return
    at = [k.lower() for k in stored.names].index("date")
    expected = (*stored.values[:at], date, *stored.values[at + 1:])
    assert list(merged) == list(zip(stored.names, expected, strict=True))
    assert merged.by_name == FieldList(list(merged)).by_name
    entry = refreshed(stored, merged, request_time=T0 + later - 1, response_time=T0 + later,
                      shared=True, heuristics=Heuristics())
    assert entry.names == stored.names and entry.values == expected
    if stored.values[at] == date:
        assert entry.values is stored.values and entry.names is stored.names
    assert (entry.lifetime, entry.born) == _plain_figures(
        list(merged), 200, T0 + later - 1, T0 + later)
    assert entry.body is stored.body and entry.directives == stored.directives


def _held(store: MemoryStore) -> list[CachedResponse]:
    return [v for key in store.keys_now() for v in store.peek(key)]


@_SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["put", "same", "later", "body", "private",
                                           "shrink"]),
                          st.sampled_from(["http://o/a", "http://o/b"])),
                max_size=12),
       st.sampled_from(["max-age=60", "no-cache", 'private="X-Custom"']))
def test_the_store_counts_the_bytes_it_holds_through_refreshes(
        ops: list[tuple[str, str]], cache_control: str) -> None:
    """Guards MemoryStore.put_now's shortcut for a refreshed response
    (CachedResponse.sized_as: the same field tuples, body, directives, key and variant as
    the response it replaces, so the same size, figured once): after any mix of puts,
    same-Date refreshes, new-Date refreshes and copies that change the body or the
    directives, or a max_bytes lowered to what is held (a reload), the bytes counted are
    the sum of what is held, within max_bytes, and every response held, and its
    directives, is out of the collector's walk (store/untracked.py)."""
    store = MemoryStore(max_bytes=1 << 20)
    fields = [("Cache-Control", cache_control), ("ETag", '"v1"'), ("X-Custom", "1")]
    for op, key in ops:
        if op == "shrink":
            store.resize(store.stats().bytes or 1 << 20)
            continue
        held = store.peek(key)
        if op == "put" or not held:
            new = _made(fields, key)
        elif op in ("same", "later"):
            was = held[0]
            when = T0 if op == "same" else T0 + 3600
            merged = date_only(was, FieldList([("Date", formatdate(when, usegmt=True))]))
            assert merged is not None
            new = refreshed(was, merged, request_time=when, response_time=when + 1,
                            shared=True, heuristics=Heuristics())
            if new.values is was.values and new.directives is was.directives:
                assert new.sized_as(was)  # (the same Date: the common 304's shortcut)
        elif op == "body":
            new = held[0].replace(body=b"another body, longer")
        else:
            new = held[0].replace(directives=parse_response_directives('private="Y"'))
        if new.sized_as(held[0] if held else new):
            assert new.size == (held[0] if held else new).size
        stored = store.put_now(new)
        assert stored == (new in store.peek(key))
        responses = _held(store)
        assert store.stats().bytes == sum(v.size for v in responses) <= store.stats().max_bytes
        assert store.stats().entries == len(responses)
        assert not any(gc.is_tracked(v) or gc.is_tracked(v.directives) for v in responses)


async def test_a_304s_own_date_is_spliced_into_the_replayed_head(proxy: Any) -> None:
    """Guards ReplayBlocks.head's Date splice (proxy/replay.py _date_spliced): a URL
    revalidated less often than once a second gets a 304 with a Date of its own each time,
    and the head replayed from the refreshed response is the last one made with its Date
    line rewritten, not encoded again. Two URLs whose stored fields differ only in their
    Date (the same names tuple: the splice checks values, not the URL) and a third with
    other fields are revalidated in turn, with the route's Referrer-Policy added to each
    head: every answer carries its own URL's body, X-Which, the Date of the 304 just
    received (RFC 9111 §4.3.4: the stored Date is replaced by the 304's), the policy, and
    no field twice; wrong, a client would get another URL's or an older Date (high)."""
    sent = iter(range(1, 10_000))
    dates: dict[str, str] = {}
    versions: list[str] = []

    def answer(head: bytes) -> bytes:
        target = head.split(b" ")[1].decode()
        which = target[1]
        date = dates[target] = formatdate(T0 + next(sent), usegmt=True)
        tag = '"same"' if which in "ab" else f'"{which}"'
        if which == "d" and b"if-none-match" in head.lower():  # X-Version changes too
            versions.append(str(len(versions)))
            return (f"HTTP/1.1 304 Not Modified\r\nDate: {date}\r\n"
                    f"Cache-Control: no-cache\r\nETag: {tag}\r\nX-Which: d\r\n"
                    f"X-Version: {versions[-1]}\r\n\r\n").encode()
        if b"if-none-match" in head.lower():
            return (f"HTTP/1.1 304 Not Modified\r\nDate: {date}\r\nETag: {tag}\r\n"
                    f"Cache-Control: no-cache\r\n\r\n").encode()
        return (f"HTTP/1.1 200 OK\r\nDate: {date}\r\nCache-Control: no-cache\r\n"
                f"ETag: {tag}\r\nX-Which: {'ab' if which in 'ab' else which}\r\n"
                f"Content-Length: 6\r\n\r\nbody-{which}").encode()

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}", referer={"policy": "no-referrer"})
        seen: set[str] = set()
        for path in ["/a", "/b", "/c", "/d",
                     *["/a", "/a", "/b", "/a", "/c", "/c", "/b", "/d", "/d"] * 3]:
            resp = await client.get(path)
            assert resp.status == 200 and await resp.read() == f"body-{path[1]}".encode()
            assert resp.headers.getall("Date") == [dates[path]], path
            assert resp.headers.getall("X-Which") == [
                "ab" if path in ("/a", "/b") else path[1]]
            assert resp.headers.getall("X-Version", []) == ([versions[-1]] if versions
                                                         and path == "/d" else [])
            assert resp.headers.getall("Referrer-Policy") == ["no-referrer"]
            assert resp.headers.getall("ETag") == [
                '"same"' if path in ("/a", "/b") else f'"{path[1]}"']
            assert len(resp.headers.getall("Content-Length")) == 1
            revalidated = "fwd-status=304" in cache_status(resp)
            assert revalidated == (path in seen), cache_status(resp)
            seen.add(path)
