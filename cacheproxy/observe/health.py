"""Liveness and readiness, for Docker's HEALTHCHECK, compose's depends_on and load balancers.

- `healthz`: the process runs its event loop and answers: 200, nothing checked beyond that.
- `readyz`: every upstream accepts a TCP connection and the store answers: 200, else 503
  with what failed. A proxy whose Redis is down still serves (uncached, from the origin), so
  point restart-on-failure probes at healthz, never at readyz. While draining (SIGTERM),
  readyz answers 503.

Both are unauthenticated (a probe carries no token) and say nothing a client could abuse:
no URLs, only check names and up/down. Results are kept for a second so a probe storm costs
one connect per upstream per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from yarl import URL

CHECK_TIMEOUT = 2.0   # seconds for one upstream connect or store ping
CACHE_SECONDS = 1.0   # a result is reused this long

_NO_STORE = {"Cache-Control": "no-store"}


async def upstream_reachable(url: str, timeout: float = CHECK_TIMEOUT) -> bool:
    """A TCP connection to the upstream's host and port opens (TLS is not attempted:
    the connect is what tells "down" from "up")."""
    return await upstream_problem(url, timeout) is None


async def upstream_problem(url: str, timeout: float = CHECK_TIMEOUT) -> str | None:
    """Why no TCP connection to the upstream opens (a refused connection, a name that does
    not resolve, no answer in `timeout` seconds), or None when one does."""
    parsed = URL(url)
    host, port = parsed.host, parsed.port
    if host is None or port is None:
        return "the URL has no host or port"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return f"no connection to {host}:{port} within {timeout:g} s"
    except socket.gaierror as exc:
        return f"cannot resolve the host {host!r} ({exc.strerror or exc})"
    except OSError as exc:
        return f"{host}:{port}: {os.strerror(exc.errno).lower() if exc.errno else exc}"
    writer.close()
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(writer.wait_closed(), timeout)
    return None


class Health:
    def __init__(
        self,
        upstreams: Callable[[], tuple[str, ...]],
        store_ping: Callable[[], Awaitable[bool]] | None,
    ) -> None:
        self.upstreams = upstreams  # read on every check: a reload may change them
        self.store_ping = store_ping
        self.draining = False
        self._last: tuple[float, dict[str, Any]] | None = None
        self._running: asyncio.Future[dict[str, Any]] | None = None

    def routes(self, app: web.Application, prefix: str) -> None:
        app.router.add_get(prefix + "healthz", self.healthz)
        app.router.add_get(prefix + "readyz", self.readyz)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"alive": True}, headers=_NO_STORE)

    async def readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"ready": False, "draining": True}, status=503,
                                     headers=_NO_STORE)
        report = await self.check()
        return web.json_response(report, status=200 if report["ready"] else 503,
                                 headers=_NO_STORE)

    async def check(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < CACHE_SECONDS:
            return self._last[1]
        if self._running is None:  # concurrent probes share one round of checks
            self._running = asyncio.ensure_future(self._check())
        running = self._running
        try:
            report = await asyncio.shield(running)
        finally:
            if running.done() and self._running is running:
                self._running = None
        self._last = (time.monotonic(), report)
        return report

    async def _check(self) -> dict[str, Any]:
        upstreams = self.upstreams()
        results = await asyncio.gather(*(upstream_reachable(u) for u in upstreams))
        checks: dict[str, Any] = {
            "upstreams": {f"upstream[{i}]": "up" if ok else "down"
                          for i, ok in enumerate(results)},
        }
        store_up = True
        if self.store_ping is not None:
            try:
                store_up = await asyncio.wait_for(self.store_ping(), CHECK_TIMEOUT)
            except Exception:  # whatever the backend raises, it is not answering
                store_up = False
        checks["store"] = "up" if store_up else "down"
        return {"ready": all(results) and store_up, "checks": checks}
