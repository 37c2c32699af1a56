"""Review of the hot-path "pure refactor" (commits 50a7a9a..f8fce26: revalidation 686 ->
443 Python calls, pass-through 379 -> 313, hit 78 -> 72), which claimed no change of
behaviour. The reviewer compared the code before (c92c24e) and after on generated inputs
(stored responses' field reads and size, the 304 merge, request facts, the upstream
request head, the log's escaping and Referer redaction, FieldList, entity tags) and end to
end through both proxies (revalidations, hits, HEAD/Range/conditional hits, odd
Transfer-Encodings, bodies on GET, the log), and found no difference: these tests guard
what was found right, standing alone (no old code): the shortcuts the refactor added (a
memo of per-shape figures, the date-only 304 merge, the last replayed head answered
first) must answer as the plain rules they stand for.

Severity, were they to fail: a stored response read wrongly (a validator not sent, a
field of another response) or a head of another URL replayed is a wrong answer to every
client of that URL (high)."""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import cache_status, raw_origin

from cacheproxy.http import stored
from cacheproxy.http.fields import FieldList
from cacheproxy.http.revalidation import conditional_fields, date_only, merge_304
from cacheproxy.http.stored import (
    CachedResponse,
    Heuristics,
    make_stored_response,
    refreshed,
    stored_field_list,
    with_date,
)

T0 = 1_704_067_200.0
_SETTINGS = settings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])

# Field names in any case, repeated, common and not (stored._COMMON_NAMES), unique-valued
# (stored._UNIQUE_VALUES) and not; values empty, long (past stored._INTERN_MAX), obs-text.
_NAMES = ["ETag", "etag", "ETAG", "Last-Modified", "last-modified", "Date", "date", "DATE",
          "Cache-Control", "cache-control", "Expires", "Age", "Vary", "Content-Encoding",
          "content-encoding", "Set-Cookie", "Content-Type", "X-Custom", "x-custom",
          "X-Request-Id", "CDN-Cache-Control", "Content-Length"]
_NAME = st.one_of(st.sampled_from(_NAMES),
                  st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True))
_DATES = ["Mon, 01 Jan 2024 00:00:00 GMT", "Mon, 01 Jan 2024 00:00:10 GMT", "yesterday", ""]
_VALUE = st.one_of(
    st.sampled_from([*_DATES, '"v1"', 'W/"v1"', "max-age=60", "no-cache", "private",
                     "max-age=0, must-revalidate", "gzip", "Accept-Encoding", "x" * 200,
                     "a\x80\xffb", "\u00e9" * 130]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xff,
                          blacklist_characters="\x7f"), max_size=30))
_PAIRS = st.one_of(st.lists(st.tuples(_NAME, _VALUE), max_size=14),
                   st.lists(st.tuples(_NAME, _VALUE), min_size=65, max_size=80))


def _entry(pairs: list[tuple[str, str]], status: int = 200) -> CachedResponse:
    return make_stored_response(
        key="http://example.com/x", vary=(), vary_values=(), status=status, pairs=pairs,
        body=b"hello", request_time=T0, response_time=T0, shared=True,
        heuristics=Heuristics())


def _first(entry: CachedResponse, name: str) -> str | None:
    """The plain rule: the first stored line of a name, compared case-insensitively."""
    return next((v for k, v in zip(entry.names, entry.values, strict=True)
                 if k.lower() == name.lower()), None)


def _reads(entry: CachedResponse) -> tuple[Any, ...]:
    """All that is read of a stored response through the per-shape figures."""
    fl = stored_field_list(entry)
    return (entry.size, entry.validators(), entry.etag, entry.last_modified,
            entry.position("date"), list(fl), fl.by_name, conditional_fields(entry),
            [entry.get(n) for n in _NAMES], [entry.field(n.lower()) for n in _NAMES])


def _check_reads(entry: CachedResponse) -> None:
    for name in {*_NAMES, *entry.names}:
        for spelt in (name, name.lower(), name.upper()):
            assert entry.get(spelt) == _first(entry, spelt)
        assert entry.field(name.lower()) == _first(entry, name)
    assert entry.validators() == (_first(entry, "etag"), _first(entry, "last-modified"))
    assert entry.position("date") == next(
        (i for i, k in enumerate(entry.names) if k.lower() == "date"), None)
    fl = stored_field_list(entry)
    assert list(fl) == list(zip(entry.names, entry.values, strict=True))
    assert fl.by_name == FieldList(list(fl)).by_name


@_SETTINGS
@given(_PAIRS)
def test_stored_reads_are_the_plain_scan_memo_or_not(pairs: list[tuple[str, str]]) -> None:
    """Guards 50a7a9a, a218b05, 1f12731, f8fce26: a stored response's fields are read
    (get, field, the validators, the Date's place, the field list for a 304's merge) and
    its size counted through figures kept per shape of field names (stored._Shape, 256
    shapes kept). Whatever the case of a name, a name on several lines, a shape of more
    than 64 names (never kept), the reads are the first line of that name, and the same
    with the figures kept or forgotten. Wrong, a revalidation would send
    another line's validator (RFC 9111 §4.3.1) and the store would count another size."""
    entry = _entry(pairs)
    _check_reads(entry)
    warm = _reads(entry)
    kept = stored._SHAPES_FIGURED
    try:
        stored._SHAPES_FIGURED = {}  # forgotten: figured again
        assert _reads(entry) == warm
    finally:
        stored._SHAPES_FIGURED = kept


def test_stored_reads_past_the_shape_memo_bounds() -> None:
    """Guards the same past the memo's bounds: entries of 300 shapes (more than the 256
    whose figures are kept, so the first ones' are dropped) and of shapes too large to
    share (more than 64 names, more than 1,024 characters of names), read after all were
    made, read as the plain scan."""
    made = [_entry([("Date", _DATES[0]), (f"X-Shape-{i}", "v"), ("etag", f'"{i}"'),
                    ("Last-Modified", _DATES[1]), ("X-Shape-{i}", "again")])
            for i in range(300)]
    made += [_entry([("Date", _DATES[0]), *((f"X-{j}-{'n' * (i * 20)}", "v")
                                            for j in range(70 - i * 10)), ("ETag", '"big"')])
             for i in range(5)]
    assert len(stored._SHAPES_FIGURED) <= stored._FIGURED_KEPT
    for i, entry in enumerate(made):
        _check_reads(entry)
        if i < 300:
            assert entry.validators() == (f'"{i}"', _DATES[1])
        else:
            assert entry.etag == '"big"'


_R304_NAMES = st.sampled_from(["Date", "date", "ETag", "etag", "Cache-Control",
                               "cache-control", "X-Custom", "Connection", "Content-Length",
                               "Content-Encoding", "Keep-Alive", "Expires", "Vary"])


@_SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["Date", "date", "ETag", "Cache-Control",
                                           "cache-control", "X-Custom", "x-custom",
                                           "Content-Type", "Expires", "Vary", "Age"]),
                          _VALUE), max_size=8),
       st.lists(st.tuples(_R304_NAMES, _VALUE), max_size=5), st.booleans())
def test_a_date_only_304_merges_as_the_general_rule(
        base: list[tuple[str, str]], extra: list[tuple[str, str]], repeat: bool) -> None:
    """Guards 50a7a9a, 8554a7d, d7d49b3: a 304 that changes only Date is merged by a
    shortcut (revalidation.date_only, stored.refreshed, the flow's directives read once)
    that keeps the stored fields' order and spelling. RFC 9111 §3.2's merge (merge_304)
    of the same 304 must give the same fields by name, and the refreshed entry the same
    freshness lifetime, age and directives as one made from the general merge; wrong,
    the stored response would be served with a field the 304 changed, or fresh for
    another time."""
    entry = _entry(base)
    # the common 304: the stored fields (but content-bound ones) again, a new Date
    r304 = [(k, v) for k, v in base if k.lower() not in ("content-length", "date")] \
        if repeat else []
    fields = FieldList(with_date([*r304, ("Date", _DATES[1]), *extra], T0 + 5))
    merged = date_only(entry, fields)
    if merged is None:
        return
    general = FieldList(merge_304(entry, fields))
    assert merged.by_name == general.by_name
    assert [k for k, _ in merged] == list(entry.names)
    shortcut = refreshed(entry, merged, request_time=T0 + 4, response_time=T0 + 5,
                         shared=True, heuristics=Heuristics())
    made = make_stored_response(
        key=entry.key, vary=(), vary_values=(), status=entry.status, pairs=general,
        body=entry.body, request_time=T0 + 4, response_time=T0 + 5, shared=True,
        heuristics=Heuristics())
    assert (shortcut.lifetime, shortcut.born, shortcut.directives) == \
        (made.lifetime, made.born, made.directives)
    assert stored_field_list(shortcut).by_name == stored_field_list(made).by_name


async def test_a_refreshed_entrys_head_is_its_own_after_another_urls_head(proxy: Any) -> None:
    """Guards d8cd691: the last head encoded is answered first, before the per-entry
    memo, when the entry holds the very field tuples it was made from (a 304 that repeats
    the stored Date refreshes an entry with the same tuples). Revalidated /a, a hit of
    /b (whose head is the last made then), /a revalidated again, then /a's HEAD, Range
    and conditional hits: each answer has its own URL's fields and body, never the other
    URL's head (which would be a wrong answer for every client of /a)."""
    date = formatdate(usegmt=True)  # (now: /b is fresh; /a's 304s repeat it)

    def answer(head: bytes) -> bytes:
        target = head.split(b" ")[1].decode()
        if target == "/a":
            if b"if-none-match" in head.lower():
                return (f'HTTP/1.1 304 Not Modified\r\nDate: {date}\r\nETag: "a"\r\n'
                        f"\r\n").encode()
            return (f"HTTP/1.1 200 OK\r\nDate: {date}\r\nCache-Control: max-age=0\r\n"
                    f'ETag: "a"\r\nX-Which: a\r\nContent-Length: 6\r\n\r\nbody-a').encode()
        return (f"HTTP/1.1 200 OK\r\nDate: {date}\r\nCache-Control: max-age=600\r\n"
                f'ETag: "b"\r\nX-Which: b\r\nContent-Length: 6\r\n\r\nbody-b').encode()

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        seen = []
        for method, path, fields in [
                ("GET", "/a", {}), ("GET", "/a", {}), ("GET", "/b", {}), ("GET", "/b", {}),
                ("GET", "/a", {}), ("GET", "/b", {}), ("GET", "/a", {}), ("HEAD", "/a", {}),
                ("GET", "/a", {"Range": "bytes=1-2"}), ("GET", "/a", {"If-None-Match": '"a"'}),
                ("GET", "/b", {}), ("GET", "/a", {})]:
            resp = await client.request(method, path, headers=fields)
            body = await resp.read()
            which = path[1]
            if resp.status != 304:  # (a 304 sends the validators, not every field)
                assert resp.headers.getall("X-Which") == [which], (method, path, fields)
            assert resp.headers["ETag"] == f'"{which}"'
            if resp.status == 200 and method == "GET":
                assert body == (b"body-a" if which == "a" else b"body-b")
                assert resp.headers["Content-Length"] == str(len(body))
            seen.append((method, path, resp.status))
        assert [s for _, _, s in seen] == [200] * 8 + [206, 304, 200, 200]


@pytest.mark.parametrize("name", ["Transfer-Encoding", "transfer-encoding", "TRANSFER-ENCODING"])
async def test_chunked_spelt_oddly_is_decoded_and_stored(proxy: Any, name: str) -> None:
    """Guards 74c5c18: the answer's Transfer-Encoding is checked only when it has one
    (pool.Connection.on_headers_complete); one spelt in any case, "Chunked", is decoded
    and the content stored without it (RFC 9112 §7: a recipient takes off the codings
    it decodes; field names are case-insensitive, RFC 9110 §5.1), while "gzip, chunked"
    stays a 502 (only chunked is decoded)."""
    def answer(head: bytes) -> bytes:
        coding = b"gzip, chunked" if b"/gz" in head.split(b"\r\n")[0] else b"Chunked"
        return (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n" + name.encode()
                + b": " + coding + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")

    async with raw_origin(answer) as port:
        client = await proxy(f"http://127.0.0.1:{port}")
        statuses = []
        for _ in range(2):
            resp = await client.get("/x")
            assert resp.status == 200 and await resp.read() == b"hello"
            statuses.append(cache_status(resp).split(";")[1].strip())
        assert statuses == ["fwd=uri-miss", "hit"]
        assert (await client.get("/gz")).status == 502
