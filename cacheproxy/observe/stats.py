"""Counters of what the cache did, for /metrics, the stats API and the dashboard.

Plain integers updated once per request; Prometheus reads them at scrape time
(metrics.py), so the request path pays no metrics-library cost. Counters by host are
bounded (HostTable): a forward proxy sees as many hosts as its clients visit."""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any

from cacheproxy.observe.record import (
    CACHE_STATUSES,
    HIT_STATUSES,
    ORIGIN_STATUSES,
    Fields,
    LogRecord,
    from_origin,
    record_of,
    to_json,
)

SERIES_SECONDS = 10       # one dashboard bucket
SERIES_BUCKETS = 90       # fifteen minutes of them (at most 90 small lists in memory)
RECENT_LINES = 50
HOSTS_SHOWN = 20          # hosts the stats API lists, busiest first
HOSTS_KEPT = 100          # hosts counted on their own; at twice as many, the rest are folded
HOST_CHARS = 255          # a Host is counted under this much of it (a client sends anything)
# Upstream latency buckets, seconds (Prometheus histogram "le" bounds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# What makes a record when the stats API reads it: a function, or a function and its
# arguments in a tuple.
_Maker = Callable[[], LogRecord] | tuple[Any, ...]


class Stats:
    def __init__(self, started: float) -> None:
        self.started = started
        self.requests = 0
        self.by_cache = dict.fromkeys(CACHE_STATUSES, 0)
        self.by_route_cache: dict[tuple[str, str], int] = {}
        self.bytes_from_cache = 0
        self.bytes_from_origin = 0
        self.bytes_other = 0  # ERROR, DENIED and TUNNEL's: in the byte hit ratio's whole only
        # Bytes through tunnels (CONNECT, WebSocket): to the client, from it (/metrics).
        self.tunnel_bytes = [0, 0]
        self.collapsed = 0
        self.errors = 0
        self.upstream_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.upstream_sum = 0.0
        self.series: deque[list[int]] = deque(maxlen=SERIES_BUCKETS)  # [start, requests, hits]
        self._newest: list[int] = [_NO_BUCKET, 0, 0]  # series[-1] (or none): most requests' bucket
        # The last records, or what makes one (add_hit; a tuple: a function and its
        # arguments, cheaper than a partial): read them with recent_records().
        self.recent: deque[LogRecord | _Maker] = deque(maxlen=RECENT_LINES)
        self.hosts = HostTable(before_fold=self.settle_slots)
        self._waiting: list[CountSlot] = []  # slots with requests not yet in the counters
        self._slots: dict[tuple[object, ...], CountSlot] = {}  # add_fields' (a miss's)

    def add(self, r: LogRecord) -> None:
        self.requests += 1
        cache = r.cache
        self.by_cache[cache] += 1
        key = (r.route, cache)
        self.by_route_cache[key] = self.by_route_cache.get(key, 0) + 1
        hit = cache in HIT_STATUSES
        if hit:
            self.bytes_from_cache += r.bytes
        elif from_origin(r):  # the proxy's own errors, refusals and PURGEs are neither
            self.bytes_from_origin += r.bytes
        else:
            self.bytes_other += r.bytes
            if cache == "TUNNEL":
                tunnel = self.tunnel_bytes
                tunnel[0] += r.bytes
                tunnel[1] += r.bytes_in or 0
        if r.collapsed:
            self.collapsed += 1
        if cache == "ERROR":
            self.errors += 1
        if r.upstream_ms is not None:
            self.add_upstream(r.upstream_ms)
        self._in_series(r.time, hit)
        self.recent.append(r)
        self.hosts.add(r.host, r.bytes, r.bytes_in, cache)

    def add_fields(self, f: Fields) -> None:
        """add(record_of(f)), from observer.record's fields: no record is made unless the
        stats API shows it. (The upstream time counted is the one measured, not the
        log's, rounded to the microsecond.) Its counts by route, cache status and host
        wait in the slot of those (with whether the origin answered), as a fresh hit's
        (add_slot_hit): counted at once when the slot is new or its host may have been
        folded away since; a tunnel's (bytes from the client too), at once."""
        cache = f[6]
        key = (f[14], cache, f[3], f[11] is not None)
        slot = self._slots.get(key)
        if slot is None or slot.gen != self.hosts.gen or f[20] is not None:
            self._add_fields_now(f)
            if slot is None:
                if cache == "TUNNEL" or f[20] is not None:  # (bytes both ways: no slot)
                    return
                if len(f[3]) > HOST_CHARS:  # (a client's long Host: not kept, SLOTS_KEPT)
                    return
                slots = self._slots
                if len(slots) >= SLOTS_KEPT:
                    slots.clear()  # (a slot's waiting counts are in _waiting)
                slot = slots[key] = CountSlot(f[14], cache, f[3], _bytes_to(cache, f[11]))
            slot.gen = self.hosts.gen
            return
        if not slot.n:
            self._waiting.append(slot)
        slot.n += 1
        slot.bytes += f[7]
        if f[13]:
            self.collapsed += 1
        upstream_ms = f[12]
        if upstream_ms is not None:
            seconds = upstream_ms / 1000  # (add_upstream's)
            self.upstream_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.upstream_sum += seconds
        when, bucket = f[0], self._newest  # (_in_series, inlined for the newest bucket)
        if bucket[0] <= when < bucket[0] + SERIES_SECONDS:
            bucket[1] += 1
            bucket[2] += slot.to == _TO_CACHE
        else:
            self._in_series(when, slot.to == _TO_CACHE)
        self.recent.append((record_of, f))

    def _add_fields_now(self, f: Fields) -> None:
        self.requests += 1
        cache, sent = f[6], f[7]
        self.by_cache[cache] += 1
        key = (f[14], cache)
        by_route_cache = self.by_route_cache
        by_route_cache[key] = by_route_cache.get(key, 0) + 1
        hit = cache in HIT_STATUSES
        if hit:
            self.bytes_from_cache += sent
        elif cache in ORIGIN_STATUSES and f[11] is not None:  # from_origin()
            self.bytes_from_origin += sent
        else:
            self.bytes_other += sent
            if cache == "TUNNEL":
                tunnel = self.tunnel_bytes
                tunnel[0] += sent
                tunnel[1] += f[20] or 0
        if f[13]:
            self.collapsed += 1
        if cache == "ERROR":
            self.errors += 1
        upstream_ms = f[12]
        if upstream_ms is not None:
            seconds = upstream_ms / 1000  # (add_upstream's)
            self.upstream_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.upstream_sum += seconds
        self._in_series(f[0], hit)
        self.recent.append((record_of, f))
        self.hosts.add(f[3], sent, f[20], cache)

    def add_upstream(self, upstream_ms: float) -> None:
        """One response head from upstream, in the histogram of their times."""
        seconds = upstream_ms / 1000
        self.upstream_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.upstream_sum += seconds

    def add_hit(self, when: float, route: str, host: str, sent: int, record: _Maker) -> None:
        """add() of a fresh hit's record (cache HIT, nothing forward, not collapsed), from
        what it counts: record() makes the record itself, if the stats API shows it."""
        self.requests += 1
        self.by_cache["HIT"] += 1
        key = (route, "HIT")
        self.by_route_cache[key] = self.by_route_cache.get(key, 0) + 1
        self.bytes_from_cache += sent
        self._in_series(when, True)
        self.recent.append(record)
        self.hosts.add(host, sent, None, "HIT")

    def add_slot_hit(self, slot: HitSlot, when: float, record: _Maker) -> None:
        """add_hit(when, slot.route, slot.host, slot.sent, record) for a hit of the slot's
        shape: its counts wait in the slot, added n at a time when they are read
        (settle_slots). Counted at once when the slot is new or its host may have been
        folded away since (HostTable.gen): a host is admitted, and a route's key made,
        in the order of the requests, so the counters read as if each hit were added."""
        if slot.gen != self.hosts.gen:
            self.add_hit(when, slot.route, slot.host, slot.sent, record)
            slot.gen = self.hosts.gen
            return
        if not slot.n:
            self._waiting.append(slot)
        slot.n += 1
        slot.bytes += slot.sent
        bucket = self._newest  # (_in_series, inlined for the bucket of nearly every hit)
        if bucket[0] <= when < bucket[0] + SERIES_SECONDS:
            bucket[1] += 1
            bucket[2] += 1
        else:
            self._in_series(when, True)
        self.recent.append(record)

    def add_slot_miss(self, slot: MissSlot, when: float, upstream_ms: float | None,
                      record: tuple[Any, ...]) -> None:
        """add_fields(f) for a miss of the slot's shape (observer.MissShapes), f being
        record[0](*record[1:]): its counts by route, cache status and host wait in the
        slot, as add_slot_hit's; the upstream time (the one measured), the series and
        the recent records, each its own. Counted at once when the slot is new or its
        host may have been folded away since (add_slot_hit's reason)."""
        if slot.gen != self.hosts.gen:
            self._add_fields_now(slot.fields_of(*record[2:]))
            slot.gen = self.hosts.gen
            return
        if not slot.n:
            self._waiting.append(slot)
        slot.n += 1
        slot.bytes += slot.sent
        if slot.collapsed:
            self.collapsed += 1
        if upstream_ms is not None:
            seconds = upstream_ms / 1000  # (add_upstream's)
            self.upstream_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.upstream_sum += seconds
        bucket = self._newest  # (_in_series, inlined for the newest bucket)
        if bucket[0] <= when < bucket[0] + SERIES_SECONDS:
            bucket[1] += 1
            bucket[2] += slot.to == _TO_CACHE
        else:
            self._in_series(when, slot.to == _TO_CACHE)
        self.recent.append(record)

    def settle_slots(self) -> None:
        """Add the requests add_slot_hit and add_fields kept in slots: to be called before
        the counters are read (Observer.stats, snapshot) and before the host table folds."""
        slots = self._waiting
        if not slots:
            return
        self._waiting = []
        by_cache, by_route_cache, hosts = self.by_cache, self.by_route_cache, self.hosts
        for slot in slots:
            n, sent, cache = slot.n, slot.bytes, slot.cache
            slot.n = slot.bytes = 0
            self.requests += n
            by_cache[cache] += n
            key = (slot.route, cache)
            by_route_cache[key] = by_route_cache.get(key, 0) + n
            to = slot.to
            if to == _TO_CACHE:
                self.bytes_from_cache += sent
            elif to == _TO_ORIGIN:
                self.bytes_from_origin += sent
            else:
                self.bytes_other += sent
            if cache == "ERROR":
                self.errors += n
            hosts.add(slot.host, sent, None, cache, n)

    def _in_series(self, when: float, hit: bool) -> None:
        start = int(when) // SERIES_SECONDS * SERIES_SECONDS
        series = self.series
        if series and series[-1][0] == start:
            bucket: list[int] | None = series[-1]
        elif not series or series[-1][0] < start:
            bucket = self._newest = [start, 0, 0]
            series.append(bucket)
        else:
            bucket = self._earlier_bucket(start)
            if bucket is None:
                return
        bucket[1] += 1
        bucket[2] += hit

    def _earlier_bucket(self, start: int) -> list[int] | None:
        """The bucket of a request that began before the newest one (it ended after later
        ones began: a slow download, a tunnel), in its place: a bucket appended after the
        newest would split one time in two (the chart draws one over the other) and push
        real history out of the bound. Older than every bucket kept: None (the counters
        have it)."""
        series = self.series
        for i in range(len(series) - 1, -1, -1):
            t = series[i][0]
            if t == start:
                return series[i]
            if t < start:
                if len(series) == series.maxlen:
                    series.popleft()
                    i -= 1
                bucket = [start, 0, 0]
                series.insert(i + 1, bucket)
                return bucket
        if len(series) == series.maxlen:
            return None
        bucket = [start, 0, 0]
        series.appendleft(bucket)
        return bucket

    def recent_records(self) -> list[LogRecord]:
        """The last RECENT_LINES records, oldest first."""
        self.settle_slots()  # (not needed for them: for a caller that reads the counters next)
        return [r if type(r) is LogRecord else r[0](*r[1:]) if type(r) is tuple else r()
                for r in self.recent]  # type: ignore[operator]

    def snapshot(self, now: float, store: dict[str, Any], version: str) -> dict[str, Any]:
        """The JSON of GET <prefix>stats (the dashboard's source)."""
        self.settle_slots()
        hits = sum(self.by_cache[s] for s in HIT_STATUSES)
        # Of all body bytes sent, as `cacheproxy logs` reports it (summary.py) and as
        # hit_ratio counts every request: not of the hits' and misses' bytes alone.
        sent = self.bytes_from_cache + self.bytes_from_origin + self.bytes_other
        hosts, other = self.hosts.snapshot()
        return {
            "version": version,
            "uptime_s": round(now - self.started, 3),
            "requests": self.requests,
            "by_cache": dict(self.by_cache),
            "hit_ratio": hits / self.requests if self.requests else 0.0,
            "byte_hit_ratio": self.bytes_from_cache / sent if sent else 0.0,
            "bytes_from_cache": self.bytes_from_cache,
            "bytes_from_origin": self.bytes_from_origin,
            "collapsed": self.collapsed,
            "errors": self.errors,
            "store": store,
            "series": [{"t": t, "requests": n, "hits": h} for t, n, h in self.series],
            "recent": [_json_object(r) for r in self.recent_records()],
            "hosts": hosts,
            "hosts_other": other,
        }


# _newest before the first bucket: no time falls in it.
_NO_BUCKET = 1 << 62


# Where a slot's body bytes count (Stats.add_fields' three branches).
_TO_CACHE, _TO_ORIGIN, _TO_OTHER = 0, 1, 2
# add_fields' slots (route, cache status, host): about 1 MB at most, as a slot is made
# only for a Host of at most HOST_CHARS (a client sends anything, up to 8,190 characters)
SLOTS_KEPT = 4096


def _bytes_to(cache: str, upstream_status: int | None) -> int:
    if cache in HIT_STATUSES:
        return _TO_CACHE
    if cache in ORIGIN_STATUSES and upstream_status is not None:  # from_origin()
        return _TO_ORIGIN
    return _TO_OTHER


class CountSlot:
    """Requests of one route, cache status and host (and so one place for their bytes)
    whose counts wait to be added, n at a time (Stats.settle_slots)."""

    __slots__ = ("bytes", "cache", "gen", "host", "n", "route", "to")

    def __init__(self, route: str, cache: str, host: str, to: int) -> None:
        self.route, self.cache, self.host, self.to = route, cache, host, to
        self.n = self.bytes = 0
        self.gen = -1  # no HostTable.gen: the first request is counted at once


class HitSlot(CountSlot):
    """Fresh hits of one shape (a route, a host, a body size: of one template of their log
    line, observer.py). shape and template are the observer's: what the hit's record and
    line are made from."""

    __slots__ = ("sent", "shape", "template")

    def __init__(self, route: str, host: str, sent: int, shape: tuple[Any, ...],
                 template: tuple[str, str] | None) -> None:
        super().__init__(route, "HIT", host, _TO_CACHE)
        self.sent, self.shape, self.template = sent, shape, template


class MissSlot(CountSlot):
    """Requests that were not fresh hits, of one shape: every column of their log line
    but the time, the client and the two durations (observer.MissShapes' key). fields is
    their record fields (observer.record's) with those four left as 0.0, "-", 0.0 and
    None; template, their JSON line's (record.miss_line), or None (written from the
    fields: a sink that was off when the slot was made, or a line too long to keep)."""

    __slots__ = ("collapsed", "fields", "sent", "template")

    def __init__(self, fields: Fields, template: tuple[str, str, str] | None) -> None:
        cache = fields[6]
        super().__init__(fields[14], cache, fields[3], _bytes_to(cache, fields[11]))
        self.sent, self.collapsed = fields[7], fields[13]
        self.fields, self.template = fields, template

    def fields_of(self, when: float, client: str, total_ms: float,
                  upstream_ms: float | None) -> Fields:
        """The record fields of one miss of this shape."""
        f = self.fields.copy()
        f[0], f[1], f[8], f[12] = when, client, total_ms, upstream_ms
        return f

    def record_of(self, when: float, client: str, total_ms: float,
                  upstream_ms: float | None) -> LogRecord:
        """The LogRecord of one miss of this shape (the stats API's recent records)."""
        return record_of(self.fields_of(when, client, total_ms, upstream_ms))


class HostCount:
    """One host's requests, body bytes sent (a tunnel's: from the origin), bytes a client
    sent through tunnels, and requests by cache status (only those seen)."""

    __slots__ = ("by_cache", "bytes", "bytes_in", "requests")

    def __init__(self) -> None:
        self.requests = self.bytes = self.bytes_in = 0
        self.by_cache: dict[str, int] = {}

    def merge(self, other: HostCount) -> None:
        self.requests += other.requests
        self.bytes += other.bytes
        self.bytes_in += other.bytes_in
        for cache, n in other.by_cache.items():
            self.by_cache[cache] = self.by_cache.get(cache, 0) + n

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "bytes": self.bytes, "bytes_in": self.bytes_in,
                "by_cache": dict(self.by_cache)}


class HostTable:
    """Requests by the record's host: the Host a reverse-proxied request named, the
    authority of an absolute-form (forward) request, the host:port of a CONNECT.

    Bounded like a frequency sketch, cheaply: up to 2 * kept hosts are counted on their
    own; when one more comes, the kept busiest stay and the others' counts are folded into
    `other` (a host folded away counts again from zero if it comes back). So every request
    is counted once, in a host's figures or in `other`, and the listed figures are exact
    since the host was last (re)admitted."""

    def __init__(self, kept: int = HOSTS_KEPT,
                 before_fold: Callable[[], None] = lambda: None) -> None:
        self.kept = kept
        self.counts: dict[str, HostCount] = {}
        self.other = HostCount()  # hosts folded away
        self.gen = 0  # folds so far: a host counted before one may be gone
        self._before_fold = before_fold  # what adds the counts still waiting (Stats)

    def add(self, host: str, sent: int, bytes_in: int | None, cache: str, n: int = 1) -> None:
        """A record's share: its host, body bytes sent, tunnel bytes in, cache status
        (n records': their sums)."""
        host = host[:HOST_CHARS]
        count = self.counts.get(host)
        if count is None:
            if len(self.counts) >= 2 * self.kept:
                self._fold()
            count = self.counts[host] = HostCount()
        count.requests += n
        count.bytes += sent
        if bytes_in is not None:
            count.bytes_in += bytes_in
        by_cache = count.by_cache
        by_cache[cache] = by_cache.get(cache, 0) + n

    def _fold(self) -> None:
        self._before_fold()  # the busiest are chosen by every request so far
        self.gen += 1
        ranked = self._ranked()
        self.counts = dict(ranked[:self.kept])
        for _, count in ranked[self.kept:]:
            self.other.merge(count)

    def _ranked(self) -> list[tuple[str, HostCount]]:
        return sorted(self.counts.items(), key=lambda item: (-item[1].requests, item[0]))

    def snapshot(self, shown: int = HOSTS_SHOWN) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The busiest `shown` hosts, and everything else summed (hosts not shown and
        hosts folded away): together they count every request."""
        ranked = self._ranked()
        rest = HostCount()
        rest.merge(self.other)
        for _, count in ranked[shown:]:
            rest.merge(count)
        listed = [{"host": host, **count.to_json()} for host, count in ranked[:shown]]
        return listed, rest.to_json()


def _json_object(record: LogRecord) -> dict[str, Any]:
    return json.loads(to_json(record))  # one definition of the JSON fields: to_json's
