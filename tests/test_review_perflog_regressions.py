"""Review of what a request costs after its answer went out (perflog): the request log's
line, the stats, the observer and the sink.

A miss's line and counts are now made from the fields the observer reads when the request
ends (record.Fields), with no LogRecord unless the stats API shows it, and milliseconds
are written by record.ms_json rather than round() then repr(). These tests hold the new
path to the old one's output: the same line, byte for byte, and the same counts."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiohttp import HttpVersion
from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.config import LogConfig
from cacheproxy.observe.observer import Observer
from cacheproxy.observe.outcome import Outcome
from cacheproxy.observe.record import LogRecord, json_line, ms_json, record_of, to_json
from cacheproxy.observe.stats import Stats


@settings(max_examples=2000, deadline=None)
@given(ms=st.floats(0, 1e7) | st.floats(0, 5) | st.floats(allow_nan=False)
       | st.integers(0, 10**9).map(lambda n: n / 2000))  # halves of a microsecond
@example(0.0025)
@example(0.00025)
@example(-0.0)
@example(-0.0001)
@example(1e12)
@example(999999999999.9995)
@example(1e16)
@example(2.0)
@example(0.1)
@example(123456.7895)
@example(float("inf"))
@example(2.0005)
def test_milliseconds_are_written_as_repr_of_round_wrote_them(ms):
    """A line's total_ms and upstream_ms were repr(round(ms, 3)): two correctly rounded
    conversions that cost a miss some 3 % of its instructions. ms_json writes the same
    text for every float (what a reader of the log or `cacheproxy logs` sees must not
    change). Severity: the log's numbers, were it to differ."""
    assert ms_json(ms) == repr(round(ms, 3))


_text = st.text(max_size=30)
_maybe = st.none() | _text
_fields = st.tuples(
    st.floats(0, 4e9), st.sampled_from(("127.0.0.1", "::1", "-")), st.sampled_from(
        ("GET", "HEAD", "-")), _text, _text, st.integers(100, 599), st.sampled_from(
        ("MISS", "EXPIRED", "BYPASS", "ERROR", "DENIED", "TUNNEL", "REVALIDATED", "STALE")),
    st.integers(0, 10**9), st.floats(0, 1e6), st.none() | st.integers(-10**6, 10**9),
    st.none() | st.integers(-10**6, 10**9), st.none() | st.integers(100, 599),
    st.none() | st.floats(0, 1e6), st.booleans(), st.sampled_from(("default", "r\u00e9")),
    _maybe, st.sampled_from(("HTTP/1.1", "HTTP/1.0", "-")), _maybe, _maybe,
    st.sampled_from(("cacheproxy; fwd=uri-miss; fwd-status=200", "c; fwd=miss")) | _text,
    st.none() | st.integers(0, 10**9))


@settings(max_examples=300, deadline=None)
@given(many=st.lists(_fields, min_size=1, max_size=20))
def test_a_miss_line_and_counts_from_its_fields_are_its_records(many):
    """json_line writes a miss's line from its fields without the LogRecord to_json
    reads; Stats.add_fields counts it without one. Both must give what the record gave:
    the same line (the log's fields, README "The request log"), the same counters,
    series, hosts and recent records (the stats API, /metrics). Severity: every miss's
    line and count, were they to differ."""
    fields = [list(f) for f in many]
    for f in fields:
        assert json_line(f) == to_json(record_of(f))
    by_fields, by_records = Stats(0.0), Stats(0.0)
    for f in fields:
        by_fields.add_fields(f)
        by_records.add(record_of(f))
    assert by_fields.recent_records() == by_records.recent_records()
    assert by_fields.snapshot(0.0, {}, "v") == by_records.snapshot(0.0, {}, "v")
    # (the histogram takes the time measured, not the line's, rounded to the microsecond)
    assert sum(by_fields.upstream_counts) == sum(by_records.upstream_counts)
    assert [by_fields.tunnel_bytes, by_fields.bytes_other, by_fields.errors] == \
        [by_records.tunnel_bytes, by_records.bytes_other, by_records.errors]


def test_the_observers_miss_line_is_the_one_its_record_made():
    """Through Observer.record and settle, as client_conn's _answered calls them: the
    line written for a pass-through is the line of the LogRecord the observer made before
    (every field as README "The request log" shows it), and the stats API's recent record
    is that record. Severity: every miss's line."""
    written: list[str] = []
    observer = Observer(LogConfig(format="off"), 0.0)
    observer.sink, observer.format = SimpleNamespace(write_many=written.extend), to_json
    headers = CIMultiDictProxy(CIMultiDict(
        {"Host": "a.example", "Referer": "https://b.example/?token=t&x=1",
         "User-Agent": "curl/8"}))
    request = SimpleNamespace(headers=headers, version=HttpVersion(1, 0), remote="::1",
                              method="GET", raw_path="/p?token=s")
    outcome = Outcome(status="MISS", fwd="uri-miss", fwd_status=200, detail="no-store",
                      upstream_ms=0.6371234, bytes_sent=1024, secrets=frozenset({"token"}))
    outcome.cache_status("cacheproxy")

    async def one() -> None:
        observer.record(request, 200, outcome, 0.0020081234)
        observer.settle()

    asyncio.run(one())
    [line] = written
    [record] = observer.stats.recent_records()
    assert record == LogRecord(
        record.time, "::1", "GET", "a.example", "/p?token=REDACTED", 200, "MISS", 1024,
        2.008, None, None, 200, 0.637, False, "default", None, "HTTP/1.0",
        "https://b.example/?token=REDACTED&x=1", "curl/8",
        "cacheproxy; fwd=uri-miss; fwd-status=200; detail=no-store", None)
    assert line == to_json(record)
