"""Review of `cacheproxy serve --workers N` as operators use it: what each worker caches
and what reaches every worker (purges, clears, invalidations), a worker killed and
restarted, the parent's relaying, /metrics and the admin API with N workers. Each test runs
the real `cacheproxy serve --workers 2` in front of an aiohttp origin of the test's own;
the kernel (SO_REUSEPORT) picks the worker of each new connection, so the tests open a new
connection per request until both workers have answered."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from processes import clean_env, start_serve, stop

from cacheproxy.proxy.siblings import MAX_MESSAGE, Relay
from cacheproxy.store.siblings import FORGET_ALL, FORGET_KEY

# New connections tried before concluding that a worker never answers as expected: two
# workers, each picked with probability 1/2: missing one in 200 is a 2**-199 event.
TRIES = 200


async def versioned_origin(origin: Any) -> tuple[Any, dict[str, int]]:
    """Any path, GET: "v<n>" fresh for 10 minutes, n counting the origin's answers; POST:
    204 (an unsafe method's success: RFC 9111 §4.4 invalidates the URL)."""
    state = {"n": 0}

    async def get(request: web.Request) -> web.Response:
        state["n"] += 1
        return web.Response(text=f"v{state['n']}", headers={"Cache-Control": "max-age=600"})

    async def post(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/{tail:.*}", get)
    app.router.add_post("/{tail:.*}", post)
    return await origin(app), state


def fill_until_owed(relay: Relay, ends: list[Any]) -> int:
    """Worker 0 (its end ends[0]) purges until worker 1's channel is full, so that a clear
    is owed to it; the purges sent."""
    ends[1].setblocking(False)
    sent = 0
    while 1 not in relay.owed:
        ends[0].send(FORGET_KEY + b"http://app/%d" % sent)
        sent += 1
        relay.pass_on()
        assert sent < 100_000
    return sent


async def spread_misses(base: str, prefix: str, requests: int = 40) -> int:
    """GETs of four paths, each on a connection of its own (the kernel spreads them over
    the workers); the misses among them (each worker fetches each path once)."""
    misses = 0
    for i in range(requests):
        cache, _ = await fresh_get(base, f"{prefix}{i % 4}")
        misses += cache == "MISS"
    return misses


async def fresh_get(base: str, path: str) -> tuple[str, str]:
    """GET on a connection of its own (the kernel picks the worker): (X-Cache, body)."""
    async with aiohttp.ClientSession() as http, http.get(base + path) as resp:
        assert resp.status == 200
        return resp.headers["X-Cache"], await resp.text()


async def both_workers_store(base: str, path: str) -> set[str]:
    """Requests until two misses were seen (each worker fetched and stored path once);
    the versions they stored."""
    stored: set[str] = set()
    for _ in range(TRIES):
        cache, body = await fresh_get(base, path)
        if cache == "MISS":
            stored.add(body)
        if len(stored) == 2:
            return stored
    raise AssertionError(f"only {stored} stored: did both workers answer?")


async def both_workers_fetch_again(base: str, path: str, old: set[str]) -> list[str]:
    """After a purge: requests until each worker has fetched path again (two new versions
    seen). Every body seen, in order; fails if a worker goes on serving an old one."""
    seen: list[str] = []
    for _ in range(TRIES):
        _, body = await fresh_get(base, path)
        seen.append(body)
        if len(set(seen) - old) == 2:
            return seen
    raise AssertionError(f"a worker still serves what was purged: {seen[-20:]}")


async def _forget(base: str, how: str) -> None:
    async with aiohttp.ClientSession() as http:
        if how == "purge?url":
            req = http.post(base + "/_cacheproxy/purge?url=/page")
        elif how == "purge?prefix":
            req = http.post(base + "/_cacheproxy/purge?prefix=/pa")
        elif how == "clear":
            req = http.post(base + "/_cacheproxy/clear")
        elif how == "PURGE":
            req = http.request("PURGE", base + "/page")
        else:  # RFC 9111 §4.4: a POST's 2xx invalidates the URL
            req = http.post(base + "/page", data=b"x")
        async with req as resp:
            assert resp.status in (200, 204), (how, resp.status, await resp.text())


@pytest.mark.parametrize("how", ["purge?url", "purge?prefix", "clear", "PURGE", "POST"])
async def test_a_purge_or_invalidation_reaches_every_workers_memory_store(
        origin: Any, tmp_path: Any, how: str) -> None:
    """With --workers N and the memory store (the default), each worker caches on its own,
    and a purge, a clear, a PURGE or an invalidation by an unsafe method (RFC 9111 §4.4)
    acted only on the worker whose connection it came on. What a user saw: after
    `curl -X POST .../_cacheproxy/purge?url=/page` answered {"purged": 1}, the other
    workers went on serving the purged page (X-Cache: HIT, the old body) for its whole
    freshness lifetime, about one request in two with --workers 2; after a POST that
    changed /page, half the clients kept reading the old one. nginx's workers share one
    cache zone (a purge is every worker's); our Redis store publishes its purges to every
    process. Now each worker tells the others what its memory store forgets, through the
    supervisor. Severity: high (an operator's purge silently half done)."""
    up, _ = await versioned_origin(origin)
    proc, port = await start_serve("--upstream", str(up.make_url("")), "--workers", "2",
                                   cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        old = await both_workers_store(base, "/page")
        await _forget(base, how)
        seen = await both_workers_fetch_again(base, "/page", old)
        for _ in range(20):  # and none of them answers the old one again
            seen.append((await fresh_get(base, "/page"))[1])
        assert not old & set(seen[-20:]), seen
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err, err


def _workers_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(p) for p in children.read().split()]


async def test_a_restarted_worker_still_hears_and_tells_purges(
        origin: Any, tmp_path: Any) -> None:
    """The channel between workers survives a worker's death: one killed by SIGKILL (an
    OOM kill) is restarted with a channel of its own, so the purges it answers reach the
    other and the other's reach it. Severity: high, as the test above (each restart would
    otherwise leave one worker out of every purge)."""
    up, _ = await versioned_origin(origin)
    proc, port = await start_serve("--upstream", str(up.make_url("")), "--workers", "2",
                                   cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        workers = _workers_of(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = _workers_of(proc.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the killed worker was not restarted")
        # (the new one listens once it answers: both_workers_store sees two misses)
        old = await both_workers_store(base, "/page")
        await _forget(base, "purge?url")
        await both_workers_fetch_again(base, "/page", old)
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err, err


def test_a_full_channel_owes_a_worker_a_clear_never_loses_a_purge() -> None:
    """The supervisor never blocks on a worker too busy to read its channel: a purge that
    finds no room there becomes "forget everything", sent once there is room, so that
    worker empties its cache rather than keep what was purged. Severity: medium (a busy
    worker under a burst of POSTs, each an invalidation, would otherwise miss some)."""
    relay = Relay(2)
    ends = [relay.open(0), relay.open(1)]
    try:
        sent = fill_until_owed(relay, ends)
        ends[0].send(FORGET_KEY + b"http://app/last")  # also owed: no room
        relay.pass_on()
        heard = []
        while True:  # worker 1 reads what came, and then is owed a clear
            try:
                heard.append(ends[1].recv(MAX_MESSAGE))
            except BlockingIOError:
                break
        assert FORGET_KEY + b"http://app/last" not in heard and len(heard) < sent
        relay.pass_on()  # room now: what is owed goes
        assert ends[1].recv(MAX_MESSAGE) == FORGET_ALL and 1 not in relay.owed
    finally:
        relay.close_all()
        for end in ends:
            end.close()


def requests_total(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("cacheproxy_requests_total{"))


@contextlib.asynccontextmanager
async def scraped_workers(origin: Any, tmp_path: Any
                          ) -> AsyncIterator[tuple[Any, int, str, list[int]]]:
    """`serve --workers 2` before versioned_origin, 40 requests spread over both workers,
    then 20 scrapes each summing 40 from 2 workers (each worker has asked, and heard the
    other's figures): (the server process, its port, base URL, the workers' pids). It is
    stopped at the end, and must stop cleanly."""
    up, _ = await versioned_origin(origin)
    proc, port = await start_serve("--upstream", str(up.make_url("")), "--workers", "2",
                                   cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        await spread_misses(base, "/n")  # (both workers answer some: all but 2**-39)
        for _ in range(20):  # each worker asks (and hears the other's figures): 2**-19
            metrics = await _scrape(base)
            assert requests_total(metrics) == 40
            assert metrics["cacheproxy_processes_counted"] == 2
        yield proc, port, base, _workers_of(proc.pid)
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err, err


async def _scrape(base: str) -> dict[str, float]:
    """/metrics (on a connection of its own): sample name with labels -> value."""
    async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {name: float(value) for name, _, value in
            (line.rpartition(" ") for line in text.splitlines() if not line.startswith("#"))}


async def test_metrics_count_for_every_worker(origin: Any, tmp_path: Any) -> None:
    """With --workers N, each scrape of /metrics reached one worker (the kernel picks one
    per connection, as for any request; admin.listen is shared the same way) and showed
    that worker's counters only: successive scrapes of one target alternated between the
    workers' values (seen: cacheproxy_requests_total 1, 3, 3, 1, 3, ...), so Prometheus
    saw the counter reset at every switch and rate() read phantom traffic. nginx's
    stub_status and varnishstat count for the whole server. Now the worker a scrape
    reaches asks the others for their counters and sums them (a memory store's gauges
    too: each worker's own), and cacheproxy_processes_counted says how many answered.
    Severity: medium (the metrics were unusable for rate() with N > 1)."""
    up, _ = await versioned_origin(origin)
    proc, port = await start_serve("--upstream", str(up.make_url("")), "--workers", "2",
                                   cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        misses = await spread_misses(base, "/n")  # (all 40 on one of two: 2**-39)
        assert misses > 4  # /n0../n3 fetched by each worker that answered them
        for _ in range(20):  # whichever worker answers the scrape: the server's figures
            metrics = await _scrape(base)
            requests = sum(v for k, v in metrics.items()
                           if k.startswith("cacheproxy_requests_total{"))
            assert requests == 40 and metrics["cacheproxy_processes_counted"] == 2, metrics
            assert metrics['cacheproxy_requests_total{cache="MISS",route="default"}'] == misses
            assert metrics["cacheproxy_store_entries"] == misses  # each worker's own store
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err, err


async def test_metrics_with_the_redis_store_sum_counters_not_the_shared_store(
        origin: Any, tmp_path: Any, redis_server: Any) -> None:
    """With --workers and cache.store = "redis", every worker reports the same store
    figures (Redis's): /metrics sums the workers' counters but shows the store's gauges
    once, not N times. Severity: medium (the companion of the test above)."""
    up, _ = await versioned_origin(origin)
    env = clean_env(CACHEPROXY_CACHE_STORE="redis", CACHEPROXY_CACHE_REDIS_URL=redis_server.url,
                    CACHEPROXY_CACHE_MAX_BYTES="12345678")
    proc, port = await start_serve("--upstream", str(up.make_url("")), "--workers", "2",
                                   cwd=tmp_path, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for i in range(20):
            await fresh_get(base, f"/r{i % 2}")
        for _ in range(10):
            metrics = await _scrape(base)
            requests = sum(v for k, v in metrics.items()
                           if k.startswith("cacheproxy_requests_total{"))
            assert requests == 20 and metrics["cacheproxy_processes_counted"] == 2, metrics
            assert metrics["cacheproxy_store_max_bytes"] == 12345678  # (no maxmemory set)
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err, err
