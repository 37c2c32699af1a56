"""One place where a finished request becomes a log line, counters and metrics."""

from __future__ import annotations

from aiohttp import web

from cacheproxy.config import LogConfig
from cacheproxy.observe.record import LogRecord, to_json, to_text
from cacheproxy.observe.sink import LogSink
from cacheproxy.observe.stats import Stats
from cacheproxy.proxy.outcome import Outcome


class Observer:
    def __init__(self, config: LogConfig, started: float) -> None:
        self.stats = Stats(started)
        self.format = to_text if config.format == "text" else to_json
        self.sink: LogSink | None = None if config.format == "off" else LogSink(config.path)

    def record(
        self, request: web.Request, response: web.StreamResponse, outcome: Outcome,
        started: float, finished: float,
    ) -> None:
        if isinstance(response, web.Response):  # made here: the body is known
            body = response.body
            outcome.bytes_sent = len(body) if isinstance(body, bytes) else 0
        h = request.headers
        version = request.version
        record = LogRecord(
            time=started, client=request.remote or "-", method=request.method,
            host=h.get("Host", "-"), path=request.raw_path, status=response.status,
            cache=outcome.status, bytes=outcome.bytes_sent,
            total_ms=round((finished - started) * 1000, 3),
            age=None if outcome.age is None else int(outcome.age),
            ttl=None if outcome.ttl is None else int(outcome.ttl // 1),
            upstream_status=outcome.fwd_status,
            upstream_ms=None if outcome.upstream_ms is None else round(outcome.upstream_ms, 3),
            collapsed=outcome.collapsed, route=outcome.route, policy=outcome.policy,
            protocol=f"HTTP/{version.major}.{version.minor}",
            referer=h.get("Referer"), user_agent=h.get("User-Agent"),
            cache_status=outcome.cache_status_sent,
        )
        self.stats.add(record)
        if self.sink is not None:
            self.sink.write(self.format(record))

    def reopen(self) -> None:
        if self.sink is not None:
            self.sink.reopen()

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
