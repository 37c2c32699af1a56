"""/metrics in the Prometheus text format, read from Stats at scrape time.

With --workers, what each worker counts is a Counts; the worker a scrape reaches asks the
others for theirs (proxy/siblings.py) and sums them (summed), so that the counters are the
server's, as nginx's stub_status and varnishstat count, not one worker's: a scrape that
reached either worker at random saw a counter go down and up at every switch (a reset, to
Prometheus: rate() read phantom traffic)."""

from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from cacheproxy.observe import gc_pauses
from cacheproxy.observe.gc_pauses import BUCKETS as GC_BUCKETS
from cacheproxy.observe.gc_pauses import PAUSES
from cacheproxy.observe.record import CACHE_STATUSES
from cacheproxy.observe.stats import LATENCY_BUCKETS, Stats
from cacheproxy.store.base import StoreStats


@dataclass
class Counts:
    """What /metrics shows of one process, or of several summed."""

    by_route_cache: dict[tuple[str, str], int]
    bytes_from_cache: int
    bytes_from_origin: int
    collapsed: int
    errors: int
    upstream_counts: list[int]
    upstream_sum: float
    store: list[int]  # StoreStats: entries, bytes, max_bytes, evictions
    gc_counts: list[list[int]]  # the collector's pauses (gc_pauses.PAUSES)
    gc_sums: list[float]
    gc_longest: list[float]
    gc_frozen: int
    python_gc: list[list[int]]  # gc.get_stats(): collections, collected, uncollectable
    processes: int = 1
    # The listener's client connections: open, the most allowed, refused at that limit.
    connections: list[int] = dataclasses.field(default_factory=lambda: [0, 0, 0])
    tunnel_bytes: list[int] = dataclasses.field(default_factory=lambda: [0, 0])  # out, in


def counts_of(stats: Stats, store: StoreStats,
              connections: tuple[int, int, int] = (0, 0, 0)) -> Counts:
    """This process's figures (connections: Observer.connections())."""
    return Counts(
        dict(stats.by_route_cache), stats.bytes_from_cache, stats.bytes_from_origin,
        stats.collapsed, stats.errors, list(stats.upstream_counts), stats.upstream_sum,
        [store.entries, store.bytes, store.max_bytes, store.evictions],
        [list(c) for c in PAUSES.counts], list(PAUSES.sums), list(PAUSES.longest),
        gc_pauses.frozen(),
        [[g["collections"], g["collected"], g["uncollectable"]] for g in gc.get_stats()],
        connections=list(connections), tunnel_bytes=list(stats.tunnel_bytes))


def counts_json(counts: Counts) -> bytes:
    fields = dataclasses.asdict(counts)
    fields["by_route_cache"] = [[*k, n] for k, n in counts.by_route_cache.items()]
    return json.dumps(fields, separators=(",", ":")).encode()


def counts_from_json(data: bytes) -> Counts | None:
    """A sibling's Counts; None when it cannot be read (another version's)."""
    try:
        fields = json.loads(data)
        fields["by_route_cache"] = {(r, c): n for r, c, n in fields["by_route_cache"]}
        return Counts(**fields)
    except (ValueError, TypeError, KeyError):
        return None


def retired(data: bytes) -> Counts | None:
    """A dead worker's last Counts, as its successor adds them (proxy/siblings.py RETIRED):
    its counters, not its gauges (its memory store, connections and frozen objects went
    with it), and no process."""
    counts = counts_from_json(data)
    if counts is None or len(counts.store) != 4 or len(counts.connections) != 3:
        return None
    return dataclasses.replace(counts, store=[0, 0, 0, counts.store[3]], gc_frozen=0,
                               processes=0, connections=[0, 0, counts.connections[2]])


def _add(a: list, b: list) -> list:  # type: ignore[type-arg]
    return [_add(x, y) if isinstance(x, list) else x + y for x, y in zip(a, b, strict=False)]


def summed(own: Counts, others: list[Counts], shared_store: bool) -> Counts:
    """The server's figures: every worker's counters added; the store's gauges added too
    (each worker's own memory store), unless the store is shared (Redis: each worker
    reports the same figures, as last read: its gauges as the answering worker read them,
    its eviction counter the highest reading); the longest pause, the longest of all."""
    total = dataclasses.replace(own, by_route_cache=dict(own.by_route_cache))
    for other in others:
        for key, n in other.by_route_cache.items():
            total.by_route_cache[key] = total.by_route_cache.get(key, 0) + n
        total.bytes_from_cache += other.bytes_from_cache
        total.bytes_from_origin += other.bytes_from_origin
        total.collapsed += other.collapsed
        total.errors += other.errors
        total.upstream_counts = _add(total.upstream_counts, other.upstream_counts)
        total.upstream_sum += other.upstream_sum
        if not shared_store:
            total.store = _add(total.store, other.store)
        elif len(other.store) == 4:
            # Redis's evicted_keys, as each worker last read it (every 5 s, at its own
            # phase): the highest reading, or a scrape reaching the worker that read it
            # last saw the counter go down (a reset, to Prometheus' rate()).
            total.store = [*total.store[:3], max(total.store[3], other.store[3])]
        total.gc_counts = _add(total.gc_counts, other.gc_counts)
        total.gc_sums = _add(total.gc_sums, other.gc_sums)
        total.gc_longest = [max(x, y) for x, y in zip(total.gc_longest, other.gc_longest,
                                                        strict=False)]
        total.gc_frozen += other.gc_frozen
        total.python_gc = _add(total.python_gc, other.python_gc)
        total.processes += other.processes
        total.connections = _add(total.connections, other.connections)
        total.tunnel_bytes = _add(total.tunnel_bytes, other.tunnel_bytes)
    return total


class _Collector:
    def __init__(self, counts: Counts, routes: tuple[str, ...]) -> None:
        self.counts = counts
        self.routes = routes

    def collect(self) -> Iterator[Metric]:
        s = self.counts
        requests = CounterMetricFamily(
            "cacheproxy_requests", "Requests answered, by cache status and route",
            labels=["cache", "route"])
        # Every cache status of each route (configured, or seen before a reload), 0 until
        # it happens: a series born at 1 hides that first request from rate() and
        # increase(), which need a sample before it (the first ERROR never alerted), and
        # an alert on a ratio of absent series says "no data" (Prometheus' "avoid missing
        # metrics"). Bounded: statuses x routes of the config.
        routes = sorted({"default", *self.routes, *(route for route, _ in s.by_route_cache)})
        for route in routes:
            for cache in CACHE_STATUSES:
                requests.add_metric([cache, route], s.by_route_cache.get((route, cache), 0))
        for (route, cache), n in sorted(s.by_route_cache.items()):
            if cache not in CACHE_STATUSES:  # (every request shows, whatever its word)
                requests.add_metric([cache, route], n)
        yield requests
        sent = CounterMetricFamily(
            "cacheproxy_response_body_bytes", "Body bytes sent to clients, by where they came from",
            labels=["source"])
        sent.add_metric(["cache"], s.bytes_from_cache)
        sent.add_metric(["origin"], s.bytes_from_origin)
        yield sent
        tunnels = CounterMetricFamily(
            "cacheproxy_tunnel_bytes",
            "Bytes passed through CONNECT tunnels and WebSockets, by direction",
            labels=["direction"])
        tunnels.add_metric(["to_client"], s.tunnel_bytes[0])
        tunnels.add_metric(["from_client"], s.tunnel_bytes[1])
        yield tunnels
        yield CounterMetricFamily("cacheproxy_collapsed_requests",
                                  "Requests that waited for another one to the same URL",
                                  value=s.collapsed)
        yield CounterMetricFamily("cacheproxy_errors",
                                  "Requests answered with an error of the proxy's (502, 504, ...)",
                                  value=s.errors)
        yield HistogramMetricFamily(
            "cacheproxy_upstream_response_seconds",
            "Time from sending a request upstream to its response head",
            buckets=_cumulative(LATENCY_BUCKETS, s.upstream_counts), sum_value=s.upstream_sum)
        entries, held, max_bytes, evictions = s.store
        yield GaugeMetricFamily("cacheproxy_store_entries", "Responses stored", value=entries)
        yield GaugeMetricFamily("cacheproxy_store_bytes", "Bytes the store holds (accounted)",
                                value=held)
        yield GaugeMetricFamily("cacheproxy_store_max_bytes", "The store's capacity",
                                value=max_bytes)
        yield CounterMetricFamily("cacheproxy_store_evictions",
                                  "Responses evicted to make room", value=evictions)
        yield from _connections(s)
        yield GaugeMetricFamily(
            "cacheproxy_processes_counted",
            "Processes whose figures these are (--workers: each worker that answered)",
            value=s.processes)
        yield from _gc_pauses(s)
        yield from _python_gc(s)


def _connections(s: Counts) -> Iterator[Metric]:
    """nginx stub_status's "Active connections" and its accepts - handled."""
    open_now, most, refused = s.connections
    yield GaugeMetricFamily("cacheproxy_client_connections",
                            "Client connections open on the proxy listener (tunnels too)",
                            value=open_now)
    yield GaugeMetricFamily("cacheproxy_client_connections_max",
                            "The most client connections allowed (proxy.max_client_connections)",
                            value=most)
    yield CounterMetricFamily("cacheproxy_client_connections_refused",
                              "Client connections closed as they arrived, at that limit",
                              value=refused)


def _cumulative(bounds: tuple[float, ...] | list[float], counts: list[int]
                ) -> list[tuple[str, float]]:
    cumulative, buckets = 0, []
    for bound, n in zip((*map(str, bounds), "+Inf"), counts, strict=True):
        cumulative += n
        buckets.append((bound, cumulative))
    return buckets


def _gc_pauses(s: Counts) -> Iterator[Metric]:
    pauses = HistogramMetricFamily(
        "cacheproxy_gc_pause_seconds",
        "How long each collection of CPython's garbage collector stopped this process",
        labels=["generation"])
    longest = GaugeMetricFamily(
        "cacheproxy_gc_longest_pause_seconds",
        "The longest collector pause since this process started", labels=["generation"])
    for generation, counts in enumerate(s.gc_counts):
        pauses.add_metric([str(generation)], _cumulative(GC_BUCKETS, counts),
                          s.gc_sums[generation])
        longest.add_metric([str(generation)], s.gc_longest[generation])
    yield pauses
    yield longest
    yield GaugeMetricFamily(
        "cacheproxy_gc_frozen_objects",
        "Objects made at start that the collector no longer walks (gc.freeze)",
        value=s.gc_frozen)


def _python_gc(s: Counts) -> Iterator[Metric]:
    """prometheus_client's GCCollector's families, from Counts (summed over workers)."""
    collected = CounterMetricFamily("python_gc_objects_collected",
                                    "Objects collected during gc", labels=["generation"])
    uncollectable = CounterMetricFamily("python_gc_objects_uncollectable",
                                        "Uncollectable objects found during GC",
                                        labels=["generation"])
    # python_gc_collections_total{generation="2"}: how often the collector stopped the
    # process to walk every tracked object (what the store keeps untracked, untracked.py).
    collections = CounterMetricFamily("python_gc_collections",
                                      "Number of times this generation was collected",
                                      labels=["generation"])
    for generation, (runs, found, stuck) in enumerate(s.python_gc):
        collected.add_metric([str(generation)], found)
        uncollectable.add_metric([str(generation)], stuck)
        collections.add_metric([str(generation)], runs)
    yield collected
    yield uncollectable
    yield collections


def metrics_text(counts: Counts, routes: tuple[str, ...] = ()) -> tuple[bytes, str]:
    """The exposition; routes: the configured routes' names (policies/routes.py)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(counts, routes))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
