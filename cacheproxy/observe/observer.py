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

_PROTOCOLS = {(1, 1): "HTTP/1.1", (1, 0): "HTTP/1.0"}  # HttpVersion is a named tuple


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
        """A request aiohttp's server answered (the admin API, or the proxy served as an
        aiohttp handler)."""
        outcome = request.get(OUTCOME)
        if isinstance(response, web.Response):  # made here: the body is known
            body = response.body
            sent = isinstance(body, bytes) and request.method != "HEAD" \
                and response.status not in (204, 304)
            if outcome is not None:
                outcome.bytes_sent = len(body) if sent else 0  # type: ignore[arg-type]
        if outcome is not None:
            self.record(request, response.status, outcome, duration)
            return
        # The admin API, or a request the HTTP parser refused.
        admin = request.path.startswith(self.admin_paths)
        outcome = Outcome(status=_unhandled_status(request, response.status))
        if admin:  # no query logged: a dashboard URL may carry a token
            outcome.route, outcome.target = "admin", request.path
        if isinstance(response, web.Response) and sent:
            outcome.bytes_sent = len(body)  # type: ignore[arg-type]
        self.record(request, response.status, outcome, duration, counted=not admin)

    def record(
        self, request: Any, status: int, outcome: Outcome, duration: float,
        counted: bool = True,
    ) -> None:
        """One line for a finished request: its counters, and the log line."""
        if outcome.started:  # the loop clock counts whole milliseconds (uvloop): finer here
            duration = time.perf_counter() - outcome.started
        h = request.headers
        version = request.version
        secrets = outcome.secrets
        age, ttl, upstream_ms = outcome.age, outcome.ttl, outcome.upstream_ms
        record = LogRecord(
            time.time() - duration, request.remote or "-", request.method,
            outcome.host or h.get("Host", "-"),
            redact(outcome.target or request.raw_path, secrets) or "-",
            status, outcome.status, outcome.bytes_sent, round(duration * 1000, 3),
            None if age is None else int(age),
            None if ttl is None else int(ttl // 1),
            outcome.fwd_status,
            None if upstream_ms is None else round(upstream_ms, 3),
            outcome.collapsed, outcome.route, outcome.policy,
            _PROTOCOLS.get(version) or f"HTTP/{version.major}.{version.minor}",
            redact(h.get("Referer"), secrets) if secrets else h.get("Referer"),
            h.get("User-Agent"), outcome.final_cache_status(), outcome.bytes_in,
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


def _unhandled_status(request: Any, status: int) -> str:
    if status in (401, 403):
        return "DENIED"  # the admin API refused it
    return "ERROR" if status >= 400 else "BYPASS"
