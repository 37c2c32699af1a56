"""Review perfobs4: a miss's observation made per shape, as a fresh hit's is.

A pass-through's or revalidation's log line and counts are now made from a slot kept per
shape (observer.Observer._miss_slots, stats.MissSlot): every column of the line but the
time, the client and the two durations is written once per shape, and the counts by
route, cache status and host wait in the slot until /metrics or /stats reads them. These
tests hold that path to the full one (record fields, json_line, Stats.add_fields)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiohttp import HttpVersion
from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.config import LogConfig
from cacheproxy.observe import observer as observer_module
from cacheproxy.observe.observer import Observer
from cacheproxy.observe.outcome import Outcome
from cacheproxy.observe.record import to_json

_WALL = 1_764_930_000.25  # time.time() as the observer reads it (the same for both)


def _request(remote: str, referer: str | None, target: str = "/p?token=s&x=1") -> SimpleNamespace:
    fields = CIMultiDict({"Host": "a.example", "User-Agent": "curl/8"})
    if referer is not None:
        fields["Referer"] = referer
    return SimpleNamespace(headers=CIMultiDictProxy(fields), version=HttpVersion(1, 1),
                           remote=remote, method="GET", raw_path=target)


def _outcome(status: str = "MISS", fwd_status: int = 200, route: str = "default",
             detail: str = "no-store", up_ms: float = 0.6371234, age: float | None = None,
             ttl: float | None = None, collapsed: bool = False) -> Outcome:
    o = Outcome(status=status, fwd="uri-miss", fwd_status=fwd_status, detail=detail,
                upstream_ms=up_ms, bytes_sent=1024, route=route, age=age, ttl=ttl,
                collapsed=collapsed, secrets=frozenset({"token"}))
    o.cache_status("cacheproxy")
    return o


def _run(shaped: bool, misses: list[tuple[SimpleNamespace, int, Outcome, float]]) -> tuple:
    written: list[str] = []
    observer = Observer(LogConfig(format="off"), 0.0)
    observer.sink, observer.format = SimpleNamespace(write_many=written.extend), to_json
    if not shaped:  # every miss as before this review: its fields, json_line, add_fields
        observer._new_miss_slot = lambda key: None  # type: ignore[method-assign]
    clock = SimpleNamespace(time=lambda: _WALL, perf_counter=lambda: 7.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(observer_module, "time", clock)

        async def record_all() -> None:
            for i, (request, status, outcome, duration) in enumerate(misses):
                observer.record(request, status, outcome, duration)
                if i % 3 == 2:
                    observer.settle()  # batches of several lines and of one
            observer.settle()

        asyncio.run(record_all())
    assert bool(observer._miss_slots) is shaped  # (the path under test was taken)
    stats = observer.stats
    return (written, stats.snapshot(0.0, {}, "v"), stats.recent_records(),
            stats.upstream_counts, stats.upstream_sum, stats.collapsed, stats.errors,
            stats.by_route_cache, stats.bytes_from_origin, stats.bytes_other)


def test_misses_of_one_shape_then_others_give_the_full_paths_lines_and_counts():
    """A run of misses of one shape, then of others (a different status, route,
    Cache-Status member, Referer, client; a revalidation's Age and ttl; a collapsed one;
    an error), written and counted through the shape's slot: every line, /stats figure,
    recent record and upstream histogram must be what the full path (the record's fields,
    json_line, Stats.add_fields) gives, byte for byte. What a user would see otherwise:
    a log line or a counter that differs from the request it stands for. README "The
    request log" (its fields); severity: every miss's line and counts."""
    ref = "https://b.example/?token=t&x=1"
    misses = [(_request(f"10.0.0.{i % 2}", ref), 200, _outcome(up_ms=0.5 + i / 7), 0.002 + i / 9)
              for i in range(5)]
    misses += [
        (_request("10.0.0.9", ref), 404, _outcome(fwd_status=404), 0.0031),
        (_request("10.0.0.9", ref), 200, _outcome(route="api"), 0.0032),
        (_request("10.0.0.9", ref), 200, _outcome(detail="private"), 0.0033),
        (_request("10.0.0.9", None), 200, _outcome(), 0.0034),
        (_request("::1", "https://c.example/"), 200, _outcome(), 0.0035),
        (_request("::1", ref), 200, _outcome("REVALIDATED", 304, age=3.2, ttl=59.9), 0.004),
        (_request("::1", ref), 200, _outcome("REVALIDATED", 304, age=4.7, ttl=58.1), 0.005),
        (_request("::1", ref), 200, _outcome(collapsed=True), 0.006),
        (_request("::1", ref), 502, _outcome("ERROR", 502, up_ms=1200.0), 1.25),
        (_request("::1", ref, "/user@x/p"), 200, _outcome(), 0.007),
    ]
    misses += misses[:3] + misses[6:9] + misses[11:14]  # shapes seen before, again
    shaped, full = _run(True, misses), _run(False, misses)
    assert len(shaped[0]) == len(misses)
    assert shaped == full
    assert '"path":"/p?token=REDACTED&x=1"' in shaped[0][0]


def test_misses_of_distinct_urls_keep_no_slot_each():
    """The lead's follow-up: a slot was made for every miss's shape on its first sighting,
    so misses of distinct URLs (a crawl, a cache being filled) each left a slot (its key,
    fields and line template, about 450 bytes) until 2,048 of them filled the table:
    bench/memory.py's 20,000 distinct 1 KiB fills measured 1,550 bytes of RSS an entry
    against 1,504 before, past the issue's 1.5 KiB. A slot is now made for a shape seen
    again; one seen once keeps only its key (at most 256 of them). Every line and count
    stays the full path's. Severity: low (memory, bounded either way)."""
    ref = "https://b.example/"
    misses = [(_request("10.0.0.1", ref, f"/item/{i}"), 200, _outcome(), 0.002)
              for i in range(300)]
    misses += [misses[-1]] * 3  # one shape again: a slot for it alone
    written: list[str] = []
    observer = Observer(LogConfig(format="off"), 0.0)
    observer.sink, observer.format = SimpleNamespace(write_many=written.extend), to_json

    async def record_all() -> None:
        for request, status, outcome, duration in misses:
            observer.record(request, status, outcome, duration)
        observer.settle()

    asyncio.run(record_all())
    assert len(observer._miss_slots) == 1
    assert len(observer._miss_once) <= observer_module._ONCE_KEPT
    assert len(written) == len(misses) and '"path":"/item/299"' in written[-1]
    assert written[-1].split('"client"')[1] == written[-2].split('"client"')[1]
