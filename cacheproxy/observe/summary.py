"""`cacheproxy logs`: a summary of request-log records, in memory bounded whatever the log.

Sans I/O: records come in through `Summary.add`, a JSON-able dict comes out of `report`,
and `render` turns it into the terminal view. What is counted, and how:

- hits are the statuses in HIT_STATUSES (answered from storage: HIT, STALE, REVALIDATED,
  UPDATING); misses are MISS and EXPIRED (the origin sent a new body for a cacheable
  request). BYPASS, ERROR and DENIED are neither, but count as requests.
- hit ratio = hits / requests; byte hit ratio = bytes from storage / all bytes sent.
- bytes from the origin = bytes sent for MISS, EXPIRED and BYPASS answers the origin
  sent (record.from_origin: with an upstream status); "other" bytes are the proxy's own
  answers (ERROR, DENIED, a PURGE's); "tunnels" those a TUNNEL passed through to its
  client. All of them are "sent", the whole of the byte hit ratio. Bytes saved = bytes
  from storage: what the origin did not have to send.
- latency percentiles (of total_ms) come from a log-bucketed histogram: ≤ 1 % relative
  error, fixed size (LatencyHistogram).
- the top URLs (host + path) by misses and by bytes from the origin come from a bounded
  frequent-items sketch (FrequentItems): 10 000 counters, each count low by at most
  total / 10 000, and exact while fewer than 20 000 distinct URLs have been seen.
- admin API calls (route "admin": dashboard polls, scrapes, purges) are not traffic: as
  in the stats API, they are left out, only counted apart (`lines.admin`).
"""

from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cacheproxy.observe.record import (
    CACHE_STATUSES,
    HIT_STATUSES,
    LogRecord,
    from_origin,
    iso_time,
    parse_line,
)

MISS_STATUSES = frozenset({"MISS", "EXPIRED"})
PERCENTILES = (50, 95, 99)
TOP_COUNTERS = 10_000
MAX_URL_KEY = 512  # longer host + path keys are cut, so the sketches stay bounded in bytes


class LatencyHistogram:
    """Milliseconds in geometric buckets (DDSketch's mapping): a value v in bucket i satisfies
    g^(i-1) < v ≤ g^i, and reporting 2g^i/(g+1) is within ε = (g-1)/(g+1) of v. With ε = 1 %
    and 1 µs .. 10^7 ms (2.8 h) that is ~1 150 counters; values outside are clamped there.
    Percentiles are nearest-rank: the value of the ceil(q·n)-th smallest sample, ±1 %."""

    RELATIVE_ERROR = 0.01
    LOW_MS = 1e-3
    HIGH_MS = 1e7
    _GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
    _INV_LOG_GAMMA = 1 / math.log(_GAMMA)
    _OFFSET = math.ceil(math.log(LOW_MS) * _INV_LOG_GAMMA)
    _SIZE = math.ceil(math.log(HIGH_MS) * _INV_LOG_GAMMA) - _OFFSET + 1

    __slots__ = ("count", "counts", "max", "min")

    def __init__(self) -> None:
        self.counts = [0] * self._SIZE
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def add(self, ms: float) -> None:
        if ms < self.LOW_MS:
            ms = self.LOW_MS
        elif ms > self.HIGH_MS:
            ms = self.HIGH_MS
        self.counts[math.ceil(math.log(ms) * self._INV_LOG_GAMMA) - self._OFFSET] += 1
        self.count += 1
        if ms < self.min:
            self.min = ms
        if ms > self.max:
            self.max = ms

    @classmethod
    def merged(cls, *parts: LatencyHistogram) -> LatencyHistogram:
        out = cls()
        out.counts = [sum(column) for column in zip(*(p.counts for p in parts), strict=True)]
        out.count = sum(p.count for p in parts)
        out.min = min(p.min for p in parts)
        out.max = max(p.max for p in parts)
        return out

    def percentile(self, q: float) -> float | None:
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                estimate = 2 * self._GAMMA ** (i + self._OFFSET) / (self._GAMMA + 1)
                # The true value lies in [min, max]: clamping can only bring the estimate closer.
                return min(max(estimate, self.min), self.max)
        return self.max  # unreachable: the counts add up to count

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count}
        for q in PERCENTILES:
            value = self.percentile(q)
            out[f"p{q}"] = None if value is None else round(value, 3)
        out["max"] = round(self.max, 3) if self.count else None
        return out


class FrequentItems:
    """Heaviest keys of a weighted stream in bounded memory: Misra-Gries with batched
    decrements (as in Apache DataSketches' frequent items). Up to 2k counters are kept; when
    one more is needed, the k-th largest count c is subtracted from all and those left at
    zero or below go. Each purge removes at least k·c of the total weight W, so the sum of
    all subtractions, `undercount`, is at most W/k: a kept count is low by at most that, and
    any key whose true weight exceeds it is kept. Nothing is lost before 2k distinct keys."""

    __slots__ = ("counts", "k", "undercount")

    def __init__(self, k: int = TOP_COUNTERS) -> None:
        self.k = k
        self.counts: dict[str, int] = {}
        self.undercount = 0

    def add(self, key: str, weight: int = 1) -> None:
        if weight <= 0:
            return
        counts = self.counts
        if key in counts:
            counts[key] += weight
            return
        if len(counts) >= 2 * self.k:
            self._purge()
        counts[key] = weight

    def _purge(self) -> None:
        cut = sorted(self.counts.values(), reverse=True)[self.k - 1]
        self.undercount += cut
        self.counts = {key: n - cut for key, n in self.counts.items() if n > cut}

    def top(self, n: int) -> list[tuple[str, int]]:
        return heapq.nsmallest(n, self.counts.items(), key=lambda item: (-item[1], item[0]))


class Summary:
    """The `cacheproxy logs` accumulator: `add_line` parses, filters and counts a line;
    `add` takes a traffic record (not an admin call) already known to match."""

    def __init__(self, keep: RecordFilter | None = None,
                 top_counters: int = TOP_COUNTERS) -> None:
        self.keep = keep or RecordFilter()
        self.lines = self.malformed = self.filtered_out = self.requests = 0
        self.admin = 0  # admin API calls: logged, but not traffic
        self.first: float | None = None
        self.last: float | None = None
        self.by_cache = dict.fromkeys(CACHE_STATUSES, 0)
        self.by_class = dict.fromkeys(("1xx", "2xx", "3xx", "4xx", "5xx", "other"), 0)
        self.bytes_cache = self.bytes_origin = self.bytes_other = self.bytes_tunnels = 0
        # "all" is their sum, made when reporting: one histogram update per record.
        self.latency = {name: LatencyHistogram() for name in ("hits", "misses", "other")}
        self.top_misses = FrequentItems(top_counters)
        self.top_origin_bytes = FrequentItems(top_counters)

    def add_line(self, line: str | None) -> None:
        """One line of the log; None stands for a line too long to read."""
        self.lines += 1
        record = None if line is None else parse_line(line)
        if record is None:  # parse_line checked every field the summary relies on
            self.malformed += 1
        elif record.route == "admin":  # logged as an audit trail, not traffic
            self.admin += 1
        elif self.keep.matches(record):
            self.add(record)
        else:
            self.filtered_out += 1

    def add(self, r: LogRecord) -> None:
        self.requests += 1
        if self.first is None or r.time < self.first:
            self.first = r.time
        if self.last is None or r.time > self.last:
            self.last = r.time
        cache = r.cache
        self.by_cache[cache] += 1
        klass = f"{r.status // 100}xx" if 100 <= r.status <= 599 else "other"
        self.by_class[klass] += 1
        if cache in HIT_STATUSES:
            self.bytes_cache += r.bytes
            self.latency["hits"].add(r.total_ms)
            return
        url = None
        if cache in MISS_STATUSES:
            self.latency["misses"].add(r.total_ms)
            url = url_key(r)
            self.top_misses.add(url)
        else:
            self.latency["other"].add(r.total_ms)
        if from_origin(r):  # (not a PURGE's answer, which the proxy made)
            self.bytes_origin += r.bytes
            self.top_origin_bytes.add(url or url_key(r), r.bytes)
        elif cache == "TUNNEL":  # passed through: neither the cache's nor an error
            self.bytes_tunnels += r.bytes
        else:
            self.bytes_other += r.bytes

    def report(self, top: int = 10) -> dict[str, Any]:
        """Everything the summary knows, as one JSON-able dict (the `--json` output)."""
        hits = sum(self.by_cache[s] for s in HIT_STATUSES)
        sent = self.bytes_cache + self.bytes_origin + self.bytes_other + self.bytes_tunnels
        span = None if self.first is None or self.last is None else self.last - self.first
        return {
            "period": {
                "first": None if self.first is None else iso_time(self.first),
                "last": None if self.last is None else iso_time(self.last),
                "seconds": None if span is None else round(span, 3),
            },
            "filters": self.keep.describe(),
            "lines": {"read": self.lines, "malformed": self.malformed,
                      "filtered_out": self.filtered_out, "admin": self.admin},
            "requests": self.requests,
            "hit_ratio": {"requests": _ratio(hits, self.requests),
                          "bytes": _ratio(self.bytes_cache, sent)},
            "cache": dict(self.by_cache),
            "http_status": dict(self.by_class),
            "bytes": {"sent": sent, "from_cache": self.bytes_cache,
                      "from_origin": self.bytes_origin, "other": self.bytes_other,
                      "tunnels": self.bytes_tunnels, "saved": self.bytes_cache},
            "latency_ms": {"hits": self.latency["hits"].report(),
                           "misses": self.latency["misses"].report(),
                           "all": LatencyHistogram.merged(*self.latency.values()).report()},
            "top": {
                "by_misses": [{"url": u, "misses": n} for u, n in self.top_misses.top(top)],
                "by_origin_bytes": [{"url": u, "bytes": n}
                                    for u, n in self.top_origin_bytes.top(top)],
                # A listed count is at most this much below the truth (0: exact).
                "max_undercount": {"misses": self.top_misses.undercount,
                                   "origin_bytes": self.top_origin_bytes.undercount},
            },
        }


def url_key(r: LogRecord) -> str:
    key = r.host + r.path
    return key if len(key) <= MAX_URL_KEY else key[: MAX_URL_KEY - 1] + "…"


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


# --- filters ------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_HTTP_STATUS = re.compile(r"[1-5](?:\d\d|xx)", re.IGNORECASE)


def parse_when(text: str, now: float) -> float:
    """A --since/--until value as epoch seconds: ISO 8601 (a date alone is its midnight; no
    offset means UTC, as the log's times are) or a duration ago: 30s, 15m, 2h, 1d, 1w."""
    text = text.strip()
    try:
        if m := _DURATION.fullmatch(text):
            t = now - float(m[1]) * _UNIT_SECONDS[m[2]]
        else:
            when = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
            t = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
        iso_time(t)  # the report shows it: it must be within years 1..9999 UTC
    except (ValueError, OverflowError):
        raise ValueError(f"not a time: {text!r} (use ISO 8601, e.g. 2026-11-23T17:00:00Z, "
                         "or a duration ago, e.g. 15m, 2h, 1d)") from None
    return t


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Which records the summary counts: all of the given conditions hold. Times are
    half-open, since <= time < until. `http` holds status patterns ("200", "5xx") and
    `cache` cache statuses: a record matches one of each given kind."""

    since: float | None = None
    until: float | None = None
    host: str | None = None    # exact, case-insensitive (as hosts are)
    path: str | None = None    # a prefix of path + query
    http: tuple[str, ...] = ()
    cache: frozenset[str] = frozenset()

    def matches(self, r: LogRecord) -> bool:
        if self.since is not None and r.time < self.since:
            return False
        if self.until is not None and r.time >= self.until:
            return False
        if self.host is not None and r.host.lower() != self.host:
            return False
        if self.path is not None and not r.path.startswith(self.path):
            return False
        if self.cache and r.cache not in self.cache:
            return False
        return not self.http or any(_status_matches(p, r.status) for p in self.http)

    def describe(self) -> dict[str, Any]:
        return {
            "since": None if self.since is None else iso_time(self.since),
            "until": None if self.until is None else iso_time(self.until),
            "host": self.host, "path": self.path,
            "status": [*self.http, *sorted(self.cache)],
        }


def _status_matches(pattern: str, status: int) -> bool:
    if pattern.endswith("xx"):
        return status // 100 == int(pattern[0])
    return status == int(pattern)


def parse_statuses(values: list[str]) -> tuple[tuple[str, ...], frozenset[str]]:
    """--status values (repeatable, comma-separated): three digits or a class like 5xx is an
    HTTP status; a word is a cache status (any case). Raises ValueError naming a bad one."""
    http: list[str] = []
    cache: set[str] = set()
    for value in (v.strip() for item in values for v in item.split(",")):
        if _HTTP_STATUS.fullmatch(value):
            http.append(value.lower())
        elif value.upper() in CACHE_STATUSES:
            cache.add(value.upper())
        else:
            raise ValueError(f"not an HTTP status (200, 5xx) or a cache status "
                             f"({', '.join(CACHE_STATUSES)}): {value!r}")
    return tuple(http), frozenset(cache)


def make_filter(*, since: str | None = None, until: str | None = None, host: str | None = None,
                path: str | None = None, status: list[str] | None = None,
                now: float) -> RecordFilter:
    """The filter from the command's option strings; ValueError says which one is wrong."""
    http, cache = parse_statuses(status or [])
    return RecordFilter(
        since=None if since is None else parse_when(since, now),
        until=None if until is None else parse_when(until, now),
        host=None if host is None else host.lower(), path=path, http=http, cache=cache,
    )


# --- the terminal view --------------------------------------------------------------------------

def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))  # as the whole-second times beside it


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f} %"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value >= 100 else f"{value:.2f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# What a terminal would act on or reorder (C0, DEL, C1, line separators, bidirectional
# controls): a URL read back from a log holds what its escapes stood for, and the report
# goes to the operator's terminal, so they are shown escaped again, as the log wrote them.
_UNSHOWN = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _shown(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text
    return _UNSHOWN.sub(lambda m: f"\\x{ord(m[0]):02X}" if ord(m[0]) < 0x100
                        else f"\\u{ord(m[0]):04X}", text)


def render(report: dict[str, Any], top: int = 10, width: int = 100) -> str:
    """The human view of a report: one screen, aligned columns, URLs cut to fit `width`."""
    lines = _render_head(report)
    requests = report["requests"]
    lines += ["", f"{'cache status':<14}{'requests':>13}{'share':>9}"]
    for status, n in report["cache"].items():
        kind = "  hit" if status in HIT_STATUSES else "  miss" if status in MISS_STATUSES else ""
        lines.append(f"{status:<14}{n:>13,}{_pct(n / requests if requests else None):>9}{kind}")
    lines += ["", f"{'latency ms':<14}{'requests':>13}{'p50':>9}{'p95':>9}{'p99':>9}"]
    for name, h in report["latency_ms"].items():
        lines.append(f"{name:<14}{h['count']:>13,}"
                     + "".join(f"{_ms(h[f'p{q}']):>9}" for q in PERCENTILES))
    tops = report["top"]
    urls = [_shown(item["url"])
            for items in (tops["by_misses"], tops["by_origin_bytes"]) for item in items]
    # As wide as the longest URL shown, within `width` beside a 12-column figure.
    url_width = max(24, min(width - 16, max(map(len, urls), default=0)))
    for title, items, field, sketch, fmt in (
        ("by misses", tops["by_misses"], "misses", "misses", lambda n: f"{n:,}"),
        ("by bytes from the origin", tops["by_origin_bytes"], "bytes", "origin_bytes",
         human_bytes),
    ):
        lines += ["", f"top {top} URLs {title}"]
        if low := tops["max_undercount"][sketch]:
            lines[-1] += f"  (a figure may be low by up to {fmt(low)})"
        lines += [f"  {_cut(_shown(item['url']), url_width):<{url_width}}"
                  f"{fmt(item[field]):>12}"
                  for item in items] or ["  (none)"]
    return "\n".join(lines) + "\n"


def _render_head(report: dict[str, Any]) -> list[str]:
    period, counts, sent = report["period"], report["lines"], report["bytes"]
    if period["first"] is None:
        covered = "no requests"
    else:
        # Whole seconds are enough here; --json has the milliseconds.
        covered = (f"{period['first'][:19].replace('T', ' ')} .. "
                   f"{period['last'][:19].replace('T', ' ')} UTC  "
                   f"({human_duration(period['seconds'])})")
    ratio = report["hit_ratio"]
    admin = f", admin calls {n:,}" if (n := counts["admin"]) else ""  # most logs have none
    tunnels = f", tunnels {human_bytes(n)}" if (n := sent["tunnels"]) else ""  # (forward)
    return [
        f"{'period':<14}{covered}",
        f"{'requests':<14}{report['requests']:,}   (lines {counts['read']:,}, malformed "
        f"{counts['malformed']:,}, filtered out {counts['filtered_out']:,}{admin})",
        f"{'hit ratio':<14}{_pct(ratio['requests'])} of requests, "
        f"{_pct(ratio['bytes'])} of bytes",
        f"{'bytes sent':<14}{human_bytes(sent['sent'])}:  from cache "
        f"{human_bytes(sent['from_cache'])}, from origin {human_bytes(sent['from_origin'])}, "
        f"errors/denied {human_bytes(sent['other'])}{tunnels}",
        f"{'bytes saved':<14}{human_bytes(sent['saved'])}",
    ]
