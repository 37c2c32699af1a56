"""One place where a finished request becomes a log line, counters and metrics.

It is aiohttp's access-log hook (called once the response has gone out), so every
request is logged: those the proxy's handler answered (which leave their Outcome on
the request), the admin API's, and those aiohttp's HTTP parser refused (400) before
any handler ran."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from cacheproxy.config import LogConfig
from cacheproxy.observe.outcome import OUTCOME, Outcome
from cacheproxy.observe.record import LogRecord, to_json, to_text
from cacheproxy.observe.sink import LogSink
from cacheproxy.observe.stats import Stats
from cacheproxy.policies.referer import redact


class Observer:
    def __init__(self, config: LogConfig, started: float,
                 admin_paths: tuple[str, ...] = ()) -> None:
        self.stats = Stats(started)
        self.admin_paths = admin_paths  # logged for the audit trail, not counted as traffic
        self.format = to_text if config.format == "text" else to_json
        self.sink: LogSink | None = None if config.format == "off" else LogSink(config.path)

    def runner_args(self) -> dict[str, Any]:
        """What an AppRunner needs to call record() for every request."""
        observer = self

        class RequestLog(AbstractAccessLogger):
            def log(self, request: Any, response: web.StreamResponse, duration: float) -> None:
                observer.log_request(request, response, duration)

        return {"access_log_class": RequestLog,
                "access_log": logging.getLogger("cacheproxy.requests")}

    def log_request(self, request: Any, response: web.StreamResponse, duration: float
                    ) -> None:
        outcome = request.get(OUTCOME)
        if outcome is not None:
            self.record(request, response, outcome, duration)
            return
        # The admin API, or a request the HTTP parser refused.
        admin = request.path.startswith(self.admin_paths)
        outcome = Outcome(status=_unhandled_status(request, response))
        if admin:  # no query logged: a dashboard URL may carry a token
            outcome.route, outcome.target = "admin", request.path
        self.record(request, response, outcome, duration, counted=not admin)

    def record(
        self, request: web.BaseRequest, response: web.StreamResponse, outcome: Outcome,
        duration: float, counted: bool = True,
    ) -> None:
        if outcome.started:  # the loop clock counts whole milliseconds (uvloop): finer here
            duration = time.perf_counter() - outcome.started
        if isinstance(response, web.Response):  # made here: the body is known
            body = response.body
            sent = isinstance(body, bytes) and request.method != "HEAD" \
                and response.status not in (204, 304)
            outcome.bytes_sent = len(body) if sent else 0  # type: ignore[arg-type]
        h = request.headers
        version = request.version
        record = LogRecord(
            time=time.time() - duration, client=request.remote or "-", method=request.method,
            host=outcome.host or h.get("Host", "-"),
            path=redact(outcome.target or request.raw_path, outcome.secrets) or "-",
            status=response.status,
            cache=outcome.status, bytes=outcome.bytes_sent,
            total_ms=round(duration * 1000, 3),
            age=None if outcome.age is None else int(outcome.age),
            ttl=None if outcome.ttl is None else int(outcome.ttl // 1),
            upstream_status=outcome.fwd_status,
            upstream_ms=None if outcome.upstream_ms is None else round(outcome.upstream_ms, 3),
            collapsed=outcome.collapsed, route=outcome.route, policy=outcome.policy,
            protocol=f"HTTP/{version.major}.{version.minor}",
            referer=redact(h.get("Referer"), outcome.secrets), user_agent=h.get("User-Agent"),
            cache_status=outcome.final_cache_status(), bytes_in=outcome.bytes_in,
        )
        if counted:
            self.stats.add(record)
        if self.sink is not None:
            self.sink.write(self.format(record))

    def reconfigure(self, config: LogConfig) -> None:
        """SIGHUP with a changed [log]: a new sink when the path or format changed,
        else the same file reopened (logrotate). Raises OSError, keeping the old
        sink, when the new file cannot be opened."""
        old = self.sink
        if config.format == "off":
            self.sink = None
        elif old is None or old.path != config.path:
            self.sink = LogSink(config.path)  # may raise: nothing changed yet
        else:
            old.reopen()
            old = None
        self.format = to_text if config.format == "text" else to_json
        if old is not None:
            old.flush()
            # close() joins the writer thread: not on the loop.
            threading.Thread(target=old.close, name="cacheproxy-log-close", daemon=True).start()

    def reopen(self) -> None:  # SIGHUP
        if self.sink is not None:
            self.sink.reopen()

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()


def _unhandled_status(request: Any, response: web.StreamResponse) -> str:
    if response.status in (401, 403):
        return "DENIED"  # the admin API refused it
    return "ERROR" if response.status >= 400 else "BYPASS"
