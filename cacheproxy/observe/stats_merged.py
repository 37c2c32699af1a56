"""The stats API's snapshot of a --workers server: every worker's, merged.

With --workers each connection reaches one worker (the kernel picks), so a stats call, and
the dashboard refreshing every 2 s, showed one worker's figures and then another's:
requests, hit ratio and store fill jumped at every refresh. As /metrics sums the workers
(metrics.py), the worker a stats call reaches asks the others for their snapshot
(proxy/siblings.py) and merges them here: counters added, the chart's buckets added by
time, the last log lines of all in time order, hosts added by name. Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
from typing import Any

from cacheproxy.observe.record import HIT_STATUSES
from cacheproxy.observe.stats import HOSTS_SHOWN, RECENT_LINES, SERIES_BUCKETS

STATS = b"s"  # the question (proxy/siblings.py) whose answer is a worker's worker_answer
# What one worker answers over its channel, at most (a datagram; a few KiB is usual): past
# it, its last log lines go first (URLs of up to 8 KiB each could fill it).
MAX_ANSWER = 128 * 1024
_SUMMED = ("requests", "bytes_from_cache", "bytes_from_origin", "collapsed", "errors")
_STORE_SUMMED = ("entries", "bytes", "max_bytes", "evictions")


def worker_answer(snapshot: dict[str, Any], bytes_other: int) -> bytes:
    """A worker's snapshot for the one asking, within MAX_ANSWER. bytes_other (its error
    and refusal answers' bytes) rides along: the byte hit ratio's whole needs it."""
    answer = {"snapshot": snapshot, "bytes_other": bytes_other}
    data = json.dumps(answer, separators=(",", ":")).encode()
    for keep in (RECENT_LINES // 5, 0):
        if len(data) <= MAX_ANSWER:
            break
        answer["snapshot"] = {**snapshot, "recent": snapshot["recent"][-keep:] if keep else []}
        data = json.dumps(answer, separators=(",", ":")).encode()
    return data


def read_answer(data: bytes) -> tuple[dict[str, Any], int] | None:
    """A sibling's (snapshot, bytes_other); None when it cannot be read (another version's,
    or no answer)."""
    try:
        answer = json.loads(data)
        snapshot, other = answer["snapshot"], int(answer["bytes_other"])
    except (ValueError, TypeError, KeyError):
        return None
    return (snapshot, other) if isinstance(snapshot, dict) else None


def merged(own: tuple[dict[str, Any], int], others: list[tuple[dict[str, Any], int]],
           shared_store: bool, workers: int) -> dict[str, Any]:
    """The server's snapshot: own (the answering worker's) with the others' added. The
    store's figures are added too (each worker's own memory store), unless it is shared
    (Redis: each worker reports the same, as last read; evictions: the highest reading).
    processes_counted: own and those that answered, of `workers`."""
    every = [own, *others]
    total = dict(own[0])
    for name in _SUMMED:
        total[name] = sum(s[name] for s, _ in every)
    total["uptime_s"] = max(s["uptime_s"] for s, _ in every)  # the oldest worker's
    by_cache: dict[str, int] = {}
    for s, _ in every:
        for status, n in s["by_cache"].items():
            by_cache[status] = by_cache.get(status, 0) + n
    total["by_cache"] = by_cache
    hits = sum(by_cache.get(status, 0) for status in HIT_STATUSES)
    total["hit_ratio"] = hits / total["requests"] if total["requests"] else 0.0
    sent = total["bytes_from_cache"] + total["bytes_from_origin"] + sum(o for _, o in every)
    total["byte_hit_ratio"] = total["bytes_from_cache"] / sent if sent else 0.0
    if not shared_store:
        total["store"] = {**own[0]["store"], **{
            name: sum(s["store"][name] for s, _ in every) for name in _STORE_SUMMED}}
    else:  # Redis's evicted_keys as each worker last read it: the latest is the highest
        total["store"] = {**own[0]["store"],
                          "evictions": max(s["store"]["evictions"] for s, _ in every)}
    total["series"] = _series([s["series"] for s, _ in every])
    recent = [r for s, _ in every for r in s["recent"]]
    recent.sort(key=lambda r: r.get("time", ""))  # ISO 8601 UTC: text order is time order
    total["recent"] = recent[-RECENT_LINES:]
    total["hosts"], total["hosts_other"] = _hosts([(s["hosts"], s["hosts_other"])
                                                   for s, _ in every])
    total["processes_counted"] = len(every)
    total["workers"] = workers
    return total


def _series(each: list[list[dict[str, int]]]) -> list[dict[str, int]]:
    buckets: dict[int, list[int]] = {}
    for series in each:
        for b in series:
            bucket = buckets.setdefault(b["t"], [0, 0])
            bucket[0] += b["requests"]
            bucket[1] += b["hits"]
    return [{"t": t, "requests": n, "hits": h}
            for t, (n, h) in sorted(buckets.items())[-SERIES_BUCKETS:]]


def _add_host(into: dict[str, Any], host: dict[str, Any]) -> None:
    for name in ("requests", "bytes", "bytes_in"):
        into[name] = into.get(name, 0) + host[name]
    by_cache = into.setdefault("by_cache", {})
    for status, n in host["by_cache"].items():
        by_cache[status] = by_cache.get(status, 0) + n


def _hosts(each: list[tuple[list[dict[str, Any]], dict[str, Any]]]
           ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The busiest HOSTS_SHOWN of all workers' lists, and the rest summed: together they
    still count every request (a host one worker shows and another folded into its
    `hosts_other` is shown with the first's figures; the second's stay in the rest)."""
    hosts: dict[str, dict[str, Any]] = {}
    other: dict[str, Any] = {"requests": 0, "bytes": 0, "bytes_in": 0, "by_cache": {}}
    for listed, rest in each:
        for host in listed:
            _add_host(hosts.setdefault(host["host"], {"host": host["host"]}), host)
        _add_host(other, rest)
    ranked = sorted(hosts.values(), key=lambda h: (-h["requests"], h["host"]))
    for host in ranked[HOSTS_SHOWN:]:
        _add_host(other, host)
    return ranked[:HOSTS_SHOWN], other
