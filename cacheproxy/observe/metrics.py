"""/metrics in the Prometheus text format, read from Stats at scrape time."""

from __future__ import annotations

import gc
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from cacheproxy.observe.gc_pauses import BUCKETS as GC_BUCKETS
from cacheproxy.observe.gc_pauses import PAUSES
from cacheproxy.observe.stats import LATENCY_BUCKETS, Stats
from cacheproxy.store.base import StoreStats


class _Collector:
    def __init__(self, stats: Stats, store: StoreStats) -> None:
        self.stats = stats
        self.store = store

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        requests = CounterMetricFamily(
            "cacheproxy_requests", "Requests answered, by cache status and route",
            labels=["cache", "route"])
        for (route, cache), n in sorted(s.by_route_cache.items()):
            requests.add_metric([cache, route], n)
        yield requests
        sent = CounterMetricFamily(
            "cacheproxy_response_body_bytes", "Body bytes sent to clients, by where they came from",
            labels=["source"])
        sent.add_metric(["cache"], s.bytes_from_cache)
        sent.add_metric(["origin"], s.bytes_from_origin)
        yield sent
        yield CounterMetricFamily("cacheproxy_collapsed_requests",
                                  "Requests that waited for another one to the same URL",
                                  value=s.collapsed)
        yield CounterMetricFamily("cacheproxy_errors",
                                  "Requests answered with an error of the proxy's (502, 504, ...)",
                                  value=s.errors)
        cumulative, buckets = 0, []
        for bound, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), s.upstream_counts, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "cacheproxy_upstream_response_seconds",
            "Time from sending a request upstream to its response head",
            buckets=buckets, sum_value=s.upstream_sum)
        yield GaugeMetricFamily("cacheproxy_store_entries", "Responses stored",
                                value=self.store.entries)
        yield GaugeMetricFamily("cacheproxy_store_bytes", "Bytes the store holds (accounted)",
                                value=self.store.bytes)
        yield GaugeMetricFamily("cacheproxy_store_max_bytes", "The store's capacity",
                                value=self.store.max_bytes)
        yield CounterMetricFamily("cacheproxy_store_evictions",
                                  "Responses evicted to make room", value=self.store.evictions)
        yield from _gc_pauses()


def _gc_pauses() -> Iterator[Metric]:
    pauses = HistogramMetricFamily(
        "cacheproxy_gc_pause_seconds",
        "How long each collection of CPython's garbage collector stopped this process",
        labels=["generation"])
    longest = GaugeMetricFamily(
        "cacheproxy_gc_longest_pause_seconds",
        "The longest collector pause since this process started", labels=["generation"])
    for generation, counts in enumerate(PAUSES.counts):
        cumulative, buckets = 0, []
        for bound, n in zip((*map(str, GC_BUCKETS), "+Inf"), counts, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        pauses.add_metric([str(generation)], buckets, PAUSES.sums[generation])
        longest.add_metric([str(generation)], PAUSES.longest[generation])
    yield pauses
    yield longest
    yield GaugeMetricFamily(
        "cacheproxy_gc_frozen_objects",
        "Objects made at start that the collector no longer walks (gc.freeze)",
        value=gc.get_freeze_count())


def metrics_text(stats: Stats, store: StoreStats) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats, store))  # type: ignore[arg-type]
    # python_gc_collections_total{generation="2"}: how often the collector stopped the
    # process to walk every tracked object (what the store keeps untracked, untracked.py).
    GCCollector(registry=registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
