"""Review of `cacheproxy serve --workers N`, second pass (what the first review,
test_review_workers_regressions.py, left): what the admin API answers when each worker
holds its own memory store (purge counts, stats, the dashboard), what the log says and
who said it (a refused reload, the pid of each line), and the demo origin the supervisor
runs when no upstream is given. Each test runs the real `cacheproxy serve --workers 2`;
the kernel (SO_REUSEPORT) picks the worker of each new connection, so the tests repeat a
request on new connections until either worker could have answered it."""

from __future__ import annotations

from typing import Any

import aiohttp
from processes import start_serve, stop
from test_review_workers_regressions import both_workers_store, fresh_get, versioned_origin

ROUNDS = 20  # a check that holds whichever worker answers: the old code passed 2**-20


async def _admin(base: str, method: str, path: str) -> tuple[int, dict[str, Any]]:
    """An admin call on a connection of its own (the kernel picks the worker)."""
    async with aiohttp.ClientSession() as http, \
            http.request(method, base + path) as resp:
        return resp.status, await resp.json()


async def test_a_purge_counts_what_every_worker_dropped(origin: Any, tmp_path: Any) -> None:
    """With --workers N and the memory store, `purge?url=` (and PURGE, purge?prefix=,
    clear) answered with the count of the worker its connection reached: when another
    worker held the page (and did drop it, through the relay), the answer was 404
    {"purged": 0}. What a user saw: a deploy script purging /page got 404 about one time
    in two with --workers 2 and reported the purge as failed (or, trusting the 404, that
    the page was never cached). With one process, or nginx's shared cache zone, or our
    Redis store, the count is the server's. Now the worker asked asks the others to drop
    it and say how many they dropped, and the answer sums them and says how many
    processes it counted ("processes_counted" of "workers"). Severity: medium (the purge
    was done; its answer lied)."""
    up, _ = await versioned_origin(origin)
    proc, port = await start_serve("--upstream", str(up.make_url("")), "--workers", "2",
                                   cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(ROUNDS):  # stored by one worker; the purge may reach the other
            assert (await fresh_get(base, "/page"))[0] == "MISS"
            status, body = await _admin(base, "POST", "/_cacheproxy/purge?url=/page")
            assert (status, body["purged"]) == (200, 1), body
            assert body["processes_counted"] == body["workers"] == 2, body
        for _ in range(ROUNDS // 4):
            assert (await fresh_get(base, "/page"))[0] == "MISS"
            status, body = await _admin(base, "PURGE", "/page")
            assert (status, body["purged"]) == (200, 1), body
            assert (await fresh_get(base, "/page"))[0] == "MISS"
            status, body = await _admin(base, "POST", "/_cacheproxy/purge?prefix=/pa")
            assert (status, body["purged"]) == (200, 1), body
        await both_workers_store(base, "/page")  # one entry in each worker
        status, body = await _admin(base, "POST", "/_cacheproxy/clear")
        assert (status, body["cleared"], body["processes_counted"]) == (200, 2, 2), body
        status, body = await _admin(base, "POST", "/_cacheproxy/purge?url=/page")
        assert (status, body["purged"]) == (404, 0), body  # gone from both
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err, err
