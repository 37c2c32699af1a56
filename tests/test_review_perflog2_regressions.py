"""Review of the request log's and the counters' work per request (perflog2): the observer,
record.py's lines and stats.py's counts, a fresh hit first.

A fresh hit's counts now wait in a slot of its shape (stats.HitSlot: one route, host and
body size) and are added n at a time when the counters are read, where each hit added them
one by one before. These tests hold the counters to what adding each hit's record gives,
at the points where the order of the additions shows: when the host table folds its
quieter hosts away, and when the counters are read between hits."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiohttp import HttpVersion
from multidict import CIMultiDict, CIMultiDictProxy

from cacheproxy.config import LogConfig
from cacheproxy.observe.observer import Observer
from cacheproxy.observe.record import parse_line, to_json
from cacheproxy.observe.stats import HOSTS_KEPT, Stats


def _msg() -> SimpleNamespace:
    return SimpleNamespace(method="GET", version=HttpVersion(1, 1),
                           headers=CIMultiDictProxy(CIMultiDict({"User-Agent": "curl/8"})))


def test_hits_waiting_in_slots_are_counted_before_the_host_table_folds():
    """A fresh hit's counts wait in its shape's slot until the counters are read; the host
    table, when more than twice HOSTS_KEPT hosts were seen, keeps the busiest and folds the
    others into "other". Were the waiting hits not added before that choice, a busy host
    would be ranked by its first hit alone and folded away: /stats' hosts and their
    "other" would not be what adding each hit's record gives (what they were before).
    Also read between batches: every read sees every hit so far. Severity: medium (the
    dashboard's hosts table and /stats' hosts, wrong after a fold)."""
    written: list[str] = []
    observer = Observer(LogConfig(format="off"), 0.0)
    observer.sink, observer.format = SimpleNamespace(write_many=written.extend), to_json
    expected = Stats(0.0)
    msg = _msg()
    sent = 0

    async def batch(hosts: list[str]) -> None:
        nonlocal sent
        for host in hosts:
            observer.record_hit(msg, "::1", host, "/p", "default", frozenset(), 200, 7,
                                1.0, 60.0, "c; hit", 0.0)
        observer.settle()  # the batch, as at the loop iteration's end
        for line in written[sent:]:
            record = parse_line(line)
            assert record is not None
            expected.add(record)
        sent = len(written)

    async def run() -> None:
        await batch(["hot.example"] * 50)
        # A fold while "hot.example" has 49 hits waiting: it must rank by its 50.
        await batch([f"h{i:03d}.example" for i in range(2 * HOSTS_KEPT + 5)]
                    + ["hot.example"] * 3)
        got = observer.stats
        assert got.requests == expected.requests == 50 + 2 * HOSTS_KEPT + 5 + 3
        assert got.hosts.snapshot() == expected.hosts.snapshot()
        assert got.hosts.counts["hot.example"].requests == 53
        # After the fold (and a read), hits of a kept host and of one folded away.
        await batch(["hot.example", "h000.example", "h300.example"] * 4)
        got = observer.stats
        assert got.requests == expected.requests
        assert got.hosts.snapshot() == expected.hosts.snapshot()
        assert got.by_route_cache == expected.by_route_cache
        assert got.bytes_from_cache == expected.bytes_from_cache

    asyncio.run(run())
    assert got_recent_hosts(observer) == [r.host for r in expected.recent_records()]


def got_recent_hosts(observer: Observer) -> list[str]:
    return [r.host for r in observer.stats.recent_records()]


def test_a_hit_line_after_the_log_format_changes_is_the_new_formats(tmp_path):
    """Slots keep a JSON template of their hits' line, made with the format in force (none
    with the log off); a SIGHUP that turns the log from off to JSON must write the hits of
    a slot made before it whole, as their records read. Severity: low (the log's lines
    after a reload)."""
    observer = Observer(LogConfig(format="off"), 0.0)
    msg = _msg()
    log = tmp_path / "requests.log"

    async def hit() -> None:
        observer.record_hit(msg, "::1", "a.example", "/p", "default", frozenset(), 200, 7,
                            1.0, 60.0, "c; hit", 0.0)
        observer.settle()

    async def run() -> None:
        await hit()
        observer.reconfigure(LogConfig(format="json", path=str(log)))
        await hit()
        observer.flush()
        assert observer.sink is not None
        assert await asyncio.to_thread(observer.sink.wait_written)

    asyncio.run(run())
    [line] = log.read_text().splitlines()
    record = parse_line(line)
    assert record is not None
    assert (record.host, record.path, record.cache, record.bytes, record.age, record.ttl,
            record.user_agent, record.cache_status) == \
        ("a.example", "/p", "HIT", 7, 1, 60, "curl/8", "c; hit")
    assert observer.stats.requests == 2
    observer.close()


def test_miss_counts_waiting_in_slots_are_the_records_counts_across_a_fold():
    """A miss's counts (Stats.add_fields) wait in the slot of its route, cache status,
    host and whether the origin answered, as a fresh hit's do. Across a fold of the host
    table, and for misses of every kind of bytes (from the origin, the proxy's own, a
    tunnel's both ways), the counters must be what adding each record gives: /stats,
    /metrics and the dashboard. Severity: medium (every miss's counts)."""
    from cacheproxy.observe.record import record_of

    def miss(host: str, cache: str = "MISS", up: int | None = 200, sent: int = 10,
             bytes_in: int | None = None, collapsed: bool = False) -> list[object]:
        return [1e9, "::1", "GET", host, "/p", 200, cache, sent, 1.5, None, None, up,
                0.5 if up else None, collapsed, "default", None, "HTTP/1.1", None,
                "curl/8", "c; fwd=miss", bytes_in]

    many = [miss("hot.example", sent=i) for i in range(40)]
    many += [miss("hot.example", "ERROR", up=None), miss("hot.example", collapsed=True),
             miss("hot.example", "TUNNEL", up=None, bytes_in=3),
             miss("hot.example", "BYPASS", up=None, bytes_in=4)]
    # Busier hosts, counted from records (as with the text log): at the fold, hot.example
    # must rank by its 44 requests, not by those of its slots' first ones.
    busier = [miss(f"h{i:03d}.example") for i in range(2 * HOSTS_KEPT + 5) for _ in range(6)]
    after = [miss("hot.example", "EXPIRED"), miss("h000.example"), miss("h300.example")] * 3
    by_fields, by_records = Stats(0.0), Stats(0.0)
    for f in many:
        by_fields.add_fields(f)
        by_records.add(record_of(f))
    for f in busier:
        by_fields.add(record_of(f))
        by_records.add(record_of(f))
    for f in after:
        by_fields.add_fields(f)
        by_records.add(record_of(f))
    assert by_fields.snapshot(0.0, {}, "v") == by_records.snapshot(0.0, {}, "v")
    assert [by_fields.tunnel_bytes, by_fields.bytes_other, by_fields.errors,
            by_fields.collapsed, by_fields.by_route_cache, by_fields.upstream_counts] == \
        [by_records.tunnel_bytes, by_records.bytes_other, by_records.errors,
         by_records.collapsed, by_records.by_route_cache, by_records.upstream_counts]


def test_a_slot_whose_host_was_folded_away_counts_its_next_request_at_once():
    """A slot's requests wait only while its host is in the host table; once a fold may
    have taken the host away (HostTable.gen), its next request is counted at once, so the
    host is admitted again in the requests' order. Were it left waiting, a later fold
    would come at another request than with the records, and a host busy after it would
    show one request more or fewer in /stats' hosts. Severity: low (one host's count,
    after two folds)."""
    from cacheproxy.observe.record import record_of

    def miss(host: str) -> list[object]:
        return [1e9, "::1", "GET", host, "/p", 200, "MISS", 10, 1.5, None, None, 200, 0.5,
                False, "default", None, "HTTP/1.1", None, "curl/8", "c; fwd=miss", None]

    by_fields, by_records = Stats(0.0), Stats(0.0)

    def both(f: list[object], slot: bool = False) -> None:
        if slot:
            by_fields.add_fields(f)
        else:
            by_fields.add(record_of(f))
        by_records.add(record_of(f))

    both(miss("x.example"), slot=True)  # its slot: made, its host admitted
    fillers = iter(f"f{i:03d}.example" for i in range(1000))
    while by_records.hosts.gen == 0:  # busier hosts, until a fold takes x.example away
        host = next(fillers)
        both(miss(host)), both(miss(host))
    assert "x.example" not in by_records.hosts.counts
    while len(by_records.hosts.counts) < 2 * HOSTS_KEPT - 1:
        host = next(fillers)
        both(miss(host)), both(miss(host))
    both(miss("x.example"), slot=True)  # admitted again: the table is full
    both(miss(next(fillers)))  # a fold, x.example among its hosts
    for _ in range(50):
        both(miss("x.example"), slot=True)
    assert by_fields.snapshot(0.0, {}, "v") == by_records.snapshot(0.0, {}, "v")
